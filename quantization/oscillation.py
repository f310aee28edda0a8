"""The paper's oscillation metrics (Table 3, Figs. 2, 3, 5, 6; docs/methods.md#oscillation-metrics) and a callback
that logs them in training.

* rate of change r(X) = mean over t of ||X_t - X_{t-1}||_F / ||X_{t-1}||_F, for the latent weights W, their forward
  quantization Q(W) and a block's output Y on a fixed probe batch; a list of tensors counts as one concatenated X;
* oscillation ratio R_w = dist_Q / dist_W per weight, dist_W = sum_t |w_t - w_{t-1}|, dist_Q = sum_t |Q(w_t) -
  Q(w_{t-1})| (0 where the weight did not move); R_w > 16 counts as oscillating;
* QuantConf(w) = distance of w/S to its nearest rounding threshold / the largest such distance in its grid cell
  (S: the weight's block scale), in [0, 1]: 0 on a threshold, 1 at the cell's centre (at the largest grid value for
  the top cell, which has one threshold only).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .linear import QLinear
from .mx.formats import get_format
from .mx.grid import block_scales, grid_magnitudes
from .mx.ops import quantize
from .recipes import QuantizerConfig

OSCILLATING_RATIO = 16.0  # the paper's rule: a weight with R_w > 16 counts as oscillating
RATIO_EDGES = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, float("inf")]
CONF_EDGES = [i / 20 for i in range(21)]
MEASURE_QUANTIZER = QuantizerConfig()  # stands in for q2 on layers that do not quantize their weight (BF16 runs)


class RateOfChange:
    """Streaming r(X): feed X_0, X_1, ... (a tensor or a list of tensors taken together) to ``update``."""

    def __init__(self) -> None:
        self._previous: list[torch.Tensor] | None = None
        self._sum = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, x: "torch.Tensor | list[torch.Tensor]") -> None:
        current = [t.detach().float().clone() for t in (x if isinstance(x, (list, tuple)) else [x])]
        if self._previous is not None:
            change = sum(float(torch.linalg.vector_norm(c - p)) ** 2 for c, p in zip(current, self._previous))
            size = sum(float(torch.linalg.vector_norm(p)) ** 2 for p in self._previous)
            self._sum += (change / size) ** 0.5 if size > 0 else 0.0
            self.count += 1
        self._previous = current

    @property
    def value(self) -> float:
        """The mean relative change so far (NaN before two observations)."""
        return self._sum / self.count if self.count else float("nan")


class OscillationRatio:
    """Per-element R_w over consecutive observations of weights W and their quantization Q(W) (lists of tensors)."""

    def __init__(self) -> None:
        self._w: list[torch.Tensor] | None = None
        self._q: list[torch.Tensor] = []
        self.dist_w: list[torch.Tensor] = []
        self.dist_q: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, weights: list[torch.Tensor], quantized: list[torch.Tensor]) -> None:
        w = [t.detach().float().clone() for t in weights]
        q = [t.detach().float().clone() for t in quantized]
        if self._w is None:
            self.dist_w = [torch.zeros_like(t) for t in w]
            self.dist_q = [torch.zeros_like(t) for t in q]
        else:
            for dw, dq, cw, cq, pw, pq in zip(self.dist_w, self.dist_q, w, q, self._w, self._q):
                dw.add_((cw - pw).abs())
                dq.add_((cq - pq).abs())
        self._w, self._q = w, q

    def ratios(self) -> list[torch.Tensor]:
        """R_w per element (0 where dist_W = 0), one tensor per observed weight tensor."""
        return [torch.where(dw > 0, dq / dw.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(dw))
                for dw, dq in zip(self.dist_w, self.dist_q)]


def quant_conf(weight: torch.Tensor, config: QuantizerConfig) -> torch.Tensor:
    """QuantConf of every element of ``weight`` (fp32, same shape) for the quantizer ``config`` (1x32 blocks)."""
    fmt = get_format(config.fmt)
    grid = grid_magnitudes(fmt, weight.device)
    thresholds = (grid[:-1] + grid[1:]) / 2
    top = float(grid[-1])
    scaled = (weight.detach().float() / block_scales(weight, config.fmt, config.scale_rule)).abs().clamp(max=top)
    cell = torch.searchsorted(thresholds, scaled.contiguous(), right=True)  # ties (on a threshold) belong above
    lower = torch.cat([-thresholds[:1], thresholds])[cell]
    upper = torch.cat([thresholds, torch.tensor([2 * top], device=grid.device) - thresholds[-1:]])[cell]
    return torch.minimum(scaled - lower, upper - scaled) / ((upper - lower) / 2)


def histogram(values: torch.Tensor, edges: list[float]) -> list[int]:
    """Counts of ``values`` in [edges[i], edges[i+1]) (the last bin closed)."""
    boundaries = torch.tensor(edges[1:-1], dtype=torch.float32, device=values.device)
    bins = torch.bucketize(values.detach().float().flatten(), boundaries, right=True)
    return torch.bincount(bins, minlength=len(edges) - 1).tolist()


def measured_layers(model: nn.Module) -> dict[str, QLinear]:
    """The QLinears of ``model`` by qualified name (all of them: layers without q2 are measured against
    MEASURE_QUANTIZER)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QLinear)}


@torch.no_grad()
def forward_quantized(layer: QLinear, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Q(W) of a layer as its forward sees it (layer.quantized_weight), or MEASURE_QUANTIZER's if q2 is off."""
    if layer.recipe.q2 is not None:
        return layer.quantized_weight(dtype)
    weight = layer.weight.detach() if dtype is None else layer.weight.detach().to(dtype)
    config = MEASURE_QUANTIZER
    return quantize(weight, "1x32", config.fmt, config.scale_rule, config.rounding)


def _quantizer(layer: QLinear) -> QuantizerConfig:
    return layer.recipe.q2 or MEASURE_QUANTIZER


@torch.no_grad()
def block_output(model: nn.Module, block: str, probe: torch.Tensor, amp_dtype: torch.dtype | None = None
                 ) -> torch.Tensor:
    """The output of module ``block`` (fp32) when ``model`` runs ``probe`` in eval mode (no drop path, the
    forward's own quantized weights), under autocast to ``amp_dtype``; the model's mode is restored."""
    captured = []
    handle = model.get_submodule(block).register_forward_hook(lambda m, i, o: captured.append(o))
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(probe.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(probe)
    finally:
        handle.remove()
        model.train(was_training)
    return captured[0].float()


@torch.no_grad()
def nudged_output_change(model: nn.Module, block: str, probe: torch.Tensor, parameter: nn.Parameter,
                         nudge: float = 1e-3, amp_dtype: torch.dtype | None = None) -> float:
    """||Y' - Y||_F / ||Y||_F for the output Y of ``block`` on ``probe`` when the first element of ``parameter``
    moves by ``nudge`` (then moves back): the floor under r(Y) that a step of any size sets when the forward
    rounds activations to the nearest grid value, which makes it discontinuous."""
    before = block_output(model, block, probe, amp_dtype)
    flat = parameter.view(-1)
    original = flat[0].clone()
    flat[0] += nudge
    try:
        after = block_output(model, block, probe, amp_dtype)
    finally:
        flat[0] = original
    return float((after - before).norm() / before.norm())


class OscillationMonitor:
    """Training callback: every ``interval`` optimizer steps, follow the next ``window`` consecutive steps and log
    r(W), r(Q(W)), r(Y) (Y: output of module ``block`` on the fixed ``probe`` batch), the share of weights with
    R_w > 16 and R_w's histogram, QuantConf's mean and histogram, and the trajectories of a few weights.

    Off by default in the training config; when off, build none. When on, ``after_step`` costs nothing outside the
    windows; inside one it copies the quantized weights (a few times the model's size in memory) and runs the probe
    forward once per step. It reads no random numbers and leaves the model as it was (mode included), so training
    proceeds identically with or without it. Call it on one rank only, with the model unwrapped from DDP.

    ``write``: receives each record (e.g. the run logger's ``write``: JSON lines + TensorBoard scalars);
    ``tb_writer``: a tensorboardX SummaryWriter for the two histograms (optional). ``traces``: how many weights of
    ``trace_layer`` (default: the first measured layer) to follow; in each window they are the ones with the highest
    R_w of the previous window (at first, those closest to a rounding threshold).

    Example::

        monitor = OscillationMonitor(model, interval=500, write=logger.write, probe=probe_images,
                                     block="blocks.9", amp_dtype=torch.bfloat16)
        for step ...:
            ...optimizer step...
            monitor.after_step(step, epoch=step / steps_per_epoch)
    """

    def __init__(self, model: nn.Module, interval: int, *, window: int = 30,
                 write: Callable[[dict], None] | None = None, tb_writer=None, probe: torch.Tensor | None = None,
                 block: str | None = None, amp_dtype: torch.dtype | None = None, traces: int = 4,
                 trace_layer: str | None = None) -> None:
        if window < 1 or interval <= window:
            raise ValueError(f"need 1 <= window < interval, got window={window}, interval={interval}")
        self.layers = measured_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no QLinear to measure")
        if (probe is None) != (block is None):
            raise ValueError("probe and block go together: give both (to measure r(Y)) or neither")
        modules = dict(model.named_modules())
        if block is not None and block not in modules:
            blocks = [name for name in modules if name.count(".") == 1 and name.startswith("blocks.")]
            raise ValueError(f"unknown block {block!r}; valid choices include: {', '.join(blocks) or 'none'}")
        self.model, self.interval, self.window = model, interval, window
        self.write, self.tb_writer = write, tb_writer
        self.probe, self.block, self.amp_dtype = probe, block, amp_dtype
        self.trace_count = traces
        self.trace_layer = trace_layer or next(iter(self.layers))
        if self.trace_layer not in self.layers:
            raise ValueError(f"unknown trace_layer {self.trace_layer!r}; valid choices: {', '.join(self.layers)}")
        self._start: int | None = None
        self._trace_index: torch.Tensor | None = None

    def after_step(self, step: int, epoch: float | None = None) -> dict | None:
        """Observe the model after optimizer step ``step``; returns (and writes) the record at a window's end.
        ``epoch`` (e.g. the fractional epoch step / steps_per_epoch) goes into the record for plotting."""
        if self._start is None:
            if step % self.interval:
                return None
            self._begin(step)
        self._observe()
        if step - self._start < self.window:
            return None
        record = self._finish(step, epoch)
        self._start = None
        return record

    def _begin(self, step: int) -> None:
        self._start = step
        self._rates = {"r_w": RateOfChange(), "r_q": RateOfChange(), "r_y": RateOfChange()}
        self._ratio = OscillationRatio()
        layer = self.layers[self.trace_layer]
        if self._trace_index is None:
            closeness = 1 - quant_conf(self._forward_weight(layer), _quantizer(layer)).flatten()
            self._trace_index = closeness.topk(min(self.trace_count, closeness.numel())).indices
        self._trace_v: list[list[float]] = []
        self._trace_q: list[list[float]] = []

    @torch.no_grad()
    def _observe(self) -> None:
        layers = list(self.layers.values())
        weights = [m.weight for m in layers]
        quantized = [forward_quantized(m, self.amp_dtype) for m in layers]
        self._rates["r_w"].update(weights)
        self._rates["r_q"].update(quantized)
        self._ratio.update(weights, quantized)
        if self.probe is not None:
            self._rates["r_y"].update(block_output(self.model, self.block, self.probe, self.amp_dtype))
        layer = self.layers[self.trace_layer]
        index = self._trace_index
        weight = self._forward_weight(layer)
        quantizer = _quantizer(layer)
        scale = block_scales(weight, quantizer.fmt, quantizer.scale_rule).flatten()[index]
        self._trace_v.append((weight.flatten()[index].float() / scale).tolist())
        self._trace_q.append((quantized[layers.index(layer)].flatten()[index].float() / scale).tolist())

    def _forward_weight(self, layer: QLinear) -> torch.Tensor:
        """The weight as the forward's quantizer sees it (cast to the autocast dtype): QuantConf and the traces
        must place it where Q(W) does, or a bf16 tie would look like a weight just below a threshold."""
        weight = layer.weight.detach()
        return weight if self.amp_dtype is None else weight.to(self.amp_dtype)

    def _thresholds(self) -> list[float]:
        """The positive rounding thresholds of the trace layer's grid, in units of the block scale."""
        grid = get_format(_quantizer(self.layers[self.trace_layer]).fmt).grid()
        return [(low + high) / 2 for low, high in zip(grid, grid[1:])]

    def _finish(self, step: int, epoch: float | None) -> dict:
        names = list(self.layers)
        ratios = self._ratio.ratios()
        all_ratios = torch.cat([r.flatten() for r in ratios])
        confs = torch.cat([quant_conf(self._forward_weight(m), _quantizer(m)).flatten() for m in self.layers.values()])
        record = {"type": "oscillation", "step": step, "window": self.window,
                  "r_w": self._rates["r_w"].value, "r_q": self._rates["r_q"].value,
                  "osc_share": float((all_ratios > OSCILLATING_RATIO).float().mean()),
                  "osc_hist": {"edges": RATIO_EDGES[:-1] + ["inf"], "counts": histogram(all_ratios, RATIO_EDGES)},
                  "quantconf_mean": float(confs.mean()),
                  "quantconf_hist": {"edges": CONF_EDGES, "counts": histogram(confs, CONF_EDGES)},
                  "thresholds": self._thresholds(),
                  "traces": [{"layer": self.trace_layer, "index": int(i), "v": [row[k] for row in self._trace_v],
                              "q": [row[k] for row in self._trace_q]}
                             for k, i in enumerate(self._trace_index.tolist())]}
        if epoch is not None:
            record["epoch"] = epoch
        if self.probe is not None:
            record["r_y"] = self._rates["r_y"].value
        # next window follows the most oscillating weights of the trace layer
        trace_ratios = ratios[names.index(self.trace_layer)].flatten()
        self._trace_index = trace_ratios.topk(min(self.trace_count, trace_ratios.numel())).indices
        if self.write is not None:
            self.write(record)
        if self.tb_writer is not None:
            self.tb_writer.add_histogram("oscillation/R_w", all_ratios.cpu().numpy(), step)
            self.tb_writer.add_histogram("oscillation/QuantConf", confs.cpu().numpy(), step)
        return record
