"""Optimizer, learning-rate schedule and training criterion of the DeiT recipe."""
from __future__ import annotations

from typing import Callable

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from configs import AugConfig, OptimConfig, choices_error

REFERENCE_BATCH = 512  # optim.lr is the learning rate for this global batch (DeiT's linear scaling rule)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    return base_lr * global_batch / REFERENCE_BATCH


def _adamw(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    # timm's param groups: no weight decay on biases, norms and the model's no_weight_decay() (pos_embed, ...).
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                               eps=cfg.eps)


OPTIMIZERS: dict[str, Callable[[nn.Module, OptimConfig, float], torch.optim.Optimizer]] = {"adamw": _adamw}


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` (see OPTIMIZERS) over ``model``'s parameters at learning rate ``lr``."""
    if cfg.name not in OPTIMIZERS:
        raise choices_error("optim.name", cfg.name, tuple(OPTIMIZERS))
    return OPTIMIZERS[cfg.name](model, cfg, lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int):
    """Cosine decay over ``epochs`` with a linear warm-up, stepped once per epoch (timm's CosineLRScheduler)."""
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=cfg.warmup_epochs,
                                       warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)
    return scheduler


def build_criterion(aug: AugConfig, mixup_active: bool) -> nn.Module:
    """Soft-target cross entropy with Mixup/CutMix (which smooths the targets itself), else label smoothing."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()
