"""Build the paper's models through timm and quantize their transformer blocks."""
from __future__ import annotations

import logging

import timm
from torch import nn

from configs import ConfigError
from quantization import Recipe

from .swap import swap_block_linears

PAPER_MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
                "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224")

log = logging.getLogger(__name__)


def build_model(name: str, recipe: Recipe, **timm_kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **timm_kwargs)`` with every block Linear swapped for a QLinear.

    ``timm_kwargs`` shape the network, e.g. ``img_size=28, patch_size=4, in_chans=1, num_classes=10`` for a
    small-input DeiT. Any timm ViT/Swin-like name works; the paper uses those in PAPER_MODELS.
    """
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}; the paper's models: {', '.join(PAPER_MODELS)}")
    try:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    except TypeError as error:  # an argument the model's constructor does not take
        raise ConfigError(f"model.timm_kwargs: timm model {name!r} rejects its arguments: {error}") from None
    replaced = swap_block_linears(model, recipe)
    log.info("%s: %d block Linears use recipe %s (%s, ...)", name, len(replaced), recipe.name, replaced[0])
    return model
