"""`python -m qclip` (and `torchrun -m qclip`) is the `qclip` command."""
import sys

from .cli import main

sys.exit(main())
