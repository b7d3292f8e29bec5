"""Data: WebDataset shards and their manifest, importers, the embedded world, dense datasets."""
from .sample import Sample
from .shards import ShardIntegrityError, ShardReader, ShardWriter
from .skips import SkipCounter, TooManyBadSamples

__all__ = ["Sample", "ShardReader", "ShardWriter", "ShardIntegrityError", "SkipCounter", "TooManyBadSamples"]
