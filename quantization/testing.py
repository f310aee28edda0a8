"""Tools for checking a quantizer implementation (a new backend, a changed kernel) against the reference.

``assert_bitwise_equal`` compares two results bit for bit; ``edge_matrix`` builds inputs whose blocks hit the
numerically delicate cases of a format (ties at every grid midpoint across scales, block maxima at and next to a
power of two, zeros and signed zeros, subnormals, huge values, NaN and Inf), followed by a tail narrower than a block;
``STOCHASTIC_BLOCK`` and ``max_bias_in_sigmas`` check that stochastic rounding is unbiased. The test suite and
``scripts/check_kernels_gpu.py`` use them.
"""
from __future__ import annotations

import math

import torch

from .formats import BLOCK_SIZE, ElementFormat, get_format

_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}

# One 1x32 block with amax 6, so its E2M1 scale is 2^0: values at assorted positions between grid points, on them,
# and exactly at 0.
STOCHASTIC_BLOCK = torch.tensor([6.0, 0.1, 0.3, 0.55, 0.8, 1.1, 1.3, 1.49, 1.6, 1.9, 2.2, 2.6, 2.9, 3.3, 3.8, 4.4,
                                 5.1, 5.9, -0.2, -0.7, -1.2, -1.7, -2.4, -3.6, -4.2, -5.5, 0.01, -0.04, 2.99, 4.01,
                                 0.26, 0.0])


def _format(fmt: str | ElementFormat) -> ElementFormat:
    return get_format(fmt) if isinstance(fmt, str) else fmt


def nextafter32(x: float, toward: float) -> float:
    """The float32 value adjacent to float32(x) in the direction of ``toward`` (``math.nextafter`` steps in
    float64, which float32 would round away)."""
    return torch.nextafter(torch.tensor(x, dtype=torch.float32), torch.tensor(toward, dtype=torch.float32)).item()


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise AssertionError unless a and b have the same shape, dtype and bits (signed zeros distinguished); a NaN
    equals a NaN of any payload."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), f"NaN positions differ at {(nan_a != nan_b).nonzero()[:5].tolist()}"
    ia = a.view(_INT_VIEW[a.dtype])[~nan_a]
    ib = b.view(_INT_VIEW[b.dtype])[~nan_b]
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} elements differ; first: {a[~nan_a][bad[:5, 0]].tolist()} vs " \
                             f"{b[~nan_b][bad[:5, 0]].tolist()}"


def _block(values: list[float], fill: float = 0.0) -> list[float]:
    return (list(values) + [fill] * BLOCK_SIZE)[:BLOCK_SIZE]


def edge_rows(fmt: str | ElementFormat) -> list[list[float]]:
    """Rows of 32 values, each one 1x32 block, covering the numerically delicate cases of ``fmt``."""
    f = _format(fmt)
    grid = f.grid()
    tiny = math.ldexp(1.0, -149)
    midpoints = []
    for lo, hi in zip(grid, grid[1:]):
        midpoints += [(lo + hi) / 2, -(lo + hi) / 2]
    rows = []
    for k in (0, 3, -5, 40, -60, 100, -120, -126):
        rows.append(_block([math.ldexp(v, k) for v in [f.max_value] + midpoints]))  # ties at every grid midpoint
    rows.append(_block([]))  # zero block
    rows.append(_block([-0.0] * BLOCK_SIZE, fill=-0.0))  # negative zeros
    for amax in (4.0, 8.0, 6.0, 1.0, 2.0 ** 20, 2.0 ** -20):
        for bump in (0.0, -1.0, 1.0):  # at, just below, just above the power of two / max value
            a = nextafter32(amax, 0.0) if bump < 0 else nextafter32(amax, math.inf) if bump > 0 else amax
            rows.append(_block([a, -a / 3, a / 7, a * 0.51, -a * 0.74, a / 1.5]))
    rows.append(_block([tiny, -tiny * 3, tiny * 100]))  # subnormal amax: the scale clamps at -127
    rows.append(_block([1e-38, -3e-39, 5e-40]))
    rows.append(_block([3e38, -1e38, 1.0, -1e-30]))  # huge amax
    rows.append(_block([float("nan"), 1.0, 2.0]))
    rows.append(_block([float("inf"), 1.0]))
    rows.append(_block([-float("inf"), 0.5]))
    return rows


def edge_matrix(fmt: str | ElementFormat, dtype: torch.dtype, cols: int = 45, seed: int = 0) -> torch.Tensor:
    """The ``edge_rows`` of ``fmt`` (first 32 columns) followed by heavy-tailed random columns from ``seed``, as a CPU
    tensor of ``dtype``; the default cols=45 leaves a 13-wide tail block."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor(edge_rows(fmt), dtype=torch.float32)
    shape = (edges.shape[0], cols - BLOCK_SIZE)
    rand = torch.randn(shape, generator=g) * torch.exp(3 * torch.randn(shape, generator=g))
    return torch.cat([edges, rand], dim=1).to(dtype)


def grid_neighbours(v: torch.Tensor, fmt: str | ElementFormat = "e2m1") -> tuple[torch.Tensor, torch.Tensor]:
    """The grid values of ``fmt`` next to each element of v (in scaled units, scale 2^0): (toward zero, away from
    zero), signed like v; both equal v where v is on the grid."""
    grid = torch.tensor(_format(fmt).grid(), dtype=torch.float32)
    a = v.abs()
    lower = grid[torch.searchsorted(grid, a, right=True) - 1]
    upper = grid[torch.clamp(torch.searchsorted(grid, a), max=len(grid) - 1)]
    return lower * v.sign(), upper * v.sign()


def max_bias_in_sigmas(draws: torch.Tensor, block: torch.Tensor, fmt: str | ElementFormat = "e2m1") -> float:
    """How far the mean of ``draws`` (shape (n, 32): n independent stochastic roundings of ``block``) lies from
    ``block``, in standard errors of an unbiased two-point rounding, maximised over the 32 elements (values on the
    grid count with a floor of 1e-6 on the error)."""
    lower, upper = grid_neighbours(block, fmt)
    p = ((block.abs() - lower.abs()) / (upper.abs() - lower.abs()).clamp(min=1e-12)).clamp(0, 1)
    sigma = ((upper - lower).abs() * (p * (1 - p)).sqrt() / draws.shape[0] ** 0.5).clamp(min=1e-6)
    return ((draws.double().mean(0).float() - block).abs() / sigma).max().item()
