"""What a method does inside a training loop, behind one interface, so that the loop itself names no method.

``method_hooks(recipe)`` returns a MethodHook for each training-side part of the recipe (Q-EMA's update, Freeze,
Dampen's loss term, Q-Ramping's calibrations), made by the factories registered with ``register_method_hook``
(quantization/__init__.py registers those of the package's methods); this module imports none of them. A training
loop::

    hooks = method_hooks(recipe)
    optimizer = (hooks_optimizer(hooks) or torch.optim.AdamW)(params, lr=...)
    for hook in hooks:
        hook.attach(TrainingContext(model, optimizer, steps_per_epoch, total_steps, amp_dtype))
    for step, (x, y) in enumerate(loader):
        for hook in (h for h in hooks if h.calibration_due(step)):
            log(hook.calibrate(lambda i: train_step(*next(calibration_batches)),
                               rewind=lambda: training.rewound([model, optimizer, scaler])))
        loss = with_extra_losses(criterion(model(x), y), hooks, step)
        ...

Hooks hold no state that a checkpoint needs: what they change lives in the model's buffers and the optimizer's
state, so saving and loading those resumes a method exactly. The training machinery a calibration needs comes from
the loop: ``rewind`` (taking its steps back: state dicts and random generators, training.rewound) and
``TrainingContext.share_from_main`` (under DDP, every process adopts the main process's result).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager, Optional, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from .recipes import Recipe


# A calibration's way to take its steps back: ``with rewind(): ...`` leaves everything the training loop owns (model,
# optimizer, grad scaler, random generators) on exit as it was on entry.
Rewind = Callable[[], ContextManager[None]]
# Under data parallelism: makes every process hold the main process's values of these tensors, in place.
ShareFromMain = Callable[[Sequence[torch.Tensor]], None]


@dataclass(frozen=True)
class TrainingContext:
    """The run a hook attaches to: the model (not wrapped in DDP), its optimizer, the schedule's length, the
    autocast dtype of the forward (None: none) and, with several processes, ``share_from_main`` (None: one
    process), through which what a calibration decides becomes the main process's decision on every rank."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    amp_dtype: Optional[torch.dtype] = None
    share_from_main: Optional[ShareFromMain] = None


class MethodHook:
    """One training-side part of a method; every hook point defaults to doing nothing.

    ``optimizer``: an AdamW variant the method must step with (None: any optimizer). ``calibration_steps``: the
    training steps one calibration takes (0: the method does not calibrate); a benchmark may change it before
    ``attach``. ``capture_safe``: whether a CUDA graph of the training step may hold the hook's work, its
    ``extra_loss`` and the optimizer-step hooks it registers: device work only, the same launches at every step, no
    host value that changes between steps (a training loop that replays graphs refuses a hook without it; its
    calibrations run eagerly all the same).
    """

    name: str = "method"
    optimizer: Optional[type] = None
    calibration_steps: int = 0
    capture_safe: bool = False

    def attach(self, context: TrainingContext) -> None:
        """Once, after the optimizer is built: register optimizer-step hooks, keep what the later calls need."""

    def extra_loss(self, step: int) -> Optional[torch.Tensor]:
        """A term to add to the training loss at global ``step`` (0-based), or None."""
        return None

    def calibration_due(self, step: int) -> bool:
        """Whether a calibration runs before global ``step``."""
        return False

    def calibrate(self, train_step: Callable[[int], object], rewind: Rewind) -> dict:
        """Call ``train_step(i)`` for i < ``calibration_steps`` inside ``with rewind():``, then set what the
        calibration decides; returns a record for the run log (its ``type`` names the method)."""
        raise NotImplementedError(f"{self.name} does not calibrate")


HookFactory = Callable[["Recipe"], Optional[MethodHook]]
_FACTORIES: list[HookFactory] = []


def register_method_hook(factory: HookFactory) -> HookFactory:
    """Register ``factory(recipe)``, which returns its method's hook for a recipe that uses the method, else None.
    Hooks come back, and so attach, in registration order (optimizer-step hooks then run in that order)."""
    _FACTORIES.append(factory)
    return factory


def method_hooks(recipe: "Recipe") -> list[MethodHook]:
    """The hooks of the methods ``recipe`` uses, not yet attached."""
    return [hook for hook in (factory(recipe) for factory in _FACTORIES) if hook is not None]


def with_extra_losses(loss: torch.Tensor, hooks: Sequence[MethodHook], step: int) -> torch.Tensor:
    """``loss`` plus each hook's ``extra_loss(step)`` (those that are not None), in the hooks' order."""
    for hook in hooks:
        extra = hook.extra_loss(step)
        if extra is not None:
            loss = loss + extra
    return loss


def hooks_optimizer(hooks: Sequence[MethodHook]) -> Optional[type]:
    """The optimizer class that ``hooks`` need (None: any); ValueError if two of them need different ones."""
    needed = {hook.optimizer: hook.name for hook in hooks if hook.optimizer is not None}
    if len(needed) > 1:
        raise ValueError(f"{' and '.join(needed.values())} need different optimizers "
                         f"({', '.join(cls.__name__ for cls in needed)}) and cannot be combined")
    return next(iter(needed), None)
