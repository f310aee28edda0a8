"""Q-EMA: the weight quantizer rounds against an EMA of the weight, W_ema <- beta W_ema + (1 - beta) W after every
optimizer step, for every Q-EMA QLinear.

The EMA lives in each QLinear's ``qema_state`` (a ``QEmaState``: buffers ``weight_ema`` and its update count
``ema_updates``), registered as a layer state, so the core Linear names no method and checkpoints save and restore
it with the model. Q-EMA rounding switches on after QEMA_WARMUP_UPDATES updates and then also acts in evaluation.
``attach_qema`` registers the update as an optimizer step post-hook, so the training loop cannot forget it: it runs
exactly when the weights change (a step that torch.amp.GradScaler skips for non-finite gradients does not update
the EMA either). It needs no communication under DDP (every rank holds the same weights after the step) and touches
only the training model: timm's model EMA keeps its own copy of the buffers (it averages ``weight_ema`` and copies
``ema_updates`` like any other buffer), which never feeds back into the training model.

Typical use, after the optimizer is built and (on resume) after the checkpoint is loaded into model and optimizer::

    handle = attach_qema(model, optimizer)          # beta from each layer's recipe (qema_beta), e.g. 0.998
    ...
    handle.remove()                                 # to detach
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .hooks import MethodHook, TrainingContext
from .linear import QLinear
from .recipes import Recipe
from .registry import register_layer_state

QEMA_WARMUP_UPDATES = 10


class QEmaState(nn.Module):
    """One layer's Q-EMA: ``weight_ema`` (fp32, starting at the weight) and ``ema_updates`` (int64 count). What the
    weight quantizer's "ema" rounding compares against is the EMA once the count reaches QEMA_WARMUP_UPDATES; before
    that the weight itself, with which "ema" rounding is exactly nearest rounding."""

    # Before Q-EMA became a layer state its buffers sat on the QLinear itself (checkpoints written before 2026-12-03).
    legacy_keys = {"weight_ema": "weight_ema", "ema_updates": "ema_updates"}

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight_ema", weight.detach().clone().float())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64, device=weight.device))

    def rounding_target(self, weight: torch.Tensor) -> torch.Tensor:
        """The EMA once active, else ``weight``; chosen on the device, so the forward never reads the count."""
        return torch.where(self.ema_updates >= QEMA_WARMUP_UPDATES, self.weight_ema, weight.detach().float())

    @torch.no_grad()
    def update(self, weight: torch.Tensor, beta: float) -> None:
        """W_ema <- beta W_ema + (1 - beta) W, and one more count (``update_qema`` does this for many layers)."""
        self.weight_ema.lerp_(weight.float(), 1.0 - beta)
        self.ema_updates += 1

    def active(self) -> bool:
        """Whether Q-EMA rounding is on. Reads the count on the host (a sync): for reports and tests."""
        return int(self.ema_updates) >= QEMA_WARMUP_UPDATES


def _qema_layer_state(recipe: Recipe, weight: torch.Tensor) -> QEmaState | None:
    return QEmaState(weight) if recipe.uses_qema else None


register_layer_state("qema_state", _qema_layer_state)


def qema_layers(model: nn.Module) -> list[QLinear]:
    """The QLinears of ``model`` whose weight quantizer rounds with Q-EMA."""
    return [m for m in model.modules() if isinstance(m, QLinear) and isinstance(m.qema_state, QEmaState)]


@torch.no_grad()
def update_qema(layers: list[QLinear], beta: float) -> None:
    """One EMA update of every layer's Q-EMA, batched: the same values as ``layer.qema_state.update(layer.weight,
    beta)`` on each layer."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"Q-EMA beta must be in (0, 1), got {beta!r}")
    states = [m.qema_state for m in layers]
    torch._foreach_lerp_([s.weight_ema for s in states], [m.weight.float() for m in layers], 1.0 - beta)
    torch._foreach_add_([s.ema_updates for s in states], 1)


def attach_qema(model: nn.Module, optimizer: torch.optim.Optimizer, beta: float | None = None) -> RemovableHandle:
    """Update the Q-EMA of every Q-EMA QLinear in ``model`` after each ``optimizer.step()``.

    ``beta``: the EMA decay for all layers; None takes each layer's ``recipe.qema_beta``. ``model`` is the training
    model (unwrapped from DDP or not: the layers are the same). Returns the hook handle. Raises ValueError if
    ``model`` has no Q-EMA layer (a recipe whose q2 rounding is "ema", e.g. tetrajet_qema).
    """
    layers = qema_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QLinear with Q-EMA (q2 rounding 'ema'); use a Q-EMA "
                         f"recipe such as tetrajet_qema")
    groups: dict[float, list[QLinear]] = defaultdict(list)
    for layer in layers:
        groups[layer.recipe.qema_beta if beta is None else beta].append(layer)
    for value in groups:
        if not 0.0 < value < 1.0:
            raise ValueError(f"Q-EMA beta must be in (0, 1), got {value!r}")

    def hook(opt, args, kwargs) -> None:
        for value, members in groups.items():
            update_qema(members, value)

    return optimizer.register_step_post_hook(hook)


class QEmaHook(MethodHook):
    """Q-EMA in a training loop (quantization.hooks): the EMA update after every optimizer step."""

    name = "Q-EMA"
    capture_safe = True  # the update and its count are device ops

    def attach(self, context: TrainingContext) -> None:
        attach_qema(context.model, context.optimizer)


def qema_hook(recipe: Recipe) -> QEmaHook | None:
    """The hook of this method for ``recipe``, None if the recipe does not use it."""
    return QEmaHook() if recipe.uses_qema else None
