"""Contrastive losses from open_clip, summed over text slots (the `both` caption policy has two)."""
from __future__ import annotations

import torch
from open_clip.loss import ClipLoss, DistillClipLoss, SigLipLoss


def build_loss(kind: str, rank: int, world_size: int, local_loss: bool, gather_with_grad: bool,
               distill: bool = False) -> torch.nn.Module:
    if distill:
        if kind != "clip":
            raise ValueError("distillation (pretrain.distill_weight > 0) is implemented for pretrain.loss=clip")
        # DistillClipLoss: the CLIP loss plus cross-entropy between teacher and student similarity
        # distributions in both directions, gathered over ranks like the CLIP loss
        return DistillClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                               rank=rank, world_size=world_size)
    if kind == "clip":
        # gather_with_grad: features of all ranks join the logits with their gradients, so W ranks with B
        # samples each train exactly as one process with W*B (tested in tests/test_distributed.py)
        return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                        rank=rank, world_size=world_size)
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    raise ValueError(f"pretrain.loss must be 'clip' or 'siglip', got '{kind}'")


def contrastive_loss(loss_fn: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                     n_slots: int, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None,
                     teacher: dict | None = None, distill_weight: float = 0.0) -> torch.Tensor:
    """`text_features` is (B * n_slots, D) in sample-major order; each slot is its own image-text loss.

    With `teacher` ({"image", "text", "scale"}, text in the same layout): λ·KD + (1-λ)·CLIP per slot.
    """
    txt = text_features.view(image_features.shape[0], n_slots, -1)
    total = image_features.new_zeros(())
    for k in range(n_slots):
        if isinstance(loss_fn, DistillClipLoss):
            t_txt = teacher["text"].view(image_features.shape[0], n_slots, -1)[:, k]
            parts = loss_fn(image_features, txt[:, k], logit_scale, teacher["image"], t_txt, teacher["scale"],
                            output_dict=True)
            total = total + distill_weight * parts["distill_loss"] + (1 - distill_weight) * parts["contrastive_loss"]
        elif isinstance(loss_fn, SigLipLoss):
            total = total + loss_fn(image_features, txt[:, k], logit_scale, logit_bias)
        else:
            total = total + loss_fn(image_features, txt[:, k], logit_scale)
    return total
