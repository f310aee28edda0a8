"""Pure-PyTorch MX block quantizers: the readable specification and the test oracle for the Triton kernels.

Every step is exact in fp32 (power-of-two scaling, floor, exact differences, comparisons), so any implementation
that follows the same steps agrees bit for bit. Shapes: ``x2d`` is the 2-D view (rows, cols) of the input; ``1x32``
blocks run along a row, ``32x1`` blocks down a column. Tails shorter than 32 are blocks of their own.

This is also the CPU implementation, so it is written for CPU speed: branch-free arithmetic on values and fp32 bits
(boolean masks and ``torch.where`` over every element run as scalar loops with data-dependent branches, many times
slower than vectorized arithmetic), per-block factors and limits instead of per-element selections, intermediate
results overwritten in place (fewer fresh large tensors, which cost page faults), and constant operands held as
0-dim tensors of the operand's dtype (a Python number operand is converted to a tensor on every call).
"""
from __future__ import annotations

import functools
import math

import torch

from .formats import BLOCK_SIZE, LAYOUTS, SCALE_BIAS, SCALE_EXP_MAX, SCALE_EXP_MIN, SCALE_NAN, ElementFormat


def _int32(value: int) -> torch.Tensor:
    """The 32-bit word ``value`` as a 0-dim int32 tensor (the int32 with the same bits)."""
    value &= 0xFFFFFFFF
    return torch.tensor(value - (1 << 32) if value >= 1 << 31 else value, dtype=torch.int32)


_SIGN = _int32(0x80000000)  # fp32 sign bit
_EXPONENT = _int32(0x7F800000)  # fp32 exponent field
_GOLDEN = _int32(0x9E3779B1)  # odd: multiplying by it is a bijection of the 32-bit words
_FOLD_FACTORS = (torch.tensor(0x85EBCA6B), torch.tensor(0xC2B2AE35))  # int64: the 64-bit products of the hash
_WORD, _WORD_BITS = torch.tensor(0xFFFFFFFF), torch.tensor(32)
_ONE, _HALF_WORD = _int32(1), _int32(16)
_LOW_HALF = _int32(0xFFFF)
_BELOW_HALF = torch.tensor(0.5 - 2.0**-25)  # the fp32 just below 1/2
_INV_2_16 = torch.tensor(2.0**-16)


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


def _code_limit(s: torch.Tensor, fmt: ElementFormat, dtype: torch.dtype) -> torch.Tensor:
    """Largest magnitude code (int32) of blocks with scale exponent s: the code of ``magnitude_limit``."""
    return torch.where(s == overflow_exponent(fmt, dtype), fmt.saturation_code, fmt.max_code).to(torch.int32)


def _fold_(h: torch.Tensor, factor: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """h = low word ^ high word of the 64-bit product h * factor, in place on int64 tensors holding 32-bit words
    (the product of two such words is below 2^64; torch's int64 multiply keeps its low 64 bits)."""
    h.mul_(factor)
    return h.bitwise_xor_(torch.bitwise_right_shift(h, _WORD_BITS, out=scratch)).bitwise_and_(_WORD)


def _pair_hash_(pair: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """The 32-bit hashes of the int32 pair indices ``pair`` (overwritten), as int64 words (``uniform_from_index``)."""
    pair.bitwise_xor_(seed[0].to(torch.int32)).mul_(_GOLDEN).add_(seed[1].to(torch.int32))  # int32 wraps mod 2^32
    word = pair.view(torch.uint32).to(torch.int64)  # the unsigned word
    scratch = torch.empty_like(word)
    for factor in _FOLD_FACTORS:
        _fold_(word, factor, scratch)
    return word


def _uniform_(h: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """``uniform_from_index`` of the int32 indices h (h is overwritten)."""
    half_shift = torch.bitwise_and(h, _ONE).mul_(_HALF_WORD)  # 0 for an even index, 16 for an odd one
    pair = torch.bitwise_right_shift(h, _ONE, out=h).bitwise_and_(_int32(0x7FFFFFFF))  # index >>> 1
    word = _pair_hash_(pair, seed)
    draws = torch.bitwise_right_shift(word, half_shift.to(torch.int64)).bitwise_and_(_LOW_HALF)
    return draws.to(torch.float32).mul_(_INV_2_16)


def _flat_uniform(rows: int, cols: int, seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``uniform_from_index`` of the row-major flat indices of a (rows, cols) tensor, from one hash per element
    pair: the hash's low and high 16 bits are the two 16-bit halves of its 32-bit word, in element order on a
    little-endian machine (as every machine torch runs on)."""
    count = rows * cols
    pairs = (count + 1) // 2
    if pairs <= 2**31:
        index = torch.arange(pairs, dtype=torch.int32, device=device)
    else:  # the element index wraps mod 2^32, so the pair index mod 2^31
        index = torch.arange(pairs, device=device).bitwise_and_(0x7FFFFFFF).to(torch.int32)
    halves = _pair_hash_(index, seed).to(torch.int32).view(torch.uint16)[:count]
    return halves.to(torch.float32).mul_(_INV_2_16).view(rows, cols)


def uniform_from_index(index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Counter-based uniform numbers in [0, 1) (16 bits) from a flat element index and a two-word seed (an integer
    tensor of two words on index's device, read there: no host value).

    Elements 2j and 2j+1 share one hash of their pair index j: h = fold(fold((j ^ k0) * 0x9E3779B1 + k1,
    0x85EBCA6B), 0xC2B2AE35) in 32-bit wrap-around arithmetic, where fold(h, c) xors the low and the high word of
    the 64-bit product h * c (a multiply-fold mixer: one wide multiply and one xor, where an xor-shift round takes
    two integer operations); element 2j takes its low 16 bits, 2j+1 its high 16 bits, u = bits * 2^-16. The first
    step is a bijection of the pair index for a given seed; the folds mix every input bit into the high bits and
    those back into the low ones. One hash per two draws halves the kernels' cost of the stream. The Triton kernels
    compute the same, so stochastic rounding is reproducible and identical on both backends.
    """
    return _uniform_(index.to(torch.int32, copy=True), seed)  # int64 indices wrap mod 2^32


def binade_step(av: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Grid step 2^(b - man_bits) at each non-negative fp32 value, b its binary exponent clamped to [emin, emax]:
    below 2^emin the grid continues with the step of the emin binade (subnormals). Built from the exponent bits."""
    field = torch.bitwise_and(av.view(torch.int32), _EXPONENT)
    return field.clamp_((fmt.emin + 127) << 23, (fmt.emax + 127) << 23).sub_(fmt.man_bits << 23).view(torch.float32)


def round_steps(av: torch.Tensor, step: torch.Tensor, rounding: str, *, uniform: torch.Tensor | None = None,
                ema_toward: torch.Tensor | None = None) -> torch.Tensor:
    """k: scaled magnitudes av rounded to k * step (fp32 integers; before clamping to the limit). Overwrites av.

    ``av``: non-negative, at most 2^(emax+1) (the scaled values of a finite block always are); ``step``: its
    ``binade_step``. With a = av / step (exact: a power-of-two scaling, at most 2^(man_bits+1)) and frac = a - floor(a)
    (exact): "nearest" rounds up when frac >= 1/2 (ties away from zero), "even" rounds half to even, "stochastic"
    rounds up when ``uniform`` < frac, "ema" rounds up when ``ema_toward`` (the Q-EMA weight in the same scaled units,
    times the sign of v) is at least (floor(a) + 1/2) * step.
    """
    a = av.div_(step)
    if rounding == "nearest":
        # floor(a) + (frac >= 1/2) as floor(a + h), h = 1/2 - 2^-25 the fp32 below 1/2 (floor(a + 1/2) is wrong: it
        # rounds a = h up to 1). Bit-identical for every finite fp32 a >= 0: with n = floor(a) and u = ulp(a), the
        # sum a + h is exact or rounds to nearest. frac >= 1/2: a + h >= n + 1 - 2^-25, which rounds to n + 1 (for
        # n = 0 it is the tie 1 - 2^-25 between 1 - 2^-24 and 1, which goes to even 1; for n >= 1 the fp32 below
        # n + 1 are u >= 2^-23 apart). frac < 1/2: frac <= 1/2 - u, so n <= a + h <= n + 1 - u - 2^-25, below the
        # fp32 n + 1 - u (for a < 1/2, a + h <= 2h = 1 - 2^-24 exactly). tests/quantization/mx/test_oracle.py checks the
        # neighbourhood of every tie.
        return a.add_(_BELOW_HALF).floor_()
    if rounding == "even":
        return a.round_()
    if rounding == "stochastic":
        # floor(a) + (u < frac) as ceil(a - u) (+ 0 turns a -0 into 0). Bit-identical for every a in [0, 2^8) and u
        # a multiple of 2^-16 in [0, 1): for a >= 1, a and u are multiples of g = min(ulp(a), 2^-16) and
        # |a - u| < 2^24 g, so a - u is exact, and ceil(floor(a) + (frac - u)) with frac - u in (-1, 1) is
        # floor(a) + 1 exactly when u < frac. For a < 1 (floor(a) = 0): u = 0 gives ceil(a); otherwise a - u is
        # exact for u/2 <= a <= 2u (Sterbenz), rounds into [a/2, a] within (0, 1) for a > 2u (ceil 1, and u < a),
        # and into [-u, -u/2] within (-1, 0) for a < u/2 (ceil 0, and u > a).
        return a.sub_(uniform).ceil_().add_(0.0)
    low = torch.floor(a)
    if rounding == "ema":
        return low.add_(ema_toward >= low.add(0.5).mul_(step))
    raise ValueError(f"unknown rounding {rounding!r}")


def _with_sign_of(magnitude: torch.Tensor, x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Set the fp32 sign bit of ``magnitude`` (>= +0, modified in place) from x's: -0 and negatives give negatives.
    ``scratch``: an int32 buffer shaped like x to use for x's sign bits."""
    sign = torch.bitwise_and(x.view(torch.int32), _SIGN, out=scratch)
    return magnitude.view(torch.int32).bitwise_or_(sign).view(torch.float32)


def _times_sign_of(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t * (-1 if x's sign bit is set else 1), exactly: t's sign bit flipped where x's is (-0 counts as negative)."""
    return torch.bitwise_and(x.view(torch.int32), _SIGN).bitwise_xor_(t.view(torch.int32)).view(torch.float32)


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
    all-zero block, which then stays zero). The sign follows v's sign bit, so -0 stays -0 and +0 counts as positive;
    +-Inf give +-limit and NaN stays NaN.
    """
    av = v.abs().clamp_max_(2.0 ** (fmt.emax + 1))  # beyond the top binade all round to the limit; keeps Inf finite
    step = binade_step(av, fmt)
    ema_toward = None if ema_scaled is None else _times_sign_of(ema_scaled, v)
    magnitude = round_steps(av, step, rounding, uniform=uniform, ema_toward=ema_toward).mul_(step)
    return _with_sign_of(torch.minimum(magnitude, limit, out=magnitude), v)


def _blocked(x2d: torch.Tensor, layout: str) -> torch.Tensor:
    """View x2d, zero-padded to whole blocks, as (..., 32) blocks: (rows, nblk, 32) for 1x32, (nblk, cols, 32) for
    32x1 (a transposed view: memory keeps x2d's order, and so do the results of elementwise ops on it). Without a
    tail it is a view of x2d itself."""
    rows, cols = x2d.shape
    if layout == "1x32":
        pad = -cols % BLOCK_SIZE
        return (torch.nn.functional.pad(x2d, (0, pad)) if pad else x2d).view(rows, -1, BLOCK_SIZE)
    pad = -rows % BLOCK_SIZE
    padded = torch.nn.functional.pad(x2d, (0, 0, 0, pad)) if pad else x2d
    return padded.view(-1, BLOCK_SIZE, cols).transpose(1, 2)


def _unblocked(blocks: torch.Tensor, layout: str, rows: int, cols: int) -> torch.Tensor:
    if layout == "1x32":
        return blocks.reshape(rows, -1)[:, :cols]
    return blocks.transpose(1, 2).reshape(-1, cols)[:rows]


def _codes_(k: torch.Tensor, step: torch.Tensor, xb: torch.Tensor, fmt: ElementFormat,
            code_limit: torch.Tensor) -> torch.Tensor:
    """Element codes (sign bit | exponent field | mantissa, int32) of the values k * step clamped to the limit whose
    magnitude code is ``code_limit``: (b - emin) * 2^m + k for step = 2^(b - m), which also covers k = 2^(m+1), the
    first value of the next binade; the code is monotonic in the value, so clamping it clamps the value. Overwrites
    ``step`` (its fp32 bits >> (23 - m) are (b - m + 127) * 2^m)."""
    code = k.to(torch.int32).add_(step.view(torch.int32).bitwise_right_shift_(23 - fmt.man_bits))
    code = torch.minimum(code.sub_((127 - fmt.man_bits + fmt.emin) << fmt.man_bits), code_limit, out=code)
    negative = step.view(torch.int32).copy_(xb.view(torch.int32)).bitwise_right_shift_(31)  # -1 where negative
    return code.bitwise_or_(negative.bitwise_and_(1 << (fmt.bits - 1)))


def quantize_unpacked(
    x2d: torch.Tensor,
    layout: str,
    fmt: ElementFormat,
    scale_rule: str,
    rounding: str,
    *,
    ema2d: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    want_codes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Quantize a 2-D tensor. Returns (dequantized fp32, element codes uint8 or None, biased E8M0 scales uint8): the
    specification, before ``quantize_2d`` casts the values to x2d's dtype and packs the codes.

    The scales tensor has shape (rows, ceil(cols/32)) for 1x32 and (ceil(rows/32), cols) for 32x1; the codes (with
    ``want_codes``) are shaped like x2d. A block holding NaN or Inf dequantizes to all NaN, gets the NaN scale 255 and
    codes 0. The values are for x2d's dtype: rceil saturates those that would overflow it (``magnitude_limit``).
    ``seed``: the two seed words of stochastic rounding (``uniform_from_index``), unused by the other roundings.
    """
    rows, cols = x2d.shape
    xb = _blocked(x2d.float(), layout)  # may be x2d itself: only read
    av = xb.abs()
    amax = av.amax(dim=-1, keepdim=True)  # NaN or Inf exactly when the block holds one
    finite = torch.isfinite(amax)
    s = shared_exponent(amax, fmt, scale_rule)  # meaningless for the blocks that are not finite: replaced at the end
    inverse = pow2(-s)
    # NaN and Inf become 0 (their blocks become NaN at the end): every later step sees finite values, and the NaN
    # factor below is the only NaN operand of its product, which is then that NaN (of two NaN operands, which one a
    # product returns depends on the CPU's code path).
    av.nan_to_num_(0.0, 0.0).mul_(inverse)  # |x| / 2^s
    uniform = ema_toward = None
    if rounding == "stochastic":
        uniform = _blocked(_flat_uniform(rows, cols, seed, x2d.device), layout)
    elif rounding == "ema":
        if ema2d is None:
            raise ValueError("rounding='ema' needs the EMA tensor (ema=...)")
        # An all-zero block has no grid of its own (its scale 2^-127 is a placeholder): it stays zero whatever the EMA
        # (its scaled EMA is +-0, or NaN for an infinite one, never above the first threshold).
        ema_inverse = torch.where(amax > 0, inverse, 0.0)
        ema_toward = _times_sign_of(_blocked(ema2d.float(), layout) * ema_inverse, xb)
    step = binade_step(av, fmt)
    k = round_steps(av, step, rounding, uniform=uniform, ema_toward=ema_toward)
    magnitude = k * step if want_codes else k.mul_(step)  # the codes are computed from k
    codes = None
    if want_codes:
        codes = _codes_(k, step, xb, fmt, _code_limit(s, fmt, x2d.dtype)).mul_(finite)
        codes = _unblocked(codes, layout, rows, cols).to(torch.uint8)
    magnitude = torch.minimum(magnitude, magnitude_limit(s, fmt, x2d.dtype), out=magnitude)
    # The signed grid value times 2^s, or NaN for the whole block.
    deq = _with_sign_of(magnitude, xb, scratch=step.view(torch.int32))
    deq.mul_(torch.where(finite, pow2(s), float("nan")))
    scales = torch.where(finite, s + SCALE_BIAS, SCALE_NAN).squeeze(-1).to(torch.uint8)
    return _unblocked(deq, layout, rows, cols), codes, scales


def quantize_2d(x2d: torch.Tensor, layout: str, fmt: ElementFormat, scale_rule: str, rounding: str, *,
                ema2d: torch.Tensor | None = None, seed: torch.Tensor | None = None, want_values: bool = True,
                want_packed: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(values of x2d's dtype, packed codes, scales) of a 2-D tensor, None where not asked: what the kernels'
    ``quantize_2d`` returns for the same arguments."""
    deq, codes, scales = quantize_unpacked(x2d, layout, fmt, scale_rule, rounding, ema2d=ema2d, seed=seed,
                                           want_codes=want_packed)
    values = deq.to(x2d.dtype).contiguous() if want_values else None
    if not want_packed:
        return values, None, None
    return values, pack_nibbles(codes), scales


def quantize_both_layouts_2d(
    x2d: torch.Tensor, fmt: ElementFormat, scale_rule: str, rounding: str, *,
    seeds: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None), want_band_sums: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Values of x2d quantized in 1x32 blocks (seed words ``seeds[0]``) and in 32x1 blocks (``seeds[1]``), plus
    ``band_sums(x2d)`` with ``want_band_sums``."""
    values = tuple(quantize_2d(x2d, layout, fmt, scale_rule, rounding, seed=seed)[0]
                   for layout, seed in zip(LAYOUTS, seeds))
    return (*values, band_sums(x2d)) if want_band_sums else values


def band_sums(x2d: torch.Tensor) -> torch.Tensor:
    """fp32 column sums of x2d over each band of BLOCK_SIZE rows (the last band may be short), shape
    (ceil(rows / 32), cols): partial sums of the bias gradient that the both-layouts kernel gets from its read of dY.
    The order of the fp32 additions inside a band is not specified (the kernel's differs from this one's)."""
    rows, cols = x2d.shape
    bands = -(-rows // BLOCK_SIZE)
    padded = torch.nn.functional.pad(x2d.float(), (0, 0, 0, bands * BLOCK_SIZE - rows))
    return padded.view(bands, BLOCK_SIZE, cols).sum(1)


def requantize_2d(packed: torch.Tensor, scales: torch.Tensor, packed_fmt: ElementFormat, cols: int,
                  dtype: torch.dtype, fmt: ElementFormat, scale_rule: str, rounding: str, *,
                  seed: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x32-packed tensor of ``cols`` columns, dequantized to ``dtype`` and quantized again in 32x1 blocks."""
    values = dequantize_2d(packed, scales, "1x32", packed_fmt, cols, dtype)
    return quantize_2d(values, "32x1", fmt, scale_rule, rounding, seed=seed)[0]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dim (element 2j in the low nibble); odd lengths pad with 0."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


@functools.lru_cache(maxsize=None)
def _byte_values(fmt: ElementFormat, device: torch.device) -> torch.Tensor:
    """The two signed grid values (fp32, low nibble first) of each of the 256 bytes of packed 4-bit codes, the pair
    stored as one 64-bit word so that one gather decodes two codes. Code c has the magnitude fmt.grid()[c & max_code]
    and is negative when its sign bit (bit bits - 1) is set."""
    grid = torch.tensor(fmt.grid(), dtype=torch.float32)
    code = torch.arange(16)
    values = torch.where((code >> (fmt.bits - 1)) & 1 == 1, -grid[code & fmt.max_code], grid[code & fmt.max_code])
    byte = torch.arange(256)
    return torch.stack((values[byte & 0xF], values[byte >> 4]), dim=-1).view(torch.int64).squeeze(-1).to(device)


def unpack_values(packed: torch.Tensor, fmt: ElementFormat, cols: int) -> torch.Tensor:
    """Signed grid values (fp32, (..., cols)) of 4-bit codes packed by ``pack_nibbles`` into (..., ceil(cols/2))."""
    words = _byte_values(fmt, packed.device).index_select(0, packed.reshape(-1).to(torch.int64))
    return words.view(torch.float32).view(*packed.shape[:-1], -1)[..., :cols]


def dequantize_2d(packed: torch.Tensor, scales: torch.Tensor, layout: str, fmt: ElementFormat, cols: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """Values (rows, cols) of ``dtype`` of packed codes and biased scales (NaN where the block's scale is the NaN
    marker), computed in fp32."""
    grid = unpack_values(packed, fmt, cols)
    biased = scales.to(torch.int32).unsqueeze(-1)
    scale = pow2(biased.clamp(max=SCALE_EXP_MAX + SCALE_BIAS) - SCALE_BIAS)
    factor = torch.where(biased == SCALE_NAN, float("nan"), scale)
    values = _unblocked(_blocked(grid, layout).mul_(factor), layout, packed.shape[0], cols)
    return values.to(dtype).contiguous()
