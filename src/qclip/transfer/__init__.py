"""Dense transfer: an image encoder's multi-level features -> segmentation / depth heads, probe or fine-tune."""
