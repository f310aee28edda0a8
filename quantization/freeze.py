"""Iterative weight freezing (Nagel et al. 2022), the Freeze baseline of the paper's Table 4, for MX weights
(docs/methods.md#freeze).

After every optimizer step each tracked weight's grid position k (the signed index of Q2(W)/S on the element grid,
E2M1: -7..7) is compared with the previous one. A flip is a change of k; an oscillation is a flip whose direction
reverses the weight's previous flip. The oscillation frequency is an EMA of oscillations (momentum m):
f <- m * osc + (1 - m) * f. A weight whose f exceeds the threshold (cosine-annealed over training) is frozen at the
grid value of its rounded EMA position, round(k_ema) * S, and held there after every later step.

Choices where MX differs from Nagel's per-channel INT grid (documented, not copied): Nagel freeze the integer inside
the quantizer's forward; here the latent weight itself is frozen at its dequantized value (the kernels stay as they
are, and a frozen weight stays exactly on its grid point as long as its block scale does). The block scale S moves
with the block's amax, so a scale change also counts as a flip. Only newly frozen weights take a frozen value; the
optimizer's moments keep running, its updates (weight decay included) are undone for frozen weights. Tracking uses
Q2's deterministic rounding (nearest when q2 rounds stochastically or with Q-EMA).

Usage (the recipe's ``freeze`` config sets momentum and threshold schedule; QLinear holds the state)::

    handle = quantization.freeze.attach_freeze(model, optimizer, total_steps=epochs * steps_per_epoch,
                                               dtype=torch.bfloat16)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .hooks import MethodHook, TrainingContext
from .mx.formats import get_format
from .mx.grid import block_scales, grid_index, index_value
from .mx.ops import quantize_2d
from .recipes import QuantizerConfig, Recipe, get_recipe, register_recipe, require
from .registry import register_layer_state, register_method_config
from .schedules import cosine_anneal


@dataclass(frozen=True)
class FreezeConfig:
    """Iterative weight freezing (Nagel et al. 2022): a weight whose oscillation frequency (EMA with ``momentum`` of
    grid flips that reverse the previous flip) exceeds the threshold is frozen; the threshold anneals by a cosine
    from ``threshold_start`` to ``threshold_final`` (their 4-bit settings: 0.1 -> 0.01, momentum 0.01)."""

    momentum: float = 0.01
    threshold_start: float = 0.1
    threshold_final: float = 0.01
    anneal_start: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 < self.momentum <= 1.0, "freeze.momentum", self.momentum, "in (0, 1]")
        require(self.threshold_start > 0 and self.threshold_final > 0, "freeze.threshold_start/final",
                (self.threshold_start, self.threshold_final), "> 0")
        require(0.0 <= self.anneal_start < 1.0, "freeze.anneal_start", self.anneal_start, "in [0, 1)")

    def threshold_at(self, progress: float) -> float:
        """The freezing threshold at ``progress`` (fraction of all training steps done, in [0, 1])."""
        return cosine_anneal(self.threshold_start, self.threshold_final, progress, self.anneal_start)


register_method_config("freeze", FreezeConfig, position=30)


class FreezeState(nn.Module):
    """Per-weight tracking state of one QLinear, as buffers (saved and restored with the model)."""

    def __init__(self, shape: torch.Size, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("code_prev", torch.zeros(shape, dtype=torch.int8, device=device))
        self.register_buffer("flip_dir", torch.zeros(shape, dtype=torch.int8, device=device))  # last flip: -1/0/+1
        self.register_buffer("osc_freq", torch.zeros(shape, dtype=torch.float32, device=device))
        self.register_buffer("code_ema", torch.zeros(shape, dtype=torch.float32, device=device))
        self.register_buffer("frozen", torch.zeros(shape, dtype=torch.bool, device=device))
        self.register_buffer("frozen_value", torch.zeros(shape, dtype=torch.float32, device=device))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))

    @torch.no_grad()
    def update(self, weight: torch.Tensor, quantizer: QuantizerConfig, config: FreezeConfig,
               threshold: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """Hold frozen weights, track one step of flips, freeze the weights whose frequency exceeds ``threshold``.

        ``weight``: the layer's parameter (changed in place); ``threshold``: 0-dim tensor on its device (so nothing
        syncs with the host); ``dtype``: what the forward quantizes (the autocast dtype; None: the weight's own).
        """
        w = weight.detach()
        w.copy_(torch.where(self.frozen, self.frozen_value.to(w.dtype), w))
        seen = w if dtype is None else w.to(dtype)
        scales = block_scales(seen, quantizer.fmt, quantizer.scale_rule)
        code = self._grid_code(seen, quantizer, scales)
        first = self.updates == 0
        previous = torch.where(first, code, self.code_prev)
        direction = torch.sign(code.to(torch.int16) - previous).to(torch.int8)
        oscillated = (direction * self.flip_dir) == -1
        self.osc_freq.lerp_(oscillated.float(), config.momentum)
        self.flip_dir.copy_(torch.where(direction != 0, direction, self.flip_dir))
        self.code_prev.copy_(code)
        fmt = get_format(quantizer.fmt)
        newly = (self.osc_freq > threshold) & ~self.frozen
        target = index_value(torch.round(self.code_ema).to(torch.int8), fmt) * scales
        self.frozen_value.copy_(torch.where(newly, target, self.frozen_value))
        self.frozen |= newly
        w.copy_(torch.where(newly, target.to(w.dtype), w))
        code_f = code.float()
        self.code_ema.copy_(torch.where(first, code_f, self.code_ema.lerp(code_f, config.momentum)))
        self.updates += 1

    @staticmethod
    def _grid_code(weight: torch.Tensor, quantizer: QuantizerConfig, scales: torch.Tensor) -> torch.Tensor:
        rounding = quantizer.rounding if quantizer.rounding in ("nearest", "even") else "nearest"
        w2d = weight.reshape(-1, weight.shape[-1]).contiguous()
        values, _, _ = quantize_2d(w2d, "1x32", quantizer.fmt, quantizer.scale_rule, rounding)
        return grid_index(values.float().view(weight.shape) / scales, get_format(quantizer.fmt))


def _threshold(config: FreezeConfig, updates: torch.Tensor, total_steps: int) -> torch.Tensor:
    """config.threshold_at(updates / total_steps) computed on the device (the count lives there)."""
    progress = (updates.double() / total_steps).clamp(max=1.0)
    t = ((progress - config.anneal_start) / (1.0 - config.anneal_start)).clamp(min=0.0)
    start, final = config.threshold_start, config.threshold_final
    return (final + 0.5 * (start - final) * (1.0 + torch.cos(math.pi * t))).float()


def frozen_share(model: nn.Module) -> float:
    """Fraction of the tracked weights that are frozen (0.0 without Freeze layers); reads the device (a sync)."""
    frozen = total = 0
    for module in model.modules():
        state = getattr(module, "freeze_state", None)
        if isinstance(state, FreezeState):
            frozen += int(state.frozen.sum())
            total += state.frozen.numel()
    return frozen / total if total else 0.0


def attach_freeze(model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
                  dtype: torch.dtype | None = None) -> RemovableHandle:
    """Run Freeze after every ``optimizer.step()`` on each QLinear of ``model`` whose recipe has ``freeze`` set.

    ``total_steps``: the run's optimizer steps (epochs x steps per epoch), for the threshold schedule; progress is
    read from the layers' ``updates`` buffers, so a resumed run (state loaded, hook attached again) continues the
    schedule. Returns the hook handle (``handle.remove()`` detaches). Raises ValueError if no layer uses Freeze.

    Example::

        model = build_model("deit_tiny_patch16_224", get_recipe("tetrajet_freeze"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        attach_freeze(model, optimizer, total_steps=90 * len(loader), dtype=torch.bfloat16)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    layers = [m for m in model.modules() if isinstance(getattr(m, "freeze_state", None), FreezeState)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QLinear whose recipe sets 'freeze' (e.g. tetrajet_freeze)")

    configs = [layer.recipe.method_config("freeze") for layer in layers]  # recipes are frozen: look up once

    def hook(opt, args, kwargs) -> None:
        threshold = _threshold(configs[0], layers[0].freeze_state.updates, total_steps)
        for layer, config in zip(layers, configs):
            layer.freeze_state.update(layer.weight, layer.recipe.q2, config, threshold, dtype)

    return optimizer.register_step_post_hook(hook)


class FreezeHook(MethodHook):
    """Freeze in a training loop (quantization.hooks): tracking and freezing after every optimizer step."""

    name = "Freeze"
    capture_safe = True  # its schedule reads the device-side update count

    def attach(self, context: TrainingContext) -> None:
        attach_freeze(context.model, context.optimizer, context.total_steps, dtype=context.amp_dtype)


def freeze_hook(recipe: Recipe) -> FreezeHook | None:
    """The hook of this method for ``recipe``, None if the recipe does not use it."""
    return FreezeHook() if recipe.method_config("freeze") is not None else None


def _freeze_layer_state(recipe: Recipe, weight: torch.Tensor) -> FreezeState | None:
    return FreezeState(weight.shape, weight.device) if recipe.method_config("freeze") is not None else None


register_layer_state("freeze_state", _freeze_layer_state)
# Table 4.
register_recipe(get_recipe("tetrajet").replace(name="tetrajet_freeze", freeze=FreezeConfig()))
