"""One training epoch and one evaluation pass; metrics are reduced over all ranks."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator, Optional, Sequence

import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from quantization import MethodHook, with_extra_losses
from training.cuda_graph import GraphedTrainStep
from training.distributed import DistContext, all_reduce_sum
from training.logger import RunLogger
from training.rewind import rewound

MIB = 2**20


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the bad step touches the weights."""


def _progress(loader: DataLoader, ctx: DistContext, desc: str):
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if ctx.is_main else True)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, ctx: DistContext, epoch: int, *, amp_dtype: Optional[torch.dtype],
                    mixup: Optional[Mixup], model_ema: Optional[ModelEmaV3], clip_grad: Optional[float],
                    logger: RunLogger, log_interval: int, first_step: int, hooks: Sequence[MethodHook] = (),
                    calib_batches: Optional[Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]] = None,
                    before_step: Optional[Callable[[int], object]] = None,
                    after_step: Optional[Callable[[int], object]] = None,
                    graph: Optional[GraphedTrainStep] = None) -> dict:
    """Train over ``loader`` once; returns the epoch's mean loss, lr (at its first step), global images/s and peak
    GPU memory.

    The loss is averaged over ranks before the backward pass; a non-finite value raises NonFiniteLossError on every
    rank at the same step, before any weight changes. ``hooks`` are the method's (quantization.method_hooks,
    attached): each adds its ``extra_loss(step)`` to the loss (e.g. Dampen's regularizer), and one that calibrates
    (Q-Ramping) does so before each step it says is due, each calibration step on the next batch of
    ``calib_batches(step, hook.calibration_steps)`` (a loader of its own: the training batches stay those of
    ``loader``), restoring everything afterwards; its record goes to the run log. Gradients are clipped before the
    optimizer sees them (Q-Ramping accumulates the clipped ones). ``before_step(step)`` runs before each step and
    its calibration (e.g. a per-iteration learning-rate schedule), ``after_step(step)`` after each step (e.g. the
    oscillation monitor).

    ``graph`` (train.cuda_graph; one process, no loss scaling): the step of ``model``, ``criterion``, ``hooks``,
    ``optimizer`` and ``clip_grad`` that it was built with, replayed as CUDA graphs: forward, backward and clipping,
    then the loss check on the host, then the optimizer step. Calibrations run eagerly and are followed by a fresh
    capture; the model EMA and ``after_step`` stay eager.
    """
    calibrating = [hook for hook in hooks if hook.calibration_steps]
    if calibrating and calib_batches is None:
        raise ValueError(f"{calibrating[0].name} calibrates: it needs calib_batches, the batches its calibration "
                         f"steps train on")
    if graph is not None and (ctx.world_size > 1 or scaler.is_enabled()):
        raise ValueError("a graphed training step runs in one process without a grad scaler")
    model.train()
    device = ctx.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_lr = None
    loss_sum, steps, images = 0.0, 0, 0
    start = time.perf_counter()
    progress = _progress(loader, ctx, f"epoch {epoch}")

    def check_loss(loss_value: float, step: int) -> None:
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"training loss is {loss_value} at epoch {epoch}, step {step} "
                                     f"(lr {optimizer.param_groups[0]['lr']:.3g})")

    def graphed_step(samples: torch.Tensor, targets: torch.Tensor, step: int) -> float:
        loss_value = graph.forward_backward(samples, targets, step).item()
        check_loss(loss_value, step)
        graph.optimizer_step()
        return loss_value

    def eager_step(samples: torch.Tensor, targets: torch.Tensor, step: int) -> float:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = with_extra_losses(criterion(model(samples), targets), hooks, step)
        loss_value = all_reduce_sum(loss.detach().float()).item() / ctx.world_size
        check_loss(loss_value, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        return loss_value

    train_step = eager_step if graph is None else graphed_step
    for samples, targets in progress:
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup is not None:
            samples, targets = mixup(samples, targets)
        step = first_step + steps
        if before_step is not None:
            before_step(step)
        lr = optimizer.param_groups[0]["lr"]
        first_lr = lr if first_lr is None else first_lr
        for hook in calibrating:
            if hook.calibration_due(step):
                batches = calib_batches(step, hook.calibration_steps)
                with graph.eager() if graph is not None else contextlib.nullcontext():
                    record = hook.calibrate(lambda i: train_step(*next(batches), step),
                                            rewind=lambda: rewound([_unwrap(model), optimizer, scaler]))
                logger.write({**record, "step": step, "epoch": epoch})
        loss_value = train_step(samples, targets, step)
        if model_ema is not None:
            model_ema.update(_unwrap(model))
        if after_step is not None:
            after_step(step)
        loss_sum += loss_value
        steps += 1
        images += samples.shape[0] * ctx.world_size
        if steps % log_interval == 0:
            logger.write({"type": "step", "step": step, "epoch": epoch, "loss": loss_value, "lr": lr})
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum / max(steps, 1), "lr": first_lr, "steps": steps, "train_time_s": elapsed,
            "images_per_s": images / elapsed,
            "peak_mem_mib": torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, ctx: DistContext, amp_dtype: Optional[torch.dtype],
             num_classes: int) -> dict:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) over the whole validation set (all ranks' shards)."""
    model = _unwrap(model)
    model.eval()
    topk = min(5, num_classes)
    totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss sum, top-1, top-k hits, count
    for samples, targets in _progress(loader, ctx, "eval"):
        samples = samples.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(samples)
        loss = nn.functional.cross_entropy(output.float(), targets, reduction="sum")
        hits = output.topk(topk, dim=1).indices.eq(targets[:, None])
        totals += torch.stack([loss.double(), hits[:, 0].sum().double(), hits.sum().double(),
                               torch.tensor(len(targets), dtype=torch.float64, device=ctx.device)])
    loss_sum, top1, top5, count = all_reduce_sum(totals).tolist()
    return {"loss": loss_sum / count, "acc1": 100 * top1 / count, "acc5": 100 * top5 / count}
