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


def transfer_flops_per_sample(model_name: str, task: str, mode: str, image_size: int, levels: int | list[int],
                              width: int, num_classes: int, depth_bins: int, aux: bool = False) -> float:
    """Model FLOPs of one dense fine-tuning (or probe) sample: the encoder at the transfer's image size (a ViT's
    position embedding fitted to it) and qclip's head (with `aux`, the auxiliary FCN head too), forward +
    backward, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qclip.transfer.encoders import load_encoder
    from qclip.transfer.heads import DenseHead

    encoder = load_encoder(f"random:{model_name}", image_size, levels).train()
    head = DenseHead(encoder.info.channels, encoder.info.plain, task, mode, num_classes, width, depth_bins,
                     aux_level=2 if aux else -1).train()
    x = torch.randn(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        out = head(encoder(x), (image_size, image_size))
        sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    flops = float(counter.get_total_flops())
    if mode == "probe":  # a frozen encoder: its backward is not run
        with FlopCounterMode(display=False) as fwd, torch.no_grad():
            encoder(x)
        flops -= 2 * float(fwd.get_total_flops())
    return flops
