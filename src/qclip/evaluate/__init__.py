"""Zero-shot evaluation: image-text retrieval (and, next, zero-shot classification)."""
