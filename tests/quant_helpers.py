"""Shared helpers for the quantization tests: bitwise comparison and edge-case tensors."""
from __future__ import annotations

import math

import numpy as np
import torch

def nextafter32(x: float, toward: float) -> float:
    """The adjacent fp32 value (math.nextafter steps in float64, which fp32 would round away)."""
    return float(np.nextafter(np.float32(x), np.float32(toward)))


INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bit for bit (rtol=0, atol=0, signed zeros distinguished); NaNs compare equal to NaNs of any payload."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), f"NaN positions differ at {(nan_a != nan_b).nonzero()[:5].tolist()}"
    ia = a.view(INT_VIEW[a.dtype])[~nan_a]
    ib = b.view(INT_VIEW[b.dtype])[~nan_b]
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} elements differ; first: {a[~nan_a][bad[:5, 0]].tolist()} vs " \
                             f"{b[~nan_b][bad[:5, 0]].tolist()}"


def _block(values: list[float], fill: float = 0.0) -> list[float]:
    return (list(values) + [fill] * 32)[:32]


def edge_rows(max_value: float) -> list[list[float]]:
    """Rows of 32 values, each row one 1x32 block, covering the numerically delicate cases."""
    tiny = math.ldexp(1.0, -149)
    rows = []
    midpoints = []
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0] if max_value == 6.0 else [0.0, 0.25, 0.5, 1, 2, 4, 8, 16]
    for lo, hi in zip(grid, grid[1:]):
        midpoints += [(lo + hi) / 2, -(lo + hi) / 2]
    for k in (0, 3, -5, 40, -60, 100, -120, -126):
        rows.append(_block([math.ldexp(v, k) for v in [max_value] + midpoints]))  # ties at every grid midpoint
    rows.append(_block([]))  # zero block
    rows.append(_block([-0.0] * 32, fill=-0.0))  # negative zeros
    for amax in (4.0, 8.0, 6.0, 1.0, 2.0 ** 20, 2.0 ** -20):
        for bump in (0.0, -1.0, 1.0):  # at, just below, just above the power of two / max value
            a = nextafter32(amax, 0.0) if bump < 0 else nextafter32(amax, math.inf) if bump > 0 else amax
            rows.append(_block([a, -a / 3, a / 7, a * 0.51, -a * 0.74, a / 1.5]))
    rows.append(_block([tiny, -tiny * 3, tiny * 100]))  # subnormal amax: scale clamps at -127
    rows.append(_block([1e-38, -3e-39, 5e-40]))
    rows.append(_block([3e38, -1e38, 1.0, -1e-30]))  # huge amax
    rows.append(_block([float("nan"), 1.0, 2.0]))
    rows.append(_block([float("inf"), 1.0]))
    rows.append(_block([-float("inf"), 0.5]))
    return rows


def edge_matrix(max_value: float, dtype: torch.dtype, cols: int = 45, seed: int = 0) -> torch.Tensor:
    """Edge-case rows (first 32 columns) followed by heavy-tailed random columns, so cols=45 leaves a 13-wide tail."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor(edge_rows(max_value), dtype=torch.float32)
    rand = torch.randn(edges.shape[0], cols - 32, generator=g) * torch.exp(3 * torch.randn(edges.shape[0], cols - 32,
                                                                                          generator=g))
    return torch.cat([edges, rand], dim=1).to(dtype)
