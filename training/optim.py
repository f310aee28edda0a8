"""Optimizer, the linear learning-rate scaling rule and the training criterion."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import nn

from configs import AugConfig, ConfigError, OptimConfig, choices_error

REFERENCE_BATCH = 512  # optim.lr is the learning rate for this global batch (DeiT's linear scaling rule)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """``base_lr`` (a rate for a global batch of 512) for ``global_batch``."""
    return base_lr * global_batch / REFERENCE_BATCH


def _adamw(model: nn.Module, cfg: OptimConfig, lr: float, capturable: bool) -> torch.optim.Optimizer:
    # timm's param groups: no weight decay on biases, norms and the model's no_weight_decay() (pos_embed, ...).
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                               eps=cfg.eps, capturable=capturable)


# name -> builder(model, cfg, lr, capturable); capturable: torch's option, a step that a CUDA graph can capture.
OPTIMIZERS: dict[str, Callable[[nn.Module, OptimConfig, float, bool], torch.optim.Optimizer]] = {"adamw": _adamw}


def _adamw_of(cls: type, model: nn.Module, cfg: OptimConfig, lr: float, capturable: bool) -> torch.optim.Optimizer:
    """An AdamW of class ``cls`` (a method's own, e.g. QRampingAdamW) over the same parameter groups as ``_adamw``."""
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_decay)
    return cls(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
               capturable=capturable)


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, adamw: Optional[type] = None,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` (see OPTIMIZERS) over ``model``'s parameters at learning rate ``lr``;
    ``adamw``: the AdamW class the method steps with (quantization.hooks_optimizer, e.g. QRampingAdamW, which
    behaves as AdamW until periods are set), which then replaces AdamW. ``capturable``: step counters and bias
    corrections on the device, so that a CUDA graph can capture the step (train.cuda_graph); torch's capturable
    AdamW computes them in fp32 on the device, so the last bits of the weights differ from the default step."""
    if cfg.name not in OPTIMIZERS:
        raise choices_error("optim.name", cfg.name, tuple(OPTIMIZERS))
    if adamw is not None:
        if cfg.name != "adamw":
            raise ConfigError(f"optim.name {cfg.name!r} cannot be used with this method: it steps with "
                              f"{adamw.__name__}, an AdamW (set optim.name=adamw)")
        return _adamw_of(adamw, model, cfg, lr, capturable)
    return OPTIMIZERS[cfg.name](model, cfg, lr, capturable)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, capturable: bool) -> None:
    """``optimizer.load_state_dict(state)`` keeping this run's ``capturable`` (torch would take the checkpoint's,
    and with it where the step counters go): a run may resume with train.cuda_graph switched on or off."""
    groups = [dict(group, capturable=capturable) for group in state["param_groups"]]
    optimizer.load_state_dict({**state, "param_groups": groups})


def build_criterion(aug: AugConfig, mixup_active: bool) -> nn.Module:
    """Soft-target cross entropy with Mixup/CutMix (which smooths the targets itself), else label smoothing."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()
