"""Zero-shot evaluation of CLIP models: image-text retrieval and zero-shot classification."""
