"""Tiny image towers registered with timm, so open_clip (and anyone with `import qclip.models`) can build them
by name, like any timm model.

`qclip_mci_tiny` is the MobileCLIP MCi recipe (timm's FastViT: RepMixer stages, then attention with a
conditional positional encoding) at a size that trains on a CPU at 64 px.
"""
from __future__ import annotations

from functools import partial

from timm.models import generate_default_cfgs, register_model
from timm.models.fastvit import RepConditionalPosEnc, _cfg, _create_fastvit

# timm's register_model reads the pretrained cfgs of the module that registers a model
default_cfgs = generate_default_cfgs({
    "qclip_mci_tiny.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), num_classes=0),
})


@register_model
def qclip_mci_tiny(pretrained: bool = False, **kwargs):
    """MCi-style hybrid, 4 stages (strides 4-32), ~2M parameters."""
    model_args = dict(
        layers=(1, 1, 2, 1),
        embed_dims=(32, 64, 128, 256),
        mlp_ratios=(3, 3, 3, 3),
        se_downsamples=(False, False, True, True),
        pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(3, 3))),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        lkc_use_act=True,
    )
    return _create_fastvit("qclip_mci_tiny", pretrained=pretrained, **dict(model_args, **kwargs))
