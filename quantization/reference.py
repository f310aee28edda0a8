"""Pure-PyTorch MX block quantizers: the readable specification and the test oracle for the Triton kernels.

Every step is exact in fp32 (power-of-two scaling, floor, comparisons), so any implementation that follows the same
steps agrees bit for bit. Shapes: ``x2d`` is the 2-D view (rows, cols) of the input; ``1x32`` blocks run along a row,
``32x1`` blocks down a column. Tails shorter than 32 are blocks of their own.
"""
from __future__ import annotations

import math

import torch

from .formats import BLOCK_SIZE, SCALE_BIAS, SCALE_EXP_MAX, SCALE_EXP_MIN, SCALE_NAN, ElementFormat

_MASK32 = 0xFFFFFFFF
_MIX1 = 0x85EBCA6B
_MIX2 = 0xC2B2AE35


def pow2(k: torch.Tensor) -> torch.Tensor:
    """2**k as fp32, exactly, for integer k in [-127, 127] (built from the bit pattern; 2^-127 is subnormal)."""
    k = k.to(torch.int32)
    bits = torch.where(k >= -126, (k + 127) << 23, torch.full_like(k, 1 << 22))
    return bits.view(torch.float32)


def _exponent_field(x: torch.Tensor) -> torch.Tensor:
    """Unbiased binary exponent of |x| read from the fp32 bits (-127 for zero and subnormals)."""
    return ((x.view(torch.int32) >> 23) & 0xFF) - 127


def shared_exponent(amax: torch.Tensor, fmt: ElementFormat, scale_rule: str) -> torch.Tensor:
    """Block scale exponent s (int32) from the fp32 block amax, exactly, clamped to [-127, 127].

    rceil: s = ceil(log2(amax / max_value)), the smallest s with amax <= max_value * 2^s (nothing clips, but see
    ``magnitude_limit`` for the top of the dtype's range).
    floor: s = floor(log2(amax)) - emax (OCP); values up to just under 2 * 2^emax * 2^s then clip to max_value.
    """
    e = _exponent_field(amax) - fmt.emax
    if scale_rule == "rceil":
        e = e + ((amax.view(torch.int32) & 0x7FFFFF) > fmt.max_mantissa_field).to(torch.int32)
    return e.clamp(SCALE_EXP_MIN, SCALE_EXP_MAX)


def overflow_exponent(fmt: ElementFormat, dtype: torch.dtype) -> int:
    """The block scale exponent s at which 2^emax * 2^s overflows ``dtype``: 2^128 for fp32 and bf16, 2^16 for
    fp16 (rceil reaches it for an amax above max_value * 2^(s - 1), floor never does)."""
    return math.frexp(torch.finfo(dtype).max)[1] - fmt.emax


def magnitude_limit(s: torch.Tensor, fmt: ElementFormat, dtype: torch.dtype) -> torch.Tensor:
    """Largest grid magnitude (fp32) of blocks with scale exponent s whose values are stored as ``dtype``.

    max_value, except at the overflow exponent, where the grid values from 2^emax up are Inf in ``dtype``: there an
    element that would round up to 2^emax saturates to ``fmt.saturation_value``, the largest value of its block's
    grid that ``dtype`` holds, so that a finite input never becomes Inf. Only those elements change (with nearest
    rounding every one from (saturation_value + 2^emax) / 2 * 2^s up: 1.75 * 2^127 for E2M1 in fp32); the block's
    scale and other elements stay, so the codes still encode the values. E1M2's grid is coarse at that scale: it
    saturates to 1.5 * 2^127, while an amax of 1.75 * 2^127 (one scale lower) quantizes to itself.
    """
    return torch.where(s == overflow_exponent(fmt, dtype), fmt.saturation_value, fmt.max_value)


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2^32 for h in [0, 2^32) held in int64, without int64 overflow."""
    lo = h * (c & 0xFFFF)
    hi = ((h * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, _MIX1)
    h = h ^ (h >> 13)
    h = _mul32(h, _MIX2)
    return h ^ (h >> 16)


def uniform_from_index(index: torch.Tensor, seed: tuple[int, int]) -> torch.Tensor:
    """Counter-based uniform numbers in [0, 1) (24 bits) from a flat element index and a two-word seed.

    u = (fmix32(fmix32(index ^ k0) ^ k1) >> 8) * 2^-24, using 32-bit wrap-around arithmetic; the Triton kernels
    compute the same hash, so stochastic rounding is reproducible and identical on both backends.
    """
    h = (index.to(torch.int64) & _MASK32) ^ (seed[0] & _MASK32)
    h = _fmix32(_fmix32(h) ^ (seed[1] & _MASK32))
    return (h >> 8).to(torch.float32) * 2.0**-24


def round_scaled(
    v: torch.Tensor,
    fmt: ElementFormat,
    rounding: str,
    *,
    limit: torch.Tensor,
    uniform: torch.Tensor | None = None,
    ema_scaled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round scaled fp32 values v onto the format's grid; returns the signed grid value (clamped to +-limit).

    ``limit``: the block's largest magnitude, from ``magnitude_limit``. ``uniform``: draws in [0, 1) for stochastic
    rounding. ``ema_scaled``: the Q-EMA weight divided by the same block scale, for ``rounding="ema"`` (zero in an
    all-zero block, which then stays zero). The sign follows v's sign bit, so -0 stays -0 and +0 counts as positive.
    """
    negative = v.view(torch.int32) < 0
    sign = torch.where(negative, -1.0, 1.0)
    av = v.abs()
    binade = _exponent_field(av).clamp(fmt.emin, fmt.emax)
    step = pow2(binade - fmt.man_bits)
    a = av * pow2(fmt.man_bits - binade)  # |v| in units of the grid step: exact
    low = torch.floor(a)
    frac = a - low
    if rounding == "nearest":
        up = frac >= 0.5
    elif rounding == "even":
        low_is_odd = (low - 2.0 * torch.floor(low * 0.5)) == 1.0
        up = (frac > 0.5) | ((frac == 0.5) & low_is_odd)
    elif rounding == "stochastic":
        up = uniform < frac
    elif rounding == "ema":
        up = sign * ema_scaled >= (low + 0.5) * step
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    magnitude = torch.minimum((low + up.to(torch.float32)) * step, limit)
    return magnitude * sign


def _blocked(x2d: torch.Tensor, layout: str) -> torch.Tensor:
    """View a zero-padded copy of x2d as (..., 32) blocks: (rows, nblk, 32) for 1x32, (nblk, cols, 32) for 32x1."""
    rows, cols = x2d.shape
    if layout == "1x32":
        pad = -cols % BLOCK_SIZE
        return torch.nn.functional.pad(x2d, (0, pad)).view(rows, -1, BLOCK_SIZE)
    pad = -rows % BLOCK_SIZE
    return torch.nn.functional.pad(x2d, (0, 0, 0, pad)).view(-1, BLOCK_SIZE, cols).transpose(1, 2)


def _unblocked(blocks: torch.Tensor, layout: str, rows: int, cols: int) -> torch.Tensor:
    if layout == "1x32":
        return blocks.reshape(rows, -1)[:, :cols]
    return blocks.transpose(1, 2).reshape(-1, cols)[:rows]


def quantize_2d(
    x2d: torch.Tensor,
    fmt: ElementFormat,
    layout: str,
    scale_rule: str,
    rounding: str,
    *,
    ema2d: torch.Tensor | None = None,
    seed: tuple[int, int] = (0, 0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor. Returns (dequantized fp32, signed grid values fp32, biased E8M0 scales uint8).

    The scales tensor has shape (rows, ceil(cols/32)) for 1x32 and (ceil(rows/32), cols) for 32x1. A block holding
    NaN or Inf dequantizes to all NaN and gets the NaN scale 255. The values are for x2d's dtype: rceil saturates
    those that would overflow it (``magnitude_limit``).
    """
    rows, cols = x2d.shape
    xb = _blocked(x2d.float(), layout)
    finite = torch.isfinite(xb).all(dim=-1, keepdim=True)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    amax = torch.where(finite, amax, torch.zeros_like(amax))
    s = shared_exponent(amax, fmt, scale_rule)
    v = xb * pow2(-s)
    uniform = ema_scaled = None
    if rounding == "stochastic":
        index = torch.arange(rows * cols, device=x2d.device).view(rows, cols)
        uniform = _blocked(index, layout)
        uniform = uniform_from_index(uniform, seed)
    elif rounding == "ema":
        if ema2d is None:
            raise ValueError("rounding='ema' needs the EMA tensor (ema=...)")
        # An all-zero block has no grid of its own (its scale 2^-127 is a placeholder): it stays zero whatever the EMA.
        ema_scaled = torch.where(amax > 0, _blocked(ema2d.float(), layout) * pow2(-s), 0.0)
    limit = magnitude_limit(s, fmt, x2d.dtype)
    grid = round_scaled(v, fmt, rounding, limit=limit, uniform=uniform, ema_scaled=ema_scaled)
    deq = torch.where(finite, grid * pow2(s), torch.full_like(grid, float("nan")))
    grid = torch.where(finite, grid, torch.zeros_like(grid))
    scales = torch.where(finite, s + SCALE_BIAS, torch.full_like(s, SCALE_NAN)).squeeze(-1).to(torch.uint8)
    return _unblocked(deq, layout, rows, cols), _unblocked(grid, layout, rows, cols), scales


def encode(grid: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """4-bit codes (sign bit | exponent field | mantissa) of signed grid values, as uint8 in [0, 15]."""
    a = grid.abs()
    binade = _exponent_field(a).clamp(fmt.emin, fmt.emax)
    k = a * pow2(fmt.man_bits - binade)  # an integer: position inside the binade's grid
    code = (binade - fmt.emin) * (1 << fmt.man_bits) + k.to(torch.int32)
    sign = (grid.view(torch.int32) < 0).to(torch.int32) << (fmt.bits - 1)
    return (code | sign).to(torch.uint8)


def decode(codes: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Signed grid values (fp32) of 4-bit codes; inverse of ``encode``."""
    c = codes.to(torch.int32)
    magnitude = c & fmt.max_code
    field = magnitude >> fmt.man_bits
    mant = magnitude & ((1 << fmt.man_bits) - 1)
    normal = field > 0
    significand = torch.where(normal, mant + (1 << fmt.man_bits), mant).to(torch.float32)
    exponent = torch.where(normal, field - fmt.bias, torch.full_like(field, fmt.emin)) - fmt.man_bits
    sign = torch.where((c >> (fmt.bits - 1)) != 0, -1.0, 1.0)
    return significand * pow2(exponent) * sign


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dim (element 2j in the low nibble); odd lengths pad with 0."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: (..., ceil(cols/2)) bytes -> (..., cols) codes."""
    codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)
    return codes[..., :cols]


def expand_scales(scales: torch.Tensor, layout: str, rows: int, cols: int) -> torch.Tensor:
    """Per-element int32 scale exponents (biased E8M0 -> s) and a per-element NaN-block mask."""
    s = scales.to(torch.int32)
    if layout == "1x32":
        s = s.repeat_interleave(BLOCK_SIZE, dim=1)[:, :cols]
    else:
        s = s.repeat_interleave(BLOCK_SIZE, dim=0)[:rows]
    return s


def dequantize_2d(packed: torch.Tensor, scales: torch.Tensor, fmt: ElementFormat, layout: str, rows: int,
                  cols: int) -> torch.Tensor:
    """fp32 values of packed codes and biased scales (NaN where the block's scale is the NaN marker)."""
    grid = decode(unpack_nibbles(packed, cols), fmt)
    biased = expand_scales(scales, layout, rows, cols)
    value = grid * pow2(biased.clamp(max=SCALE_EXP_MAX + SCALE_BIAS) - SCALE_BIAS)
    return torch.where(biased == SCALE_NAN, torch.full_like(value, float("nan")), value)
