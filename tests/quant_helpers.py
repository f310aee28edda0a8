"""Shared helpers for the quantization tests (and scripts/check_kernels_gpu.py): bitwise comparison and edge-case
tensors."""
from __future__ import annotations

import math

import numpy as np
import torch

from quantization import FORMATS


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


# Block scales 2^k of the midpoint cases: every case value (and its one-ulp neighbours) representable in the dtype;
# k = -127 puts the small midpoints among the fp32/bf16 subnormals, k = -20 among the fp16 ones.
MIDPOINT_SCALES = {torch.float32: (0, 9, -13, 120, -127), torch.bfloat16: (0, 9, -13, 120, -127),
                   torch.float16: (0, 5, -9, -20)}


def _neighbours(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjacent values below and above positive ``values`` in their own dtype (one step of the bit pattern)."""
    bits = values.view(INT_VIEW[values.dtype])
    return (bits - 1).view(values.dtype), (bits + 1).view(values.dtype)


def _padded(values: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(values, (0, 32 - values.numel()))


def midpoint_blocks(dtype: torch.dtype, *, neighbours: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Nearest-rounding cases at every grid midpoint of every element format, as blocks of 32 (one per row).

    For each format and block scale 2^k of MIDPOINT_SCALES[dtype], a positive and a negative block: the amax
    max_value * 2^k (scale exponent k under both scale rules), then each midpoint times 2^k preceded and followed by
    its neighbours one ulp of ``dtype`` below and above (only the midpoints without ``neighbours``), zeros after.
    Returns (blocks of ``dtype``, what nearest rounding gives in fp32: the lower grid value, the upper one (ties away
    from zero), the upper one; the format of each block).
    """
    blocks, expected, fmts = [], [], []
    for name, fmt in FORMATS.items():
        grid = torch.tensor(fmt.grid())
        lower, upper = grid[:-1], grid[1:]
        for k in MIDPOINT_SCALES[dtype]:
            ties = ((lower + upper) / 2 * 2.0**k).to(dtype)
            assert torch.equal(ties.float(), (lower + upper) / 2 * 2.0**k), (name, k, dtype)
            if neighbours:
                below, above = _neighbours(ties)
                cases = torch.stack([below, ties, above], dim=1).flatten()
                want = torch.stack([lower, upper, upper], dim=1).flatten()
            else:
                cases, want = ties, upper
            amax = torch.tensor([fmt.max_value * 2.0**k], dtype=dtype)
            block = _padded(torch.cat([amax, cases]))
            want = _padded(torch.cat([torch.tensor([fmt.max_value]), want]) * 2.0**k)
            blocks += [block, -block]
            expected += [want, -want]
            fmts += [name, name]
    return torch.stack(blocks), torch.stack(expected), fmts


def both_ways(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 32) ``blocks`` laid out for the both-layouts kernel: as 1x32 blocks in rows 0..n-1, columns 0..31, and as
    32x1 blocks in columns 32..32+n-1 of the 32 rows from the first multiple of 32 after them; zeros elsewhere (n
    even: an even column count, so the one-pass pair kernel runs)."""
    n = blocks.shape[0]
    top = -(-n // 32) * 32
    x = torch.zeros(top + 32, 32 + n, dtype=blocks.dtype)
    x[:n, :32] = blocks
    x[top:, 32:] = blocks.t()
    return x


def one_per_row_block(blocks: torch.Tensor) -> torch.Tensor:
    """(32, 32 n) tensor whose column 32 j holds block j and is zero elsewhere: each 1x32 block has one nonzero, so a
    1x32 quantization with a format of enough significand bits keeps every value, and the 32x1 blocks of column 32 j
    are the given blocks (the requantize kernel's midpoint input)."""
    n = blocks.shape[0]
    x = torch.zeros(32, 32 * n, dtype=blocks.dtype)
    x[:, ::32] = blocks.t()
    return x


def requantize_midpoints(dtype: torch.dtype) -> torch.Tensor:
    """The ties of ``midpoint_blocks(dtype, neighbours=False)`` that a 1x32 e1m2 packing holds exactly, laid out by
    ``one_per_row_block``: the normal ones with at most 3 significant bits. That is every tie a 4-bit MX tensor can
    hold (a one-ulp neighbour has more bits), all but e1m2's 2.25, 2.75 and 3.25 times 2^k, at k > -127 (at
    k = -127 the packing's scale clamps); the others are zeroed."""
    blocks, _, _ = midpoint_blocks(dtype, neighbours=False)
    bits = blocks.float().abs().view(torch.int32)
    held = ((bits & 0x1FFFFF) == 0) & (bits >= 1 << 23)
    return one_per_row_block(torch.where(held, blocks, torch.zeros_like(blocks)))
