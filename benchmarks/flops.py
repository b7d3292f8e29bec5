"""Model FLOPs of one CLIP training sample, counted by torch (shared by recipe_cost.py and pretrain_throughput.py)."""
from __future__ import annotations


def train_flops_per_sample(model_name: str, image_size: int) -> tuple[float, int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qclip.models import create_clip

    bundle = create_clip(model_name, image_size=image_size)
    model = bundle.model.train()
    size = bundle.model_cfg["vision_cfg"]["image_size"]
    images = torch.randn(1, 3, size, size)
    texts = bundle.tokenizer(["a photo of a cat"])
    with FlopCounterMode(display=False) as counter:
        image_features, text_features = model(images, texts)[:2]
        (image_features.sum() + text_features.sum()).backward()
    return float(counter.get_total_flops()), size, texts.shape[1]
