"""Swap the Linears inside the transformer blocks of a timm ViT/Swin-like model for QLinear."""
from __future__ import annotations

from torch import nn

from quantization import QLinear, Recipe


def block_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of every nn.Linear inside a transformer block, i.e. below a module called ``blocks``.

    In timm's ViT/DeiT these are ``blocks.<i>.attn.{qkv,proj}`` and ``blocks.<i>.mlp.{fc1,fc2}``; in Swin
    ``layers.<s>.blocks.<i>...``. Patch embedding, patch merging, norms and the head lie outside any ``blocks``.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and "blocks" in name.split(".")[:-1]:
            names.append(name)
    return names


def swap_block_linears(model: nn.Module, recipe: Recipe) -> list[str]:
    """Replace every block Linear of ``model`` in place by a QLinear with ``recipe``, weights carried over.

    Returns the qualified names of the replaced modules. A model without any Linear under a ``blocks`` module is
    an error: it is not the ViT/Swin-like layout this function knows.
    """
    names = block_linear_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear inside a 'blocks' module; swap_block_linears "
                         f"expects a timm ViT/DeiT/Swin-like model")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QLinear.from_linear(getattr(parent, child), recipe))
    return names
