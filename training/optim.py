"""Optimizer, the linear learning-rate scaling rule and the training criterion."""
from __future__ import annotations

from typing import Callable

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import nn

from configs import AugConfig, ConfigError, OptimConfig, choices_error
from quantization import QRampingAdamW

REFERENCE_BATCH = 512  # optim.lr is the learning rate for this global batch (DeiT's linear scaling rule)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """``base_lr`` (a rate for a global batch of 512) for ``global_batch``."""
    return base_lr * global_batch / REFERENCE_BATCH


def _adamw(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    # timm's param groups: no weight decay on biases, norms and the model's no_weight_decay() (pos_embed, ...).
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                               eps=cfg.eps)


OPTIMIZERS: dict[str, Callable[[nn.Module, OptimConfig, float], torch.optim.Optimizer]] = {"adamw": _adamw}


def _qramping_adamw(model: nn.Module, cfg: OptimConfig, lr: float) -> QRampingAdamW:
    """AdamW with Q-Ramping's per-element update periods, over the same parameter groups as ``_adamw``."""
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_decay)
    return QRampingAdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, ramping: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` (see OPTIMIZERS) over ``model``'s parameters at learning rate ``lr``;
    with ``ramping`` (a Q-Ramping recipe) AdamW becomes QRampingAdamW, which behaves as AdamW until periods are set."""
    if cfg.name not in OPTIMIZERS:
        raise choices_error("optim.name", cfg.name, tuple(OPTIMIZERS))
    if ramping:
        if cfg.name != "adamw":
            raise ConfigError(f"optim.name {cfg.name!r} cannot be used with a Q-Ramping recipe: Q-Ramping wraps AdamW "
                              f"(set optim.name=adamw)")
        return _qramping_adamw(model, cfg, lr)
    return OPTIMIZERS[cfg.name](model, cfg, lr)


def build_criterion(aug: AugConfig, mixup_active: bool) -> nn.Module:
    """Soft-target cross entropy with Mixup/CutMix (which smooths the targets itself), else label smoothing."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()
