"""Captions: captioners (open_clip CoCa, Hugging Face image-to-text, the in-repo trainable one), the recaption
job, caption scores, statistics and the world's quality measure. Which caption a training sample sees is
`qclip.data.policy.CaptionPolicy`."""
