"""The learning-rate schedule: cosine decay with a linear warm-up, stepped once per epoch (DeiT's recipe) or once
per iteration with the warm-up as a prefix and every rate scaled with the batch (Swin's recipe)."""
from __future__ import annotations

import torch
from timm.scheduler import create_scheduler_v2

from configs import OptimConfig

from .optim import scaled_lr


class LRSchedule:
    """timm's CosineLRScheduler together with when it moves: ``start_epoch(epoch)`` before each epoch and
    ``before_step(step)`` before each optimizer step (global 0-based step; the Q-Ramping calibration steps of that
    step share its rate); only the call matching ``per_step`` changes the learning rate.

    Step ``t`` trains at the schedule's value at ``t``. (The official Swin code updates after each step, so its step
    ``t`` runs at the value of ``t - 1``; one iteration apart.) The rate follows from the epoch or step alone, so a
    resumed run continues it exactly; the scheduler's state still goes into the checkpoint.
    """

    def __init__(self, scheduler, per_step: bool) -> None:
        self.scheduler, self.per_step = scheduler, per_step

    def start_epoch(self, epoch: int) -> None:
        if not self.per_step:
            self.scheduler.step(epoch)

    def before_step(self, step: int) -> None:
        if self.per_step:
            self.scheduler.step_update(step)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int,
                    global_batch: int) -> LRSchedule:
    """Cosine decay to ``cfg.min_lr`` after a linear warm-up of ``cfg.warmup_epochs`` from ``cfg.warmup_lr``.

    ``cfg.sched_interval``: "epoch" (one value per epoch) or "step" (one per iteration, ``steps_per_epoch`` per
    epoch). ``cfg.warmup_prefix``: the warm-up comes before a cosine over the remaining epochs (else the cosine
    spans all epochs and the warm-up overrides its start). ``cfg.scale_warmup_min_lr``: warm-up and minimum rates
    scale with ``global_batch`` like the base rate (linear scaling by global batch / 512).
    """
    per_step = cfg.sched_interval == "step"
    warmup_lr, min_lr = cfg.warmup_lr, cfg.min_lr
    if cfg.scale_warmup_min_lr:
        warmup_lr, min_lr = scaled_lr(warmup_lr, global_batch), scaled_lr(min_lr, global_batch)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs - cfg.warmup_epochs if cfg.warmup_prefix else epochs,
        warmup_epochs=cfg.warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr, warmup_prefix=cfg.warmup_prefix,
        step_on_epochs=not per_step, updates_per_epoch=steps_per_epoch)
    return LRSchedule(scheduler, per_step)
