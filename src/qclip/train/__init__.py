"""CLIP pretraining: data order, losses, and the loop (`pretrain.py`)."""
