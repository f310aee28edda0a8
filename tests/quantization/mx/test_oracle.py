"""The PyTorch reference quantizer against an independent NumPy oracle, bit for bit.

The reference is written for CPU speed (bit tricks, in-place arithmetic, a rewritten hash); the oracle here follows
the specification in docs/numerics.md literally: exact float64 arithmetic on the fp32 inputs (frexp for exponents,
floor and comparisons for rounding, a table lookup for codes), the multiply-fold hash on uint64 for the stochastic
draws, rceil's saturation as "no grid value whose scaled value overflows the dtype" and Q-EMA ignoring the EMA of an
all-zero block.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from quantization import FORMATS
from quantization.mx import reference
from quantization.mx.testing import (assert_bitwise_equal, edge_matrix, midpoint_blocks, overflow_blocks,
                                     zero_blocks_with_ema)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns on the NaN blocks

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ROUNDINGS = ("nearest", "even", "stochastic", "ema")


def _fold(h: np.ndarray, factor: int) -> np.ndarray:
    """Low word xor high word of the 64-bit product of uint32 words (exact in uint64)."""
    product = h.astype(np.uint64) * np.uint64(factor)
    return ((product & np.uint64(0xFFFFFFFF)) ^ (product >> np.uint64(32))).astype(np.uint32)


def oracle_uniform(index: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    index = index.astype(np.uint32)
    with np.errstate(over="ignore"):
        h = ((index >> 1) ^ np.uint32(seed[0] % 2**32)) * np.uint32(0x9E3779B1) + np.uint32(seed[1] % 2**32)
    h = _fold(_fold(h, 0x85EBCA6B), 0xC2B2AE35)
    return np.where(index % 2 == 1, h >> 16, h % 65536).astype(np.float64) * 2.0**-16


def _exponent(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) for a > 0 (exact, via frexp); -inf for 0."""
    mantissa, exponent = np.frexp(a)
    return np.where(a > 0, exponent - 1.0, -np.inf)


def oracle_round(v: np.ndarray, fmt, rounding: str, limit, uniform=None, ema_scaled=None) -> np.ndarray:
    """Signed grid values (float64) of scaled fp32 values v, magnitudes at most ``limit``: the specification's
    rounding, in exact float64."""
    av = np.abs(v.astype(np.float64))
    binade = np.clip(_exponent(av), fmt.emin, fmt.emax)
    step = 2.0 ** (binade - fmt.man_bits)
    a = av / step
    low = np.floor(a)
    frac = a - low
    if rounding == "nearest":
        up = frac >= 0.5
    elif rounding == "even":
        up = (frac > 0.5) | ((frac == 0.5) & (low % 2 == 1))
    elif rounding == "stochastic":
        up = uniform < frac
    else:
        sign = np.where(np.signbit(v), -1.0, 1.0)
        up = sign * ema_scaled.astype(np.float64) >= (low + 0.5) * step
    magnitude = np.minimum((low + up) * step, limit)
    return np.where(np.signbit(v), -magnitude, magnitude)


def oracle_quantize(x: np.ndarray, fmt, layout: str, scale_rule: str, rounding: str, dtype_max: float, ema=None,
                    seed=(0, 0)):
    """(dequantized fp32, codes uint8, biased scales uint8) of a 2-D fp32 array holding values of a dtype whose
    largest finite value is ``dtype_max``, blocks of 32 along rows (1x32) or columns (32x1)."""
    rows, cols = x.shape
    uniform = oracle_uniform(np.arange(rows * cols).reshape(rows, cols), seed)
    if layout == "32x1":  # quantize the transpose along its rows; the draws stay at their elements
        deq, codes, scales = oracle_quantize_rows(x.T, fmt, scale_rule, rounding, dtype_max,
                                                  None if ema is None else ema.T, uniform.T)
        return deq.T, codes.T, scales.T
    return oracle_quantize_rows(x, fmt, scale_rule, rounding, dtype_max, ema, uniform)


def oracle_quantize_rows(x, fmt, scale_rule, rounding, dtype_max, ema, uniform):
    rows, cols = x.shape
    blocks = -(-cols // 32)
    deq = np.zeros((rows, cols), np.float32)
    codes = np.zeros((rows, cols), np.uint8)
    scales = np.zeros((rows, blocks), np.uint8)
    grid = fmt.grid()
    for r, b in itertools.product(range(rows), range(blocks)):
        cs = slice(32 * b, min(32 * b + 32, cols))
        block = x[r, cs]
        if not np.isfinite(block).all():
            deq[r, cs], scales[r, b] = np.nan, 255
            continue
        amax = float(np.abs(block.astype(np.float64)).max())
        if amax == 0:
            s = -math.inf
        elif scale_rule == "rceil":  # the smallest s with amax <= max_value * 2^s
            s = math.ceil(math.log2(amax / fmt.max_value))
            while amax > fmt.max_value * 2.0**s:
                s += 1
            while amax <= fmt.max_value * 2.0 ** (s - 1):
                s -= 1
        else:
            s = _exponent(np.float64(amax)) - fmt.emax
        s = int(np.clip(s, -127, 127))
        v = block * np.float32(2.0**-s)  # fp32 arithmetic, as the specification scales
        # An all-zero block stays zero: its EMA is ignored.
        ema_scaled = None if ema is None else ema[r, cs] * np.float32(2.0**-s) * (amax > 0)
        limit = max(g for g in grid if g * 2.0**s <= dtype_max)  # no value may overflow the dtype
        g = oracle_round(v, fmt, rounding, limit, uniform[r, cs], ema_scaled)
        deq[r, cs] = (g * 2.0**s).astype(np.float32)
        codes[r, cs] = [grid.index(abs(value)) | (int(np.signbit(value)) << (fmt.bits - 1)) for value in g]
        scales[r, b] = s + 127
    return deq, codes, scales


def _tie_neighbours(fmt, dtype: torch.dtype) -> torch.Tensor:
    """Blocks of max_value followed by every grid point and midpoint and their one-ulp neighbours (random signs), at
    assorted scales, including ones that push the small values into fp32 subnormals."""
    grid = fmt.grid()
    points = grid + [(a + b) / 2 for a, b in zip(grid, grid[1:])] + [grid[-1] * 1.3, 2.0 ** fmt.emin / 3]
    values = []
    for p in np.float32(points):
        values += [p, np.nextafter(p, np.float32(np.inf)), np.nextafter(p, np.float32(0))]
    values = np.array(values, np.float32)
    g = np.random.default_rng(0)
    rows = []
    for k in (0, 9, -13, 100, -120, -126, -135):
        for start in range(0, len(values), 31):
            chunk = values[start:start + 31] * np.where(g.random(len(values[start:start + 31])) < 0.5, -1, 1)
            block = np.concatenate([[fmt.max_value], chunk, np.zeros(31 - len(chunk))]) * 2.0**k
            rows.append(block.astype(np.float32))
    return torch.tensor(np.array(rows)).to(dtype)


def _non_finite(dtype: torch.dtype) -> torch.Tensor:
    """Random values with NaNs of either sign and assorted payloads and +-Inf, 37 x 45: both layouts have tails, and
    the tail columns of 32x1 blocks are where the CPU's vector loops end in scalar code."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 45, generator=g).to(dtype)
    bits = x.view(torch.int32 if dtype == torch.float32 else torch.int16)
    nans = [-1, 0x7F800001, -(1 << 22)] if dtype == torch.float32 else [-1, 0x7C01 if dtype == torch.float16 else
                                                                         0x7F81, -(1 << 6)]
    bits[0, :] = bits[:, 0] = nans[0]  # all-ones: a negative NaN with every payload bit, in every block of a layout
    bits[5, 3], bits[20, 44], bits[36, 20] = nans
    x[10, 35], x[36, 40] = float("inf"), -float("inf")
    return x


def _inputs(fmt, dtype) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(x, EMA for rounding="ema" or None for one near x) pairs, as 1x32 blocks: edge cases with a tail, ties and
    their neighbours, heavy-tailed random values, NaN and Inf, the top of the dtype's range, all-zero blocks with an
    EMA."""
    g = torch.Generator().manual_seed(1)
    heavy = torch.randn(70, 45, generator=g) * torch.exp(3 * torch.randn(70, 45, generator=g))
    plain = [edge_matrix(fmt, dtype), _tie_neighbours(fmt, dtype), heavy.to(dtype), _non_finite(dtype),
             midpoint_blocks(dtype)[0], overflow_blocks(dtype)[0]]
    return [(x, None) for x in plain] + [zero_blocks_with_ema(dtype)]


@pytest.mark.parametrize("fmt", ["e2m1", "e3m0", "e1m2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_matches_oracle(fmt, dtype):
    element = FORMATS[fmt]
    for (x, ema), layout, scale_rule, rounding in itertools.product(_inputs(element, dtype), ("1x32", "32x1"),
                                                                   ("rceil", "floor"), ROUNDINGS):
        x = x.t().contiguous() if layout == "32x1" else x
        if rounding != "ema":
            ema = None
        elif ema is None:
            g = torch.Generator().manual_seed(2)
            ema = x.float().nan_to_num(0.0, 0.0, 0.0) * (1 + 0.5 * torch.randn(x.shape, generator=g))
        else:
            ema = ema.t().contiguous() if layout == "32x1" else ema
        seed = (2**31 - 5, 0x5BD1E995)
        deq, codes, scales = reference.quantize_unpacked(x, layout, element, scale_rule, rounding, ema2d=ema,
                                                         seed=torch.tensor(seed), want_codes=True)
        want = oracle_quantize(x.float().numpy(), element, layout, scale_rule, rounding, torch.finfo(dtype).max,
                               None if ema is None else ema.numpy(), seed)
        where = (fmt, dtype, layout, scale_rule, rounding)
        # Bit for bit, NaN included: a block that is not finite is all the quiet NaN 0x7FC00000.
        assert torch.equal(deq.view(torch.int32), torch.from_numpy(want[0]).view(torch.int32)), where
        assert torch.equal(codes, torch.from_numpy(want[1])), where
        assert torch.equal(scales, torch.from_numpy(want[2])), where
        assert torch.isfinite(deq.to(dtype)[~deq.isnan()]).all(), where  # saturation: nothing overflows the dtype
        if element.bits == 4:
            packed = reference.pack_nibbles(codes)
            dequantized = reference.dequantize_2d(packed, scales, layout, element, x.shape[1], torch.float32)
            assert torch.equal(dequantized.view(torch.int32), deq.view(torch.int32)), where


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_round_scaled_matches_oracle_with_limits_inf_and_nan(rounding):
    element = FORMATS["e2m1"]
    v = torch.cat([_tie_neighbours(element, torch.float32).view(-1) * 2.0**-k for k in (0, 5)])
    v = torch.cat([v, torch.tensor([float("inf"), -float("inf"), float("nan"), 1e30, -7.9, 3.6, -3.4])])
    uniform = reference.uniform_from_index(torch.arange(v.numel()), torch.tensor([3, 4]))
    ema = v.nan_to_num(0.0, 0.0, 0.0).flip(0)
    for limit in (element.max_value, element.saturation_value):
        got = reference.round_scaled(v, element, rounding, limit=torch.tensor(limit), uniform=uniform,
                                     ema_scaled=ema)
        want = oracle_round(v.numpy(), element, rounding, limit, uniform.double().numpy(), ema.numpy())
        assert_bitwise_equal(got, torch.from_numpy(want).float())


def test_uniform_matches_the_multiply_fold_hash():
    index = torch.cat([torch.arange(5000), torch.tensor([2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 7])])
    for seed in [(0, 0), (1, 1), (2**31 - 2, 11), (0xFFFFFFFF, 0x80000000)]:
        want = torch.from_numpy(oracle_uniform(index.numpy(), seed)).float()
        words = torch.tensor(seed)
        assert torch.equal(reference.uniform_from_index(index, words), want), seed
        assert torch.equal(reference.uniform_from_index(index[:5000].int(), words), want[:5000]), seed


def test_nearest_rounding_near_every_tie():
    """round_steps' floor(a + (1/2)^-) against floor(a) + (frac >= 1/2), for every fp32 within 4096 ulps of each tie
    n + 1/2 (n < 128), of 1/2 and of 1 (an exhaustive check over every finite fp32 a >= 0 passes too)."""
    centres = torch.tensor([n + 0.5 for n in range(128)] + [1.0])
    bits = centres.view(torch.int32)[:, None] + torch.arange(-4096, 4097, dtype=torch.int32)
    a = bits.view(torch.float32).flatten()
    low = torch.floor(a)
    want = low + ((a - low) >= 0.5).float()
    assert torch.equal(reference.round_steps(a.clone(), torch.ones_like(a), "nearest"), want)
