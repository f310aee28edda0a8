"""One fused Triton launch for a Q-Ramping AdamW step over many tensors (quantization.ramping holds the spec).

Every program handles BLOCK elements of one tensor. Each tensor's seven arrays (param, grad, exp_avg, exp_avg_sq,
grad_accum, accum_count, update_period) are reached through a table of their addresses, and its seven step scalars
through a table of fp32 values, so the whole parameter list costs one launch. Bytes per element: param, grad, the two
moments, count and period are read and param and moments written (36 B, vs 28 B for a fused AdamW step); the
accumulator and count are read and written only where an element accumulates (period > 1 or a pending count).
Divisions and square roots round to nearest (div_rn, sqrt_rn) like torch's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
ADDRESS_ROWS = 7  # param, grad, exp_avg, exp_avg_sq, grad_accum, accum_count, update_period
SCALAR_ROWS = 7  # decay (1 - lr wd), step size lr / bc1, sqrt(bc2), 1 - beta1, beta2, 1 - beta2, eps


@triton.jit
def _pointer(table_ptr, row: tl.constexpr, n_tensors, t, dtype: tl.constexpr):
    return tl.load(table_ptr + row * n_tensors + t).to(tl.pointer_type(dtype))


@triton.jit
def _ramped_adamw_kernel(addr_ptr, scalar_ptr, block_tensor_ptr, block_start_ptr, numel_ptr, n_tensors,
                         BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(block_tensor_ptr + pid)
    offs = tl.load(block_start_ptr + pid) + tl.arange(0, BLOCK)
    mask = offs < tl.load(numel_ptr + t)
    p_ptr = _pointer(addr_ptr, 0, n_tensors, t, tl.float32) + offs
    g_ptr = _pointer(addr_ptr, 1, n_tensors, t, tl.float32) + offs
    m_ptr = _pointer(addr_ptr, 2, n_tensors, t, tl.float32) + offs
    v_ptr = _pointer(addr_ptr, 3, n_tensors, t, tl.float32) + offs
    acc_ptr = _pointer(addr_ptr, 4, n_tensors, t, tl.float32) + offs
    cnt_ptr = _pointer(addr_ptr, 5, n_tensors, t, tl.int32) + offs
    per_ptr = _pointer(addr_ptr, 6, n_tensors, t, tl.int32) + offs
    decay = tl.load(scalar_ptr + t)
    step_size = tl.load(scalar_ptr + n_tensors + t)
    bc2_sqrt = tl.load(scalar_ptr + 2 * n_tensors + t)
    w1 = tl.load(scalar_ptr + 3 * n_tensors + t)
    beta2 = tl.load(scalar_ptr + 4 * n_tensors + t)
    w2 = tl.load(scalar_ptr + 5 * n_tensors + t)
    eps = tl.load(scalar_ptr + 6 * n_tensors + t)

    p = tl.load(p_ptr, mask=mask, other=0.0) * decay
    g = tl.load(g_ptr, mask=mask, other=0.0)
    m = tl.load(m_ptr, mask=mask, other=0.0)
    v = tl.load(v_ptr, mask=mask, other=0.0)
    period = tl.load(per_ptr, mask=mask, other=1)
    count = tl.load(cnt_ptr, mask=mask, other=0)
    accumulating = mask & ((period > 1) | (count > 0))
    acc = tl.load(acc_ptr, mask=accumulating, other=0.0)

    finite = tl.abs(g) < float("inf")  # false for NaN and +-Inf
    acc = acc + tl.where(finite, g, 0.0)
    count = count + finite.to(tl.int32)
    ready = (count >= period) & (count > 0)
    n_acc = tl.where(ready, count, 1).to(tl.float32)
    mean_grad = tl.math.div_rn(acc, n_acc)
    diff = mean_grad - m
    m = tl.where(w1 < 0.5, m + w1 * diff, mean_grad - diff * (1.0 - w1))  # torch.lerp's two branches
    v = v * beta2 + (w2 * mean_grad) * mean_grad
    denom = tl.math.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = tl.where(ready, p + tl.math.div_rn(-step_size * (m * n_acc), denom), p)

    tl.store(p_ptr, p, mask=mask)
    tl.store(m_ptr, m, mask=mask & ready)
    tl.store(v_ptr, v, mask=mask & ready)
    tl.store(acc_ptr, tl.where(ready, 0.0, acc), mask=accumulating)
    tl.store(cnt_ptr, tl.where(ready, 0, count), mask=accumulating)


class BlockTables:
    """Which tensor and offset each program handles, for a list of tensor sizes (built once, cached by the caller)."""

    def __init__(self, numels: tuple[int, ...], device: torch.device) -> None:
        blocks = [-(-n // BLOCK) for n in numels]
        self.numel = torch.tensor(numels, dtype=torch.int32, device=device)
        self.tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32),
                                              torch.tensor(blocks)).to(device)
        self.start = torch.cat([torch.arange(b, dtype=torch.int32) * BLOCK for b in blocks]).to(device)
        self.programs = sum(blocks)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    table = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)  # no host sync; the pinned block is held until used
    return table


def address_table(arrays: list[list[torch.Tensor]]) -> torch.Tensor:
    """The ADDRESS_ROWS x len(arrays) table of the arrays' addresses (int64), on their device."""
    n = len(arrays)
    return _to_device([arrays[t][row].data_ptr() for row in range(ADDRESS_ROWS) for t in range(n)], torch.int64,
                      arrays[0][0].device)


def launch(addresses: torch.Tensor, values: torch.Tensor, tables: BlockTables) -> None:
    """Launch the step from device tables: ``addresses`` (address_table) and ``values``, the SCALAR_ROWS x n fp32
    step scalars. Nothing here reads the host's copy of a tensor, so a CUDA graph can capture it."""
    _ramped_adamw_kernel[(tables.programs,)](addresses, values, tables.tensor, tables.start, tables.numel,
                                             addresses.shape[0] // ADDRESS_ROWS, BLOCK=BLOCK, num_warps=4)


class DeviceTableStep:
    """The step of one list of tensors from tables that stay on the device (capturable): the block tables, the
    address table (``set_addresses``; a CUDA graph replays the addresses it captured) and the scalar table, whose
    first three rows each call writes on the device; ``constants`` are the last four rows (1 - beta1, beta2,
    1 - beta2, eps), written once."""

    def __init__(self, numels: tuple[int, ...], device: torch.device, constants: list[float]) -> None:
        self.blocks = BlockTables(numels, device)
        self.values = torch.empty(SCALAR_ROWS, len(numels), dtype=torch.float32, device=device)
        for row, value in enumerate(constants, start=3):
            self.values[row].fill_(value)  # a Python float rounded to fp32 as torch.tensor rounds it
        self._pointers: tuple[int, ...] = ()
        self._addresses: torch.Tensor | None = None

    @staticmethod
    def _pointers_of(arrays: list[list[torch.Tensor]]) -> tuple[int, ...]:
        return tuple(a.data_ptr() for tensors in arrays for a in tensors)

    def needs_addresses(self, arrays: list[list[torch.Tensor]]) -> bool:
        """Whether ``arrays`` are not (all) where the address table points."""
        return self._pointers_of(arrays) != self._pointers

    def set_addresses(self, arrays: list[list[torch.Tensor]]) -> None:
        """Point the address table at ``arrays`` (a copy from the host)."""
        self._addresses, self._pointers = address_table(arrays), self._pointers_of(arrays)

    def __call__(self, decay: torch.Tensor, step_size: torch.Tensor, bias_correction2_sqrt: torch.Tensor) -> None:
        """Launch on the arrays of ``set_addresses``: ``decay`` (0-dim), ``step_size`` and ``bias_correction2_sqrt``
        (one per tensor) on the device, in any float dtype (rounded to fp32 here)."""
        self.values[0].copy_(decay.expand(self.values.shape[1]))
        self.values[1].copy_(step_size)
        self.values[2].copy_(bias_correction2_sqrt)
        launch(self._addresses, self.values, self.blocks)


def ramped_adamw_(arrays: list[list[torch.Tensor]], scalars: list[list[float]], tables: BlockTables) -> None:
    """Launch the step. ``arrays``: per tensor [param, grad, exp_avg, exp_avg_sq, grad_accum, accum_count,
    update_period], all contiguous (fp32, fp32, ..., int32, int32) on one device; ``scalars``: per tensor the seven
    SCALAR_ROWS values."""
    n = len(arrays)
    values = _to_device([scalars[t][row] for row in range(SCALAR_ROWS) for t in range(n)], torch.float32,
                        arrays[0][0].device)
    launch(address_table(arrays), values, tables)
