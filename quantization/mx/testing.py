"""Tools for checking a quantizer implementation (a new backend, a changed kernel) against the reference.

``assert_bitwise_equal`` compares two results bit for bit; ``edge_matrix`` builds inputs whose blocks hit the
numerically delicate cases of a format (ties at every grid midpoint across scales, block maxima at and next to a
power of two, zeros and signed zeros, subnormals, huge values, NaN and Inf), followed by a tail narrower than a block;
``STOCHASTIC_BLOCK`` and ``max_bias_in_sigmas`` check that stochastic rounding is unbiased. ``midpoint_blocks``,
``overflow_blocks``, ``zero_blocks_with_ema`` and ``zero_draw_case`` hold the rounding boundaries (every grid midpoint
and its one-ulp neighbours, rceil's saturation threshold, Q-EMA on all-zero blocks, stochastic rounding of fp32
subnormals), and ``check_quantize``, ``check_both_layouts``, ``check_requantize`` and ``check_zero_draws`` compare a
kernel on any device with the CPU reference. The test suite and
``scripts/check_kernels_gpu.py`` use them.
"""
from __future__ import annotations

import math

import torch

from .formats import BLOCK_SIZE, FORMATS, LAYOUTS, ElementFormat, get_format
from .ops import dequantize, quantize_2d, quantize_packed
from .reference import overflow_exponent, uniform_from_index

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


# Block scales 2^k of the midpoint cases: every case value (and its one-ulp neighbours) representable in the dtype;
# k = -127 puts the small midpoints among the fp32/bf16 subnormals, k = -20 among the fp16 ones.
MIDPOINT_SCALES = {torch.float32: (0, 9, -13, 120, -127), torch.bfloat16: (0, 9, -13, 120, -127),
                   torch.float16: (0, 5, -9, -20)}
SEEDS = ((5, 2**31 - 2), (1, 1))  # for the stochastic rounding of the boundary checks: 1x32, 32x1


def _neighbours(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjacent values below and above positive ``values`` in their own dtype (one step of the bit pattern)."""
    bits = values.view(_INT_VIEW[values.dtype])
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


def overflow_blocks(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Blocks at the top of ``dtype``'s range, where rceil's scale 2^s puts 2^emax at the dtype's overflow
    (reference.magnitude_limit), for every element format; one per row.

    With S = saturation_value * 2^s and T = (saturation_value + 2^emax) / 2 * 2^s (from T up, nearest rounding
    would give 2^emax * 2^s = Inf; 1.75 * 2^127 for E2M1 in fp32): a block of amax the dtype's largest finite value
    holding it, T + ulp, T, T - ulp, S and the grid value 2^s, and a block of amax T + ulp holding T + ulp, T,
    T - ulp and S, each value also negated. Returns (blocks of ``dtype``, what rceil with nearest rounding gives in
    fp32: +-S for all but +-2^s; the format of each block).
    """
    blocks, expected, fmts = [], [], []
    for name, fmt in FORMATS.items():
        s = overflow_exponent(fmt, dtype)
        saturated, grid_value = fmt.saturation_value * 2.0**s, 2.0**s
        tie = torch.tensor([(fmt.saturation_value + 2.0**fmt.emax) / 2 * 2.0**s], dtype=dtype)
        below, above = _neighbours(tie)
        top = torch.tensor([torch.finfo(dtype).max], dtype=dtype)
        for values, want in ((torch.cat([top, above, tie, below, torch.tensor([saturated, grid_value], dtype=dtype)]),
                              torch.tensor([saturated] * 5 + [grid_value])),
                             (torch.cat([above, tie, below, torch.tensor([saturated], dtype=dtype)]),
                              torch.tensor([saturated] * 4))):
            blocks.append(_padded(torch.cat([values, -values])))
            expected.append(_padded(torch.cat([want, -want])))
            fmts.append(name)
    return torch.stack(blocks), torch.stack(expected), fmts


def zero_blocks_with_ema(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x of ``dtype``, fp32 EMA), 1x32 blocks: all +0, all -0, mixed signed zeros, and a nonzero block holding -0
    and +0 in columns 2 and 3 (their EMA -1 and 1 takes them off zero). The EMA of the all-zero blocks is positive,
    negative, tiny or huge, so Q-EMA rounding would take some off zero on the placeholder grid of scale 2^-127."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 32)
    x[1] = -0.0
    x[2, ::2] = -0.0
    x[3, :4] = torch.tensor([6.0, 1.2, -0.0, 0.0])
    ema = torch.randn(4, 32, generator=g) * torch.tensor([1e-30, 1.0, 1e30, 1.0])[torch.arange(32) % 4]
    ema[0, :8] = torch.tensor([2.0**-149, 2.0**-129, 2.0**-128, 1.0, 3e38, -1.0, 0.0, -0.0])
    ema[3, :4] = torch.tensor([6.0, 1.3, -1.0, 1.0])
    return x.to(dtype), ema


def _seed_with_zero_draws(k0: int, where: torch.Tensor) -> tuple[int, int]:
    """The first seed words (k0, k1) whose stochastic draw is exactly 0 at one flat index of ``where`` at least."""
    for k1 in range(1 << 20):
        if (uniform_from_index(where, torch.tensor([k0, k1])) == 0).any():
            return k0, k1
    raise AssertionError("no seed found")


def zero_draw_case(dtype: torch.dtype) -> tuple[torch.Tensor, tuple[tuple[int, int], ...]]:
    """Stochastic rounding where the exact result hangs on fp32 subnormals: (x, seed words for the 1x32 and 32x1
    layouts). x is 32 x 32, 6 on the diagonal (each block's amax, scale 2^0) and elsewhere +-2^-133 .. +-2^-127,
    whose E2M1 step multiples a = 2|x| are fp32 subnormals: each rounds up to +-0.5 exactly where its draw is 0
    (then u = 0 < frac), which each seed makes happen somewhere off the diagonal. A kernel that flushed subnormals to
    zero (FTZ arithmetic) would round those down. fp32 and bf16 only: fp16 holds no such tiny value."""
    tiny = torch.tensor([2.0**-133, 3 * 2.0**-133, 2.0**-130, 2.0**-127]).repeat(256)
    x = (tiny * torch.tensor([1.0, -1.0]).repeat(512)).reshape(32, 32)
    x.fill_diagonal_(6.0)
    off_diagonal = (~torch.eye(32, dtype=torch.bool)).flatten().nonzero().flatten()
    return x.to(dtype), tuple(_seed_with_zero_draws(k0, off_diagonal) for k0 in (7, 8))


def check_zero_draws(x: torch.Tensor, seeds: tuple[tuple[int, int], ...], *, device: str = "cpu",
                     launch: dict | None = None) -> None:
    """``zero_draw_case``'s x through the plain quantizer in both layouts and the both-layouts kernel on ``device``,
    e2m1 stochastic, against the CPU reference bit for bit; the reference must round the zero draws up."""
    from . import kernels

    wants = []
    for layout, seed in zip(LAYOUTS, seeds):
        want = quantize_2d(x, layout, "e2m1", "rceil", "stochastic", seed=torch.tensor(seed), backend="torch")[0]
        got = quantize_2d(x.to(device), layout, "e2m1", "rceil", "stochastic", seed=torch.tensor(seed, device=device),
                          backend="triton")[0]
        assert_bitwise_equal(got.cpu(), want)
        assert (want.abs() == 0.5).any(), "no subnormal rounded up: the case does not test the rounding"
        wants.append(want)
    got = kernels.quantize_both_layouts_2d(x.to(device), get_format("e2m1"), "rceil", "stochastic",
                                           seeds=tuple(torch.tensor(seed, device=device) for seed in seeds),
                                           launch=launch)
    for values, want in zip(got, wants):
        assert_bitwise_equal(values.cpu(), want)


def as_layout(blocks: torch.Tensor, layout: str) -> torch.Tensor:
    """(n, 32) blocks as the 1x32 blocks of a (n, 32) tensor or the 32x1 blocks of a (32, n) one (and back)."""
    return blocks.t().contiguous() if layout == "32x1" else blocks


def both_ways(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 32) ``blocks``, n <= 32 and even, laid out for the both-layouts kernel in one band of 32 rows: as 1x32
    blocks in rows 0..n-1 of columns 0..31 and as 32x1 blocks in columns 32..32+n-1 (an even column count, so the
    one-pass pair kernel runs); zeros elsewhere."""
    n = blocks.shape[0]
    x = torch.zeros(32, 32 + n, dtype=blocks.dtype)
    x[:n, :32] = blocks
    x[:, 32:] = blocks.t()
    return x


def requantize_input(blocks: torch.Tensor) -> torch.Tensor:
    """The values of (n, 32) ``blocks`` that a 1x32 e1m2 packing holds exactly (fp32-normal, at most 3 significant
    bits; others zeroed), as a (32, 32 n) tensor whose column 32 j holds block j: each 1x32 block has one nonzero,
    and the 32x1 blocks of column 32 j are the given ones, the requantize kernel's input after the packing."""
    bits = blocks.float().abs().view(torch.int32)
    held = ((bits & 0x1FFFFF) == 0) & (bits >= 1 << 23)
    x = torch.zeros(32, 32 * blocks.shape[0], dtype=blocks.dtype)
    x[:, ::32] = torch.where(held, blocks, torch.zeros_like(blocks)).t()
    return x


def check_quantize(x: torch.Tensor, layout: str, fmt: str, rule: str, rounding: str, *,
                   ema: torch.Tensor | None = None, device: str = "cpu") -> torch.Tensor:
    """The quantizing kernel on ``device`` against the CPU reference: values, packed codes and scales bit for bit.
    Returns the reference values."""
    seed = torch.tensor(SEEDS[LAYOUTS.index(layout)])
    ref = quantize_2d(x, layout, fmt, rule, rounding, ema2d=ema, backend="torch", want_packed=True, seed=seed)
    ker = quantize_2d(x.to(device), layout, fmt, rule, rounding, ema2d=None if ema is None else ema.to(device),
                      backend="triton", want_packed=True, seed=seed.to(device))
    assert_bitwise_equal(ker[0].cpu(), ref[0])
    assert torch.equal(ker[1].cpu(), ref[1]) and torch.equal(ker[2].cpu(), ref[2]), (layout, fmt, rule, rounding)
    return ref[0]


def check_both_layouts(x: torch.Tensor, fmt: str, rule: str, rounding: str, *, device: str = "cpu",
                       launch: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The both-layouts kernel on ``device`` against the two CPU reference quantizers, bit for bit. Returns the
    reference values (1x32, 32x1)."""
    from . import kernels  # Triton only when a kernel is checked

    seeds = tuple(torch.tensor(seed, device=device) for seed in SEEDS)
    got = kernels.quantize_both_layouts_2d(x.to(device), get_format(fmt), rule, rounding, seeds=seeds, launch=launch)
    wants = tuple(quantize_2d(x, layout, fmt, rule, rounding, seed=seed, backend="torch")[0]
                  for layout, seed in zip(LAYOUTS, SEEDS))
    for values, want in zip(got, wants):
        assert_bitwise_equal(values.cpu(), want)
    return wants


def check_requantize(x: torch.Tensor, fmt: str, rule: str, rounding: str, *, device: str = "cpu",
                     launch: dict | None = None) -> torch.Tensor:
    """The requantize kernel on ``device``, fed x packed in 1x32 e1m2 blocks (x from ``requantize_input``: the
    packing keeps it), against the CPU reference's 32x1 quantization of x, bit for bit. Returns the reference
    values."""
    from . import kernels

    mx = quantize_packed(x, "1x32", "e1m2", "rceil", "nearest", backend="torch")
    assert_bitwise_equal(dequantize(mx), x)
    got = kernels.requantize_2d(mx.packed.to(device), mx.scales.to(device), get_format("e1m2"), x.shape[1], x.dtype,
                                get_format(fmt), rule, rounding, seed=torch.tensor(SEEDS[1], device=device),
                                launch=launch)
    want = quantize_2d(x, "32x1", fmt, rule, rounding, seed=SEEDS[1], backend="torch")[0]
    assert_bitwise_equal(got.cpu(), want)
    return want
