"""Oscillation dampening (Nagel et al. 2022), the Dampen baseline of the paper's Tables 3 and 4, for MX
weights (docs/methods.md#dampen).

L_dampen = sum over the layers of (1 / in_features) * sum over the layer's weights of (sg(Q2(W)) - clip(W, -max * S,
max * S))^2: a pull of each latent weight toward the grid point the forward uses (sg = stop-gradient; S = the
weight's block scale, max = the format's largest value, so with the TetraJet scale rule nothing is clipped). The
per-layer division by the input width is the ``kernel_mean`` aggregation that Nagel et al.'s released training
scripts run with (their command-line default; ``sum``, 192-768 times stronger on a DeiT, and ``mean`` are the other
choices of ``DampenConfig.aggregation``). The training loss becomes task loss + lambda * L_dampen with lambda held at
``start`` for the first quarter of training, then cosine-annealed to ``final`` (their defaults: 0 -> 0.1 from 25%).

Usage, once per training step (inside autocast is fine; the loss is computed in fp32)::

    lam = recipe.method_config("dampen").weight_at(step / total_steps)
    loss = criterion(model(x), y) + dampen_loss(model, lam, dtype=torch.bfloat16)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .hooks import MethodHook, TrainingContext
from .linear import QLinear
from .mx.formats import get_format
from .mx.grid import block_scales
from .recipes import Recipe, get_recipe, register_recipe, require
from .registry import register_method_config
from .schedules import cosine_anneal

DAMPEN_AGGREGATIONS = ("kernel_mean", "mean", "sum")


@dataclass(frozen=True)
class DampenConfig:
    """Oscillation dampening (Nagel et al. 2022): loss weight * sum over layers of (1 / in_features) sum (sg(Q(W)) -
    clip(W))^2 (``aggregation``: ``kernel_mean``, as their released scripts run; ``mean`` or ``sum`` otherwise), the
    weight held at ``start`` until ``anneal_start`` (a fraction of training), then a cosine to ``final`` (their
    defaults: 0 -> 0.1 from 25%)."""

    start: float = 0.0
    final: float = 0.1
    anneal_start: float = 0.25
    aggregation: str = "kernel_mean"

    def __post_init__(self) -> None:
        require(self.start >= 0 and self.final >= 0, "dampen.start/final", (self.start, self.final), ">= 0")
        require(0.0 <= self.anneal_start < 1.0, "dampen.anneal_start", self.anneal_start, "in [0, 1)")
        require(self.aggregation in DAMPEN_AGGREGATIONS, "dampen.aggregation", self.aggregation,
                f"one of {', '.join(DAMPEN_AGGREGATIONS)}")

    def weight_at(self, progress: float) -> float:
        """The loss weight at ``progress`` (fraction of all training steps done, in [0, 1])."""
        return cosine_anneal(self.start, self.final, progress, self.anneal_start)


register_method_config("dampen", DampenConfig, position=20)


def dampened_layers(model: nn.Module) -> list[QLinear]:
    """The QLinears of ``model`` whose recipe sets ``dampen``."""
    return [m for m in model.modules() if isinstance(m, QLinear) and m.recipe.method_config("dampen") is not None]


def aggregate(aggregation: str, squared: torch.Tensor) -> torch.Tensor:
    """One layer's squared distances (out_features, in_features) reduced as ``aggregation`` says: ``kernel_mean``
    sums over the outputs and averages over the inputs (sum / in_features), ``mean`` averages, ``sum`` sums."""
    if aggregation == "kernel_mean":
        return squared.sum() / squared.shape[1]
    if aggregation == "mean":
        return squared.mean()
    return squared.sum()


def dampen_loss(model: nn.Module, weight: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``weight`` * L_dampen over the QLinears of ``model`` whose recipe sets ``dampen`` (a 0-dim fp32 tensor with
    gradients into the weights). ``dtype``: what the forward quantizes (the autocast dtype; None: the weight's own).
    Raises ValueError if no layer uses Dampen."""
    layers = dampened_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QLinear whose recipe sets 'dampen' (e.g. tetrajet_dampen)")
    total = torch.zeros((), dtype=torch.float32, device=layers[0].weight.device)
    with torch.autocast(total.device.type, enabled=False):
        for layer in layers:
            target = layer.quantized_weight(dtype).float()
            seen = layer.weight if dtype is None else layer.weight.to(dtype)
            q2 = layer.recipe.q2
            bound = get_format(q2.fmt).max_value * block_scales(seen, q2.fmt, q2.scale_rule)
            clipped = torch.minimum(torch.maximum(seen.float(), -bound), bound)
            total = total + aggregate(layer.recipe.method_config("dampen").aggregation, (target - clipped).square())
    return weight * total


class DampenHook(MethodHook):
    """Dampen in a training loop (quantization.hooks): its loss term, weighted by the recipe's schedule."""

    name = "Dampen"  # not capture_safe: the loss weight follows the step on the host

    def __init__(self, config: DampenConfig) -> None:
        self.config = config
        self.context: TrainingContext | None = None

    def attach(self, context: TrainingContext) -> None:
        self.context = context

    def extra_loss(self, step: int) -> torch.Tensor:
        weight = self.config.weight_at(step / self.context.total_steps)
        return dampen_loss(self.context.model, weight, self.context.amp_dtype)


def dampen_hook(recipe: Recipe) -> DampenHook | None:
    """The hook of this method for ``recipe``, None if the recipe does not use it."""
    config = recipe.method_config("dampen")
    return DampenHook(config) if config is not None else None


# Tables 3 and 4.
register_recipe(get_recipe("tetrajet").replace(name="tetrajet_dampen", dampen=DampenConfig()))
