"""Contrastive losses from open_clip, summed over text slots (the `both` caption policy has two)."""
from __future__ import annotations

import torch
from open_clip.loss import ClipLoss, SigLipLoss


def build_loss(kind: str, rank: int, world_size: int, local_loss: bool, gather_with_grad: bool) -> torch.nn.Module:
    if kind == "clip":
        # gather_with_grad: features of all ranks join the logits with their gradients, so W ranks with B
        # samples each train exactly as one process with W*B (tested in tests/test_distributed.py)
        return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                        rank=rank, world_size=world_size)
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    raise ValueError(f"train.loss must be 'clip' or 'siglip', got '{kind}'")


def contrastive_loss(loss_fn: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                     n_slots: int, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None) -> torch.Tensor:
    """`text_features` is (B * n_slots, D) in sample-major order; each slot is its own image-text loss."""
    txt = text_features.view(image_features.shape[0], n_slots, -1)
    total = image_features.new_zeros(())
    for k in range(n_slots):
        if isinstance(loss_fn, SigLipLoss):
            total = total + loss_fn(image_features, txt[:, k], logit_scale, logit_bias)
        else:
            total = total + loss_fn(image_features, txt[:, k], logit_scale)
    return total
