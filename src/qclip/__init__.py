"""qclip: CLIP with quality captions, from image-text data to vision backbones for dense prediction."""
__version__ = "0.1.0"
