"""Q-Ramping: AdamW with per-element update periods, and the calibration that sets the periods
(docs/methods.md#q-ramping).

Optimizer: ``QRampingAdamW`` takes every parameter's gradient at every step, but an element with update period p
accumulates its gradient and takes its Adam step only every p steps, with the mean accumulated gradient and the
learning rate times the number of steps accumulated. Decoupled weight decay applies every step; the bias correction
uses the global step; non-finite gradient elements are not accumulated (and not counted). Parameters without periods
(and all parameters before any are set) take exactly torch.optim.AdamW's step. ``capturable=True`` keeps every step
counter on the device and computes the ramped step's scalars there, so that a CUDA graph can capture ``step()``; the
ramped parameters then take bit for bit the step of ``capturable=False`` (the plain ones torch's capturable AdamW
step, whose last bits differ from its default step).

Calibration: ``QRampingCalibrator`` runs, every T_update steps (default: at each epoch start), T0 (default 30) steps
of plain AdamW, measures each quantized weight's oscillation ratio R_w through the same forward weight quantizer as
training, inside the training loop's ``rewind`` (which puts model, optimizer, grad scaler and random generators back
as they were: training.rewound) and sets the periods p = k2 * floor(R_w / k1) + 1, capped at the steps per epoch.
Under DDP every rank adopts rank 0's periods through the loop's ``share_from_main``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Optional

import torch
from torch import nn
from torch.optim.adamw import adamw as _torch_adamw

from .hooks import MethodHook, Rewind, ShareFromMain, TrainingContext
from .linear import QLinear
from .mx.backends import triton_interpreted
from .oscillation import OSCILLATING_RATIO, OscillationRatio
from .recipes import Recipe, get_recipe, register_recipe, require
from .registry import register_method_config

PERIOD_DTYPE = torch.int32
BACKENDS = ("auto", "torch", "triton")
RAMPING_STATE = ("update_period", "accum_count", "grad_accum")
BIAS_FLOOR = 2.0**-60  # beta**step below this: 1 - beta**step is exactly 1.0 in float64, now and at every later step
BIAS_TABLE_LIMIT = 1 << 23  # entries of a capturable bias-correction table (two float64 rows: 128 MiB)


@dataclasses.dataclass(frozen=True)
class QRampingConfig:
    """Q-Ramping (docs/methods.md#q-ramping): every ``interval`` steps (None: at each epoch start) ``calib_steps``
    plain-AdamW steps measure each weight's oscillation ratio R_w; its update period becomes
    k2 * floor(R_w / k1) + 1."""

    k1: float = 16.0
    k2: int = 5
    calib_steps: int = 30
    interval: int | None = None

    def __post_init__(self) -> None:
        require(self.k1 > 0, "qramping.k1", self.k1, "> 0")
        require(isinstance(self.k2, int) and self.k2 >= 0, "qramping.k2", self.k2, "an integer >= 0")
        require(isinstance(self.calib_steps, int) and self.calib_steps >= 1, "qramping.calib_steps",
                self.calib_steps, "an integer >= 1")
        require(self.interval is None or (isinstance(self.interval, int) and self.interval >= 1),
                "qramping.interval", self.interval, "null (each epoch) or an integer >= 1")


register_method_config("qramping", QRampingConfig, position=10)


@torch.no_grad()
def ramped_adamw_reference(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                           grad_accum: torch.Tensor, accum_count: torch.Tensor, update_period: torch.Tensor, *,
                           step: float, lr: float, beta1: float, beta2: float, eps: float,
                           weight_decay: float) -> None:
    """One Q-Ramping step of one tensor, in place: the readable specification (the Triton kernel follows it).

    ``step`` is the global step (1 for the first). An element whose count reaches its period steps like
    torch.optim.AdamW with the mean accumulated gradient and the step size times the count; with count 1 every
    operation is the one torch's single-tensor AdamW performs, so all-ones periods give its exact values.
    """
    param.mul_(1 - lr * weight_decay)
    finite = torch.isfinite(grad)
    grad_accum.add_(torch.where(finite, grad, torch.zeros_like(grad)))
    accum_count.add_(finite.to(accum_count.dtype))
    ready = (accum_count >= update_period) & (accum_count > 0)
    count = torch.where(ready, accum_count, torch.ones_like(accum_count)).to(grad_accum.dtype)
    mean_grad = grad_accum / count
    m = exp_avg.lerp(mean_grad, 1 - beta1)
    v = (exp_avg_sq * beta2).addcmul_(mean_grad, mean_grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = (v.sqrt() / bias_correction2**0.5).add_(eps)
    stepped = param.addcdiv(m * count, denom, value=-(lr / bias_correction1))
    param.copy_(torch.where(ready, stepped, param))
    exp_avg.copy_(torch.where(ready, m, exp_avg))
    exp_avg_sq.copy_(torch.where(ready, v, exp_avg_sq))
    grad_accum.masked_fill_(ready, 0.0)
    accum_count.masked_fill_(ready, 0)


def bias_correction_table(beta1: float, beta2: float) -> torch.Tensor:
    """float64 [2, K + 1]: ``1 - beta1**k`` and ``(1 - beta2**k) ** 0.5`` for k = 0..K, computed with Python floats
    exactly as the host-counter step computes them, for the capturable step to look up by its device counter (a
    device ``pow`` may differ from the host's in the last bit). K is the first k at which both powers are below
    2^-60: from there on (pow errs by less than an ulp) every power is below 2^-54, both rows are exactly 1.0, and a
    step beyond K reads entry K. ValueError if that takes more than BIAS_TABLE_LIMIT entries (a beta very near 1)."""
    largest = max(beta1, beta2)
    estimate = 1 if largest == 0 else math.ceil(math.log(BIAS_FLOOR) / math.log(largest))
    if estimate >= BIAS_TABLE_LIMIT:
        raise ValueError(f"capturable=True tabulates the bias corrections until beta**step < 2^-60: betas "
                         f"({beta1}, {beta2}) would need {estimate} entries, more than {BIAS_TABLE_LIMIT}; use betas "
                         f"further from 1, or capturable=False")
    rows: tuple[list[float], list[float]] = ([], [])
    step = 0.0
    while True:
        power1, power2 = beta1**step, beta2**step
        rows[0].append(1 - power1)
        rows[1].append((1 - power2) ** 0.5)
        if power1 < BIAS_FLOOR and power2 < BIAS_FLOOR:
            return torch.tensor(rows, dtype=torch.float64)
        step += 1


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _refuse_capture(what: str) -> None:
    """RuntimeError during a CUDA-graph capture: ``what`` is copied from the host, so an eager step must build it."""
    if capturing():
        raise RuntimeError(f"QRampingAdamW builds {what} from the host in an eager step: run a step eagerly before "
                           f"capturing step() in a CUDA graph (the usual warm-up), and again after "
                           f"set_update_periods, load_state_dict or anything else that replaces its state tensors")


class QRampingAdamW(torch.optim.Optimizer):
    """AdamW with per-element update periods (Q-Ramping); see the module docstring for the rule.

    Same arguments and param groups as torch.optim.AdamW (``foreach``/``fused`` apply to the parameters without
    periods, which take torch's own AdamW step). ``backend``: how parameters with periods step: "triton" (one fused
    launch for all of them; fp32 CUDA tensors), "torch" (``ramped_adamw_reference`` per tensor), "auto" (Triton when
    possible). Gradient clipping: clip ``.grad`` before ``step()`` as usual; each step's clipped gradient is what
    accumulates. Under DDP every rank holds the same averaged gradients, so every rank takes the same step.

    ``capturable``: as torch.optim.AdamW's, so that ``step()`` can be captured in a CUDA graph (after an eager step):
    the step counters live on the device, ``lr`` may be a tensor (filled in place between replays), and the ramped
    step reads its per-tensor scalars from a table computed on the device (bit for bit the values the host computes
    with ``capturable=False``; parameters with periods must then take the Triton path: contiguous fp32 on one CUDA
    device). It is a property of the optimizer, not of its state: ``load_state_dict`` keeps it.

    Example::

        optimizer = QRampingAdamW(param_groups, lr=1e-3, weight_decay=0.05)
        optimizer.set_update_periods({layer.weight: periods})   # int tensor shaped like the weight, >= 1
        loss.backward(); optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, foreach: bool | None = None,
                 fused: bool | None = None, backend: str = "auto", capturable: bool = False) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if fused and foreach:
            raise ValueError("fused and foreach cannot both be True")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach, fused=fused,
                        capturable=capturable)
        super().__init__(params, defaults)
        self.backend, self.capturable = backend, capturable
        self._plain = False
        self._tables: dict = {}
        self._bias_tables: dict = {}  # capturable: (beta1, beta2, device) -> bias_correction_table on the device
        self._device_steps: dict = {}  # capturable: (param ids, betas, eps) -> ramping_kernel.DeviceTableStep

    # -- periods -------------------------------------------------------------------------------------------------

    def set_update_periods(self, periods: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """Set the update periods (integer tensors >= 1 shaped like their parameters); parameters not given get
        period 1. Pending accumulations are kept: an element whose count already reaches its new period steps at
        the next step with what it has accumulated."""
        groups = {id(p): group for group in self.param_groups for p in group["params"]}
        for param, period in periods.items():
            if id(param) not in groups:
                raise ValueError(f"update period given for a tensor of shape {tuple(param.shape)} that is not a "
                                 f"parameter of this optimizer")
            if period.shape != param.shape:
                raise ValueError(f"update period of shape {tuple(period.shape)} for a parameter of shape "
                                 f"{tuple(param.shape)}")
            if period.dtype.is_floating_point or period.dtype.is_complex or period.dtype == torch.bool:
                raise TypeError(f"update periods must be an integer tensor, got {period.dtype}")
            if period.numel() and int(period.min()) < 1:
                raise ValueError(f"update periods must be >= 1, got a minimum of {int(period.min())}")
        given = {id(p) for p in periods}
        for param, state in self.state.items():
            if "update_period" in state and id(param) not in given:
                state["update_period"].fill_(1)
        for param, period in periods.items():
            state = self._init_state(param, groups[id(param)])
            state["step"] = state["step"].to(self._counter_device(param, groups[id(param)], ramped=True))
            if "update_period" not in state:
                contiguous = torch.contiguous_format
                state["grad_accum"] = torch.zeros_like(param, dtype=torch.float32, memory_format=contiguous)
                state["accum_count"] = torch.zeros_like(param, dtype=PERIOD_DTYPE, memory_format=contiguous)
            state["update_period"] = period.to(device=param.device, dtype=PERIOD_DTYPE).contiguous().clone()

    def update_periods(self) -> dict[torch.Tensor, torch.Tensor]:
        """The parameters that have periods, with them."""
        return {p: s["update_period"] for p, s in self.state.items() if "update_period" in s}

    @contextmanager
    def plain_adamw(self) -> Iterator[None]:
        """Inside, ``step()`` is plain AdamW for every parameter: periods are ignored and pending accumulations left
        untouched (Q-Ramping's calibration steps)."""
        previous, self._plain = self._plain, True
        try:
            yield
        finally:
            self._plain = previous

    # -- step -----------------------------------------------------------------------------------------------------

    def _counter_device(self, param: torch.Tensor, group: dict, ramped: bool) -> torch.device:
        """Where a step counter lives: on the device when capturable (or fused, for a parameter without periods), else
        on the host (the ramped step then reads its bias correction there without a sync)."""
        on_device = self.capturable or (bool(group["fused"]) and not ramped)
        return param.device if on_device else torch.device("cpu")

    def _init_state(self, param: torch.Tensor, group: dict) -> dict:
        state = self.state[param]
        if not state:  # as torch.optim.AdamW lays it out
            state["step"] = torch.zeros((), dtype=torch.float32, device=self._counter_device(param, group, False))
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One optimizer step (``closure`` re-evaluates the loss, as for any torch optimizer)."""
        if not self.capturable and capturing():
            raise RuntimeError("QRampingAdamW(capturable=False) cannot be captured in a CUDA graph: its step reads "
                               "host step counters and scalars; build it with capturable=True")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            plain, ramped = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("QRampingAdamW does not support sparse gradients")
                state = self._init_state(param, group)
                (ramped if "update_period" in state else plain).append(param)
            self._adamw(plain, group, group["foreach"], group["fused"])
            if self._plain:
                self._adamw(ramped, group, None, False)  # their step counters may live on the host: not fused
            else:
                self._ramped(ramped, group)
        return loss

    def _adamw(self, params: list[torch.Tensor], group: dict, foreach: bool | None, fused: bool | None) -> None:
        if not params:
            return
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        _torch_adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                     [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], foreach=foreach,
                     fused=fused, capturable=self.capturable, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                     weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _ramped(self, params: list[torch.Tensor], group: dict) -> None:
        if not params:
            return
        beta1, beta2 = group["betas"]
        eps, weight_decay = group["eps"], group["weight_decay"]
        counters = [self.state[p]["step"] for p in params]  # host tensors unless capturable: no device sync
        torch._foreach_add_(counters, 1)
        triton = self._use_triton(params)
        if self.capturable and (triton or params[0].is_cuda):  # triton on the CPU: TRITON_INTERPRET=1
            if not triton:
                raise RuntimeError("QRampingAdamW(capturable=True) steps parameters with periods with the Triton "
                                   "kernel: they must be contiguous fp32 tensors on one CUDA device")
            self._ramped_on_device(params, counters, group)
            return
        lr = float(group["lr"])
        steps = torch.stack(counters).tolist()
        if triton:
            self._ramped_triton(params, steps, lr, beta1, beta2, eps, weight_decay)
            return
        for param, step in zip(params, steps):
            s = self.state[param]
            ramped_adamw_reference(param, param.grad, s["exp_avg"], s["exp_avg_sq"], s["grad_accum"],
                                   s["accum_count"], s["update_period"], step=step, lr=lr, beta1=beta1,
                                   beta2=beta2, eps=eps, weight_decay=weight_decay)

    def _use_triton(self, params: list[torch.Tensor]) -> bool:
        if self.backend == "torch":
            return False
        eligible = all(p.dtype == torch.float32 and p.is_contiguous() and p.device == params[0].device
                       and (p.is_cuda or triton_interpreted()) for p in params)
        if self.backend == "triton" and not eligible:
            raise RuntimeError("backend='triton' needs contiguous fp32 parameters on one CUDA device (or "
                               "TRITON_INTERPRET=1 on the CPU)")
        return eligible and (self.backend == "triton" or params[0].is_cuda)

    def _kernel_arrays(self, params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per parameter, the tensors the Triton step reads and writes, in ramping_kernel's ADDRESS_ROWS order."""
        arrays = []
        for param in params:
            s = self.state[param]
            arrays.append([param, param.grad.float().contiguous(), s["exp_avg"], s["exp_avg_sq"], s["grad_accum"],
                           s["accum_count"], s["update_period"]])
        return arrays

    def _ramped_triton(self, params: list[torch.Tensor], steps: list[float], lr: float, beta1: float, beta2: float,
                       eps: float, weight_decay: float) -> None:
        from .ramping_kernel import BlockTables, ramped_adamw_

        scalars = [[1 - lr * weight_decay, lr / (1 - beta1**step), (1 - beta2**step) ** 0.5, 1 - beta1, beta2,
                    1 - beta2, eps] for step in steps]
        key = (params[0].device, tuple(p.numel() for p in params))
        if key not in self._tables:
            self._tables[key] = BlockTables(key[1], key[0])
        ramped_adamw_(self._kernel_arrays(params), scalars, self._tables[key])

    def _ramped_on_device(self, params: list[torch.Tensor], counters: list[torch.Tensor], group: dict) -> None:
        """The Triton step with its scalars computed on the device from the device counters, nothing read on the
        host (capturable): 1 - lr wd and lr / (1 - beta1^step) in float64 from ``bias_correction_table``, then
        rounded to fp32, as the host computes them in Python floats."""
        from .ramping_kernel import DeviceTableStep

        beta1, beta2 = group["betas"]
        device = params[0].device
        bias = self._bias_tables.get((beta1, beta2, device))
        if bias is None:
            _refuse_capture("its bias-correction table")
            bias = self._bias_tables[beta1, beta2, device] = bias_correction_table(beta1, beta2).to(device)
        index = torch.stack(counters).to(torch.int64).clamp_(max=bias.shape[1] - 1)
        bias_correction1, bias_correction2_sqrt = bias.index_select(1, index)
        lr = group["lr"]
        lr = (lr.to(device=device, dtype=torch.float64) if isinstance(lr, torch.Tensor)
              else torch.full((), lr, dtype=torch.float64, device=device))
        key = (tuple(map(id, params)), beta1, beta2, group["eps"])
        if key not in self._device_steps:
            _refuse_capture("the block and scalar tables of its fused step")
            self._device_steps[key] = DeviceTableStep(tuple(p.numel() for p in params), device,
                                                      [1 - beta1, beta2, 1 - beta2, group["eps"]])
        arrays = self._kernel_arrays(params)
        step = self._device_steps[key]
        if step.needs_addresses(arrays):
            _refuse_capture("the address table of its fused step")
            step.set_addresses(arrays)
        step(1 - lr * group["weight_decay"], torch.div(lr, bias_correction1), bias_correction2_sqrt)

    # -- state dict -----------------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, then undo its casts of the ramping state: periods and counts stay int32, and each step counter
        goes where this optimizer keeps it (device or host, by ``capturable``, whatever the checkpoint's was).
        Checkpoints of either setting, and of versions before ``capturable``, load."""
        super().load_state_dict(state_dict)
        groups = {id(p): group for group in self.param_groups for p in group["params"]}
        for group in self.param_groups:
            group["capturable"] = self.capturable
        for param, state in self.state.items():
            ramped = "update_period" in state
            if "step" in state:
                state["step"] = state["step"].to(self._counter_device(param, groups[id(param)], ramped))
            if ramped:
                for key in ("update_period", "accum_count"):
                    state[key] = state[key].to(device=param.device, dtype=PERIOD_DTYPE)
                state["grad_accum"] = state["grad_accum"].to(device=param.device, dtype=torch.float32)


def update_periods_from_ratio(ratio: torch.Tensor, k1: float, k2: int, max_period: int) -> torch.Tensor:
    """p = k2 * floor(R_w / k1) + 1, capped at ``max_period`` (int32)."""
    return (k2 * torch.floor(ratio / k1) + 1).clamp(max=max_period).to(PERIOD_DTYPE)


class QRampingCalibrator:
    """Q-Ramping's calibration: measure R_w over T0 plain-AdamW steps, restore everything, set the update periods.

    ``model``: the training model unwrapped from DDP (its QLinears with a weight quantizer are measured);
    ``steps_per_epoch``: caps the periods and is the default interval; ``config``: k1, k2, T0 (``calib_steps``)
    and the interval (default: the first QLinear's ``recipe.method_config("qramping")``); ``amp_dtype``: the
    autocast dtype of the forward (its weight quantizer sees W in that dtype); ``share_from_main``: with several
    processes, makes every rank hold rank 0's periods (whatever its own numerics gave; None: one process).

    Example, in the training loop (``train_step`` = forward, backward, clip, ``scaler.step(optimizer)``,
    ``scaler.update()`` on a batch; no model-EMA update, no logging); each calibration step takes a new batch from a
    loader of its own, so the training batches are the same with or without calibration::

        calibrator = QRampingCalibrator(model, optimizer, steps_per_epoch=len(loader), amp_dtype=torch.bfloat16)
        for step, (x, y) in enumerate(batches, start=first_step):
            if calibrator.due(step):
                calib = iter(calibration_loader)
                record = calibrator.calibrate(lambda i: train_step(*next(calib)),
                                              rewind=lambda: training.rewound([model, optimizer, scaler]))
                logger.write(record)
            train_step(x, y)
    """

    def __init__(self, model: nn.Module, optimizer: QRampingAdamW, steps_per_epoch: int,
                 config: QRampingConfig | None = None, *, amp_dtype: torch.dtype | None = None,
                 share_from_main: Optional[ShareFromMain] = None) -> None:
        if not isinstance(optimizer, QRampingAdamW):
            raise TypeError(f"Q-Ramping needs a QRampingAdamW optimizer, got {type(optimizer).__name__}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.layers = [m for m in model.modules() if isinstance(m, QLinear) and m.recipe.q2 is not None]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no QLinear with a weight quantizer to calibrate")
        self.config = config or self.layers[0].recipe.method_config("qramping") or QRampingConfig()
        self.model, self.optimizer = model, optimizer
        self.steps_per_epoch, self.amp_dtype = steps_per_epoch, amp_dtype
        self.share_from_main = share_from_main
        self.interval = self.config.interval or steps_per_epoch

    def due(self, step: int) -> bool:
        """Whether global step ``step`` (0-based) starts a calibration period."""
        return step % self.interval == 0

    def calibrate(self, train_step: Callable[[int], object], rewind: Rewind) -> dict:
        """Run ``train_step(i)`` for i < T0 under plain AdamW inside ``with rewind():`` (which must restore model,
        optimizer, grad scaler and random generators: training.rewound), measuring R_w; then set the periods.
        Returns a record for the run log: seconds taken, the share of oscillating weights (R_w > 16) and of weights
        with a period above 1, the mean and largest period."""
        cuda = self.layers[0].weight.is_cuda
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        tracker = OscillationRatio()
        with rewind():
            tracker.update(*self._observe())
            with self.optimizer.plain_adamw():
                for i in range(self.config.calib_steps):
                    train_step(i)
                    tracker.update(*self._observe())
        cap = self.steps_per_epoch
        periods = {layer.weight: update_periods_from_ratio(r, self.config.k1, self.config.k2, cap)
                   for layer, r in zip(self.layers, tracker.ratios())}
        if self.share_from_main is not None:
            self.share_from_main(list(periods.values()))
        self.optimizer.set_update_periods(periods)
        all_periods = torch.cat([p.flatten() for p in periods.values()])
        oscillating = sum(int((r > OSCILLATING_RATIO).sum()) for r in tracker.ratios())
        if cuda:
            torch.cuda.synchronize()
        return {"type": "qramping", "seconds": time.perf_counter() - start,
                "oscillating_share": oscillating / all_periods.numel(),
                "ramped_share": float((all_periods > 1).float().mean()),
                "mean_period": float(all_periods.float().mean()), "max_period": int(all_periods.max())}

    def _observe(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [m.weight for m in self.layers], [m.quantized_weight(self.amp_dtype) for m in self.layers]


class QRampingHook(MethodHook):
    """Q-Ramping in a training loop (quantization.hooks): steps with QRampingAdamW and calibrates when due."""

    name = "Q-Ramping"
    optimizer = QRampingAdamW  # built with capturable=True for CUDA graphs
    capture_safe = True

    def __init__(self, config: QRampingConfig) -> None:
        self.config = config
        self.calibration_steps = config.calib_steps
        self.calibrator: QRampingCalibrator | None = None

    def attach(self, context: TrainingContext) -> None:
        config = dataclasses.replace(self.config, calib_steps=self.calibration_steps)
        self.calibrator = QRampingCalibrator(context.model, context.optimizer, context.steps_per_epoch, config,
                                             amp_dtype=context.amp_dtype, share_from_main=context.share_from_main)

    def calibration_due(self, step: int) -> bool:
        return self.calibrator.due(step)

    def calibrate(self, train_step: Callable[[int], object], rewind: Rewind) -> dict:
        return self.calibrator.calibrate(train_step, rewind)


def qramping_hook(recipe: Recipe) -> QRampingHook | None:
    """The hook of this method for ``recipe``, None if the recipe does not use it."""
    config = recipe.method_config("qramping")
    return QRampingHook(config) if config is not None else None


# Table 2 (and, with other k1 and k2, Table 10).
register_recipe(get_recipe("tetrajet").replace(name="tetrajet_qramping", qramping=QRampingConfig()))
