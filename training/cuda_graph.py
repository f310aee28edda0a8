"""train.cuda_graph: the training step replayed as two CUDA graphs, so that a host-bound model (DeiT-T, whose step's
kernels Python and Triton's launcher issue one by one) costs a few launches per step (docs/cuda-graphs.md).

Graph A zeroes the gradients (kept where they are, so both graphs and the eager steps see the same tensors), runs the
forward under autocast, the loss with the method hooks' extra terms, the backward and the gradient clipping. Graph B
is the optimizer step with the hooks registered on it (Q-EMA's update, Freeze). Between the two the host reads the
loss, as the eager step does, so a non-finite loss stops the run before graph B touches the weights. The random
numbers (drop path, the quantizers' stochastic-rounding seeds) are drawn on the device from torch's CUDA generator,
which every replay advances as an eager step does: a replay computes what the same step run eagerly computes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch
from torch import nn

from configs import ConfigError
from quantization import MethodHook, with_extra_losses

from .distributed import DistContext

Batch = tuple[torch.Tensor, torch.Tensor]


class Graph(Protocol):
    def replay(self) -> None: ...

    def pool(self) -> object: ...


Capture = Callable[[Callable[[], None], Optional[object]], Graph]


def cuda_capture(fn: Callable[[], None], pool: Optional[object]) -> Graph:
    """``fn``'s kernels captured, not run, into a CUDA graph that allocates from memory pool ``pool`` (None: its own);
    graphs sharing a pool must be replayed in the order they were captured. Thread-local capture mode: the data
    loader's pin-memory thread may allocate pinned memory meanwhile."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        fn()
    return graph


class EagerGraph:
    """A stand-in for a captured graph: each replay calls the function, so the graphed step's code path runs with its
    kernels launched one by one (the CPU tests, and the GPU check's reference for what a replay must compute)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def replay(self) -> None:
        self.fn()

    def pool(self) -> object:
        return None


def eager_capture(fn: Callable[[], None], pool: Optional[object]) -> Graph:
    """A Capture that captures nothing: EagerGraph(fn)."""
    return EagerGraph(fn)


def check_context(ctx: DistContext) -> None:
    """ConfigError for what train.cuda_graph cannot run on, known once the run has started: a device other than CUDA
    and several processes (the loss is all-reduced between the graphs in an eager step, and DDP's gradient
    all-reduce is not captured; one process for now)."""
    if ctx.device.type != "cuda":
        raise ConfigError(f"train.cuda_graph=true needs a CUDA device, but this run is on {ctx.device} (no GPU "
                          f"found); set train.cuda_graph=false")
    if ctx.world_size > 1:
        raise ConfigError(f"train.cuda_graph=true runs in one process, but this run has {ctx.world_size}; set "
                          f"train.cuda_graph=false, or train in one process")


def _batch_key(samples: torch.Tensor, targets: torch.Tensor) -> tuple:
    return tuple(samples.shape), samples.dtype, tuple(targets.shape), targets.dtype


class GraphedTrainStep:
    """The training step of ``model`` as two graphs (module docstring). Each step is
    ``loss = forward_backward(samples, targets, step)`` (a 0-dim fp32 device tensor, for the caller to read and
    check), then ``optimizer_step()``.

    The first ``warmup`` steps of a batch shape run eagerly on a side stream, as CUDA graphs need (lazy
    initialisation, Triton's compilation, the optimizer's state); the next one of that shape is captured (``capture``
    makes a graph of a function: ``cuda_capture``, or ``eager_capture`` on the CPU) and replayed from then on, its
    batch copied into static buffers. A batch of another shape or dtype steps eagerly (main.py's training loader
    drops the last partial batch, so none comes). Inside ``eager()`` every step runs eagerly, and afterwards the
    graphs are captured afresh.

    ``optimizer`` must be capturable (torch's ``capturable=True``, QRampingAdamW's too): inside the step each param
    group's ``lr`` is a device tensor filled from the group's float ``lr`` (which a scheduler sets) before the step;
    outside it stays the float. ``hooks``: the method's (quantization.method_hooks, attached), each capture-safe
    (``MethodHook.capture_safe``); their ``extra_loss`` is captured at the capturing step. Gradients are clipped to
    ``clip_grad`` (None: not) without a host sync. ``captures`` and ``replays`` count what happened.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, *,
                 device: torch.device, amp_dtype: Optional[torch.dtype], clip_grad: Optional[float],
                 hooks: Sequence[MethodHook] = (), warmup: int = 3, capture: Capture = cuda_capture) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 eager step before a capture, got {warmup}")
        self.model, self.criterion, self.optimizer, self.hooks = model, criterion, optimizer, tuple(hooks)
        self.device, self.amp_dtype, self.clip_grad = device, amp_dtype, clip_grad
        self.warmup, self.capture = warmup, capture
        self.captures = self.replays = 0
        self._lr = [torch.zeros((), dtype=torch.float32, device=device) for _ in optimizer.param_groups]
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._graphs: Optional[tuple[Graph, Graph]] = None
        self._key: Optional[tuple] = None  # the captured batch's shapes and dtypes
        self._static: Optional[Batch] = None
        self._loss: Optional[torch.Tensor] = None  # graph A's output
        self._warm: tuple[Optional[tuple], int] = (None, 0)  # batch key of the eager steps in a row, their count
        self._eager_only = False
        self._replayed = False  # the last forward_backward replayed graph A: optimizer_step replays graph B

    # -- the step -------------------------------------------------------------------------------------------------

    def forward_backward(self, samples: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        """Graph A's work on this batch (replayed, captured and replayed, or eager); returns the loss."""
        key = _batch_key(samples, targets)
        if self._graphs is None and not self._eager_only and self._warm == (key, self.warmup):
            self._capture(samples, targets, step)
        self._replayed = self._graphs is not None and key == self._key
        if self._replayed:
            self._static[0].copy_(samples)
            self._static[1].copy_(targets)
            self._graphs[0].replay()
            self.replays += 1
            return self._loss
        self._warm = (key, self._warm[1] + 1 if self._warm[0] == key else 1)
        with self._side_stream():
            self._zero_grads()
            return self._forward_backward(samples, targets, step)

    def optimizer_step(self) -> None:
        """Graph B's work: the optimizer step at the param groups' current learning rates."""
        for group, lr in zip(self.optimizer.param_groups, self._lr):
            lr.fill_(group["lr"])
        if self._replayed:
            self._graphs[1].replay()
            return
        with self._side_stream():
            self._optimizer_step()

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Steps inside run eagerly and the graphs are dropped, to be captured afresh after the warm-up that follows
        (a Q-Ramping calibration steps plain AdamW, and its restore replaces the optimizer's state tensors, whose old
        addresses the graphs hold)."""
        previous, self._eager_only = self._eager_only, True
        self._drop_graphs()
        try:
            yield
        finally:
            self._eager_only = previous
            self._drop_graphs()

    # -- parts ----------------------------------------------------------------------------------------------------

    def _forward_backward(self, samples: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        # No autocast weight cache: a captured graph must not keep casts made outside it (torch's CUDA-graph notes).
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            loss = with_extra_losses(self.criterion(self.model(samples), targets), self.hooks, step)
        loss.backward()
        if self.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        return loss.detach().float()

    def _drop_graphs(self) -> None:
        self._graphs, self._loss, self._warm = None, None, (None, 0)

    def _zero_grads(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def _optimizer_step(self) -> None:
        groups = self.optimizer.param_groups
        rates = [group["lr"] for group in groups]
        for group, lr in zip(groups, self._lr):
            group["lr"] = lr
        try:
            self.optimizer.step()
        finally:
            for group, rate in zip(groups, rates):
                group["lr"] = rate

    def _capture(self, samples: torch.Tensor, targets: torch.Tensor, step: int) -> None:
        if self._key != _batch_key(samples, targets):
            self._static = (torch.empty_like(samples), torch.empty_like(targets))
            self._key = _batch_key(samples, targets)

        def forward_backward() -> None:
            self._zero_grads()
            self._loss = self._forward_backward(*self._static, step)

        first = self.capture(forward_backward, None)
        self._graphs = (first, self.capture(self._optimizer_step, first.pool()))
        self.captures += 1

    @contextmanager
    def _side_stream(self) -> Iterator[None]:
        if self._stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            yield
        current.wait_stream(self._stream)
