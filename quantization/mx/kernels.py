"""Triton kernels for MX block quantization: one fused pass per call (block amax, shared exponent, rounding,
dequantized output and/or packed 4-bit codes + E8M0 scales).

They follow reference.py step for step; every step is exact, so results agree bit for bit. The same source runs
under ``TRITON_INTERPRET=1`` on the CPU (no autotune, plain ``tl`` ops only).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backends import triton_interpreted
from .formats import BLOCK_SIZE, LAYOUTS, ElementFormat, Rounding
from .reference import band_sums, overflow_exponent

# The rounding modes as the kernels compare their ROUNDING argument with them (a @triton.jit function reads a global
# only if it is a tl.constexpr instance).
ROUND_NEAREST = tl.constexpr(Rounding.NEAREST.value)
ROUND_EVEN = tl.constexpr(Rounding.EVEN.value)
ROUND_STOCHASTIC = tl.constexpr(Rounding.STOCHASTIC.value)
ROUND_EMA = tl.constexpr(Rounding.EMA.value)
HALF_BELOW = tl.constexpr(0.5 - 2.0**-25)  # the fp32 number below 0.5
# Compiled for the GPU rather than run by the CPU interpreter, which cannot run inline PTX (directed rounding, byte
# permutes).
NATIVE = tl.constexpr(not triton_interpreted())
# Launch shapes picked by scripts/bench_quant.py --sweep on a 50432x384 bf16 tensor, replayed from CUDA graphs on
# the H200: 1x32 tiles of 64 blocks x 32 elements with 2 warps; the backward pass's fused kernels (stochastic) on
# bands of 32 rows x 32 columns with 1 warp. The 32x1 kernel keeps an H100 pick, bands of 32 x 64 with 2 warps.
LAUNCH_1X32 = dict(groups=64, num_warps=2)
LAUNCH_32X1 = dict(block_c=64, num_warps=2)
LAUNCH_BOTH_LAYOUTS = dict(block_c=32, num_warps=1)
LAUNCH_REQUANTIZE = dict(block_c=32, num_warps=1)
LAUNCH_DEQUANTIZE = dict(block_r=32, block_c=64, num_warps=4)


@triton.jit
def _pow2(k):
    """2**k as fp32 for int32 k in [-127, 127], built from the bit pattern."""
    bits = tl.where(k >= -126, (k + 127) << 23, 1 << 22)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _program_start(axis: tl.constexpr, size: tl.constexpr, WIDE: tl.constexpr):
    """First index this program covers along ``axis``; int64 index arithmetic only for tensors of 2^31 elements or
    more (WIDE), as 64-bit integer math costs the compute-bound kernels time."""
    pid = tl.program_id(axis)
    if WIDE:
        pid = pid.to(tl.int64)
    return pid * size


@triton.jit
def _load_f32(ptrs, mask, IS_BF16: tl.constexpr):
    """Load as fp32; bf16 is widened through its bits (exact; Triton's CPU interpreter mangles bf16 subnormals)."""
    if IS_BF16:
        bits = tl.load(ptrs.to(tl.pointer_type(tl.int16)), mask=mask, other=0)
        return (bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _to_output(value, IS_BF16: tl.constexpr, out_dtype: tl.constexpr):
    """Cast fp32 results to the output dtype. Grid values times 2^s fit bf16 exactly, so for bf16 the cast is taking
    the high half of the bits: no rounding, and subnormals survive where a converter would flush them."""
    if IS_BF16:
        return (value.to(tl.int32, bitcast=True) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return value.to(out_dtype)


@triton.jit
def _fold(h, FACTOR: tl.constexpr):
    """The low and high words of the 64-bit product h * FACTOR (uint32 h), xor-ed: one wide multiply (the FMA pipe)
    and one logic operation."""
    product = h.to(tl.uint64) * FACTOR
    return product.to(tl.uint32) ^ (product >> 32).to(tl.uint32)


@triton.jit
def _pair_hash(pair, seed0, seed1):
    """The 32-bit hash of element pair ``pair`` (uint32) that reference.uniform_from_index splits into two draws."""
    return _fold(_fold((pair ^ seed0) * 0x9E3779B1 + seed1, 0x85EBCA6B), 0xC2B2AE35)


@triton.jit
def _draw_word(h, HIGH: tl.constexpr):
    """The fp32 bits of 2^23 + the low or high 16 bits of the hash h (uint32): one byte permute or shift-add."""
    if HIGH:
        return (h >> 16) | 0x4B000000
    elif NATIVE:
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, 0x4B000000, 0x7610;", "=r,r", [h], dtype=tl.uint32,
                                         is_pure=True, pack=1)
    else:
        return (h & 0xFFFF) | 0x4B000000


@triton.jit
def _scaled_uniform(word, MAN_BITS: tl.constexpr):
    """A draw u of reference.uniform_from_index from its _draw_word, times the grid step's 2^-MAN_BITS (what
    _quantize_tile subtracts): (2^23 + bits) * 2^(-16 - MAN_BITS) - 2^(7 - MAN_BITS), one fused multiply-add with
    both steps exact, instead of a conversion."""
    return word.to(tl.float32, bitcast=True) * 2.0**(-16 - MAN_BITS) - 2.0**(7 - MAN_BITS)


@triton.jit
def _uniform(index, seed0, seed1, MAN_BITS: tl.constexpr):
    """reference.uniform_from_index of single elements (times 2^-MAN_BITS): the hash of the element's pair, low or
    high half."""
    index = index.to(tl.uint32)
    h = _pair_hash(index >> 1, seed0, seed1)
    return _scaled_uniform(((h >> ((index & 1) * 16)) & 0xFFFF) | 0x4B000000, MAN_BITS)


@triton.jit
def _load_seed(seed_ptr, ROUNDING: tl.constexpr):
    """The two seed words of stochastic rounding, read from the device (no host value, so capture-safe); other
    roundings read nothing."""
    seed0 = tl.full((), 0, tl.uint32)
    seed1 = tl.full((), 0, tl.uint32)
    if ROUNDING == ROUND_STOCHASTIC:
        seed0 = tl.load(seed_ptr).to(tl.uint32)
        seed1 = tl.load(seed_ptr + 1).to(tl.uint32)
    return seed0, seed1


@triton.jit
def _inverse_step(binade_bits, MAN_BITS: tl.constexpr):
    """1 / step = 2^(MAN_BITS - binade) from 2^binade's fp32 bits, in unsigned arithmetic (the constant passes 2^31
    for MAN_BITS >= 2)."""
    return (((254 + MAN_BITS) << 23) - binade_bits.to(tl.uint32)).to(tl.float32, bitcast=True)


@triton.jit
def _round_to_step(t, binade_bits, MAN_BITS: tl.constexpr, UP: tl.constexpr):
    """t rounded up (UP) or down to a multiple of the grid step 2^(binade - MAN_BITS) (binade_bits: 2^binade's fp32
    bits), exactly, for |t| < 2^(binade + 22 - MAN_BITS), never -0. On the GPU this is one add rounding up or down,
    t + 1.5 * 2^23 * step, whose ulp is the step, and the subtraction of that constant (exact), in PTX: libdevice's
    add_ru / add_rd flush a subnormal t to zero, which would lose a stochastic round-up. The CPU interpreter takes
    the floor or ceiling of t / step instead (exact for the t that _quantize_tile forms)."""
    if NATIVE:
        magic = binade_bits.to(tl.float32, bitcast=True) * (1.5 * 2.0**(23 - MAN_BITS))  # exact; the FMA pipe
        if UP:
            rounded = tl.inline_asm_elementwise("add.rp.f32 $0, $1, $2;", "=f,f,f", [t, magic], dtype=tl.float32,
                                                is_pure=True, pack=1)
        else:
            rounded = tl.inline_asm_elementwise("add.rm.f32 $0, $1, $2;", "=f,f,f", [t, magic], dtype=tl.float32,
                                                is_pure=True, pack=1)
        return rounded - magic
    else:
        steps = t * _inverse_step(binade_bits, MAN_BITS)
        step = binade_bits.to(tl.float32, bitcast=True) * (2.0**-MAN_BITS)
        if UP:
            return tl.ceil(steps) * step + 0.0
        else:
            return tl.floor(steps) * step


@triton.jit
def _block_amax(values, axis: tl.constexpr):
    """Max of |values| along ``axis``, a block's amax, taken on the fp32 bits with the sign shifted out: NaN if the
    block holds a NaN (its bits exceed infinity's) and +inf if it holds an infinity, so ``amax < inf`` says the block
    is finite with no per-element test. (An integer max also keeps Triton's CPU interpreter fast, which a custom
    NaN-propagating float reduction would not.)"""
    doubled = tl.max(values.to(tl.uint32, bitcast=True) << 1, axis=axis)
    return (doubled >> 1).to(tl.float32, bitcast=True)


@triton.jit
def _max_of_amaxes(a, b):
    """The larger of two _block_amax results, NaN winning (as the max of their bits)."""
    return tl.maximum(a.to(tl.uint32, bitcast=True), b.to(tl.uint32, bitcast=True)).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_tile(x, amax, finite, uniform, ema, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                   RCEIL: tl.constexpr, ROUNDING: tl.constexpr, OVERFLOW_EXP: tl.constexpr):
    """Quantize an fp32 tile given its (broadcastable) block amax to the EXP_BITS/MAN_BITS format (``uniform``: the
    draws of stochastic rounding, ``ema``: the Q-EMA weights, each read only by its rounding). Returns
    (dequantized, code, biased scale). OVERFLOW_EXP: the block scale exponent at which the output dtype saturates
    (reference.magnitude_limit). The format's constants are ElementFormat's properties, computed at compile time."""
    BIAS: tl.constexpr = (1 << (EXP_BITS - 1)) - 1
    EMIN: tl.constexpr = 1 - BIAS
    EMAX: tl.constexpr = (1 << EXP_BITS) - 1 - BIAS
    MAX_VALUE: tl.constexpr = 2.0**EMAX * (2.0 - 2.0**-MAN_BITS)
    MAX_MANT_FIELD: tl.constexpr = (1 << 23) - (1 << (23 - MAN_BITS))
    SIGN_BIT: tl.constexpr = 1 << (EXP_BITS + MAN_BITS)
    # The grid value below 2^emax, one step of the binade below (of the subnormals when that is emin's, as in E1M2).
    SAT_VALUE: tl.constexpr = 2.0**EMAX - 2.0**((EMAX - 1 if EMAX - 1 > EMIN else EMIN) - MAN_BITS)
    amax = tl.where(finite, amax, 0.0)
    amax_bits = amax.to(tl.int32, bitcast=True)
    s = ((amax_bits >> 23) & 0xFF) - 127 - EMAX
    if RCEIL:
        s += ((amax_bits & 0x7FFFFF) > MAX_MANT_FIELD).to(tl.int32)
    s = tl.minimum(tl.maximum(s, -127), 127)
    v = x * _pow2(-s)
    v_bits = v.to(tl.int32, bitcast=True)
    av = tl.abs(v)
    # 2^binade as fp32 bits: the element's binade, or emin's below it. No clamp at emax is needed: a finite block's
    # |v| < 2^(emax+1) (the reference clamps; a non-finite block's values are replaced by NaN below).
    binade_bits = tl.maximum(v_bits & 0x7F800000, (EMIN + 127) << 23)
    binade = binade_bits.to(tl.float32, bitcast=True)
    # Nearest and stochastic rounding work on |v| itself: reference.round_steps' operations on a = |v| / step, scaled
    # by the step (a power of two), so the same bits (an intermediate is subnormal only where it is exact).
    if ROUNDING == ROUND_NEAREST:
        # |v| + step * (1/2 - 2^-25) rounded down to the step: the grid value above |v| iff frac >= 1/2 (round_steps)
        grid_value = _round_to_step(av + binade * (HALF_BELOW * 2.0**-MAN_BITS), binade_bits, MAN_BITS, False)
    elif ROUNDING == ROUND_STOCHASTIC:
        # up(|v| - step * uniform), uniform arriving times 2^-MAN_BITS: up with probability frac (round_steps)
        grid_value = _round_to_step(av - uniform * binade, binade_bits, MAN_BITS, True)
    else:
        step = binade * (2.0**-MAN_BITS)
        a = av * _inverse_step(binade_bits, MAN_BITS)  # |v| / step, exact
        low = tl.floor(a)
        frac = a - low  # exact (floor(a + 0.5) is not: just below a = 0.5, a + 0.5 rounds up to 1)
        if ROUNDING == ROUND_EVEN:
            low_is_odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
            up = (frac > 0.5) | ((frac == 0.5) & low_is_odd)
        else:  # ROUND_EMA; an all-zero block stays zero
            sign = tl.where(v_bits < 0, -1.0, 1.0)
            up = sign * tl.where(amax > 0, ema * _pow2(-s), 0.0) >= (low + 0.5) * step
        grid_value = (low + up.to(tl.float32)) * step
    saturating = s == OVERFLOW_EXP  # per block: from 2^emax up the grid would overflow the output dtype
    grid_value = tl.minimum(grid_value, tl.where(saturating, SAT_VALUE, MAX_VALUE))
    magnitude = grid_value * tl.where(finite, _pow2(s), float("nan"))  # a NaN block: NaN times any magnitude
    deq = (magnitude.to(tl.int32, bitcast=True) | (v_bits & -2147483648)).to(tl.float32, bitcast=True)  # v's sign
    # The code is the grid value as a mini-float: 2^(BIAS - 127) times it (exact) has the code's bits at the top of
    # its mantissa, the format's subnormals among fp32's (_decode's inverse).
    code = (grid_value * (2.0**(BIAS - 127))).to(tl.int32, bitcast=True) >> (23 - MAN_BITS)
    code = tl.where(v_bits < 0, code | SIGN_BIT, code)
    code = tl.where(finite, code, 0)
    scale = tl.where(finite, s + 127, 255)
    return deq, code, scale


@triton.jit
def _round_and_store(x, amax, finite, offs, mask, ema_ptr, y_ptr, seed0, seed1, WRITE_Y: tl.constexpr,
                     IS_BF16: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, RCEIL: tl.constexpr,
                     ROUNDING: tl.constexpr, OVERFLOW_EXP: tl.constexpr):
    """Quantize a loaded tile given its broadcast block amax, store the values if asked; returns (codes, scales)."""
    ema = x
    uniform = x
    if ROUNDING == ROUND_EMA:
        ema = tl.load(ema_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    elif ROUNDING == ROUND_STOCHASTIC:
        uniform = _uniform(offs, seed0, seed1, MAN_BITS)
    deq, code, scale = _quantize_tile(x, amax, finite, uniform, ema, EXP_BITS, MAN_BITS, RCEIL, ROUNDING,
                                      OVERFLOW_EXP)
    if WRITE_Y:
        tl.store(y_ptr + offs, _to_output(deq, IS_BF16, y_ptr.dtype.element_ty), mask=mask)
    return code, scale


@triton.jit
def _quantize_1x32_kernel(x_ptr, ema_ptr, y_ptr, packed_ptr, scales_ptr, rows, cols, pstride, seed_ptr,
                          GROUPS: tl.constexpr, WHOLE_BLOCKS: tl.constexpr, WRITE_Y: tl.constexpr,
                          WRITE_PACKED: tl.constexpr, IS_BF16: tl.constexpr, WIDE: tl.constexpr,
                          EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, RCEIL: tl.constexpr,
                          ROUNDING: tl.constexpr, OVERFLOW_EXP: tl.constexpr):
    """Each program handles GROUPS blocks of 32 consecutive elements of a row (the last block of a row may be short).
    WHOLE_BLOCKS (cols a multiple of 32): block g is simply elements 32g..32g+31, with no row/column arithmetic."""
    blocks_per_row = tl.cdiv(cols, 32)
    group = _program_start(0, GROUPS, WIDE) + tl.arange(0, GROUPS)
    lane = tl.arange(0, 32)
    byte_lane = tl.arange(0, 16)
    if WHOLE_BLOCKS:
        group_in = group < rows * blocks_per_row
        mask = group_in[:, None] & (lane[None, :] < 32)  # (the lane term only gives the mask the tile's shape)
        offs = group[:, None] * 32 + lane[None, :]
        poffs = group[:, None] * 16 + byte_lane[None, :]
        pmask = group_in[:, None] & (byte_lane[None, :] < 16)
    else:
        row, block = group // blocks_per_row, group % blocks_per_row
        group_in = row < rows
        col = (block * 32)[:, None] + lane[None, :]
        mask = group_in[:, None] & (col < cols)
        offs = row[:, None] * cols + col
        pcol = (block * 16)[:, None] + byte_lane[None, :]
        poffs = row[:, None] * pstride + pcol
        pmask = group_in[:, None] & (pcol < pstride)
    x = _load_f32(x_ptr + offs, mask, IS_BF16)
    amax = _block_amax(x, 1)
    finite = amax < float("inf")
    seed0, seed1 = _load_seed(seed_ptr, ROUNDING)
    code, scale = _round_and_store(x, amax[:, None], finite[:, None], offs, mask, ema_ptr, y_ptr, seed0, seed1, WRITE_Y,
                                   IS_BF16, EXP_BITS, MAN_BITS, RCEIL, ROUNDING, OVERFLOW_EXP)
    if WRITE_PACKED:
        low_code, high_code = tl.split(tl.reshape(code, (GROUPS, 16, 2)))
        byte = (low_code | (high_code << 4)).to(tl.uint8)
        tl.store(packed_ptr + poffs, byte, mask=pmask)
        tl.store(scales_ptr + group, tl.max(scale, axis=1).to(tl.uint8), mask=group_in)


@triton.jit
def _quantize_32x1_kernel(x_ptr, ema_ptr, y_ptr, packed_ptr, scales_ptr, rows, cols, pstride, seed_ptr,
                          BLOCK_C: tl.constexpr, WRITE_Y: tl.constexpr, WRITE_PACKED: tl.constexpr,
                          IS_BF16: tl.constexpr, WIDE: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                          RCEIL: tl.constexpr, ROUNDING: tl.constexpr, OVERFLOW_EXP: tl.constexpr):
    """Each program handles one band of 32 rows x BLOCK_C columns; each column of the band is one block."""
    row = _program_start(0, 32, WIDE) + tl.arange(0, 32)
    col = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (row[:, None] < rows) & (col[None, :] < cols)
    offs = row[:, None] * cols + col[None, :]
    x = _load_f32(x_ptr + offs, mask, IS_BF16)
    amax = _block_amax(x, 0)
    finite = amax < float("inf")
    seed0, seed1 = _load_seed(seed_ptr, ROUNDING)
    code, scale = _round_and_store(x, amax[None, :], finite[None, :], offs, mask, ema_ptr, y_ptr, seed0, seed1, WRITE_Y,
                                   IS_BF16, EXP_BITS, MAN_BITS, RCEIL, ROUNDING, OVERFLOW_EXP)
    if WRITE_PACKED:
        low_code, high_code = tl.split(tl.reshape(code, (32, BLOCK_C // 2, 2)))
        byte = (low_code | (high_code << 4)).to(tl.uint8)
        pcol = tl.program_id(1) * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
        pmask = (row[:, None] < rows) & (pcol[None, :] < pstride)
        tl.store(packed_ptr + row[:, None] * pstride + pcol[None, :], byte, mask=pmask)
        tl.store(scales_ptr + tl.program_id(0) * cols + col, tl.max(scale, axis=0).to(tl.uint8), mask=col < cols)


@triton.jit
def _decode(code, biased, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr):
    """fp32 value of codes (int32) of the EXP_BITS/MAN_BITS format under biased E8M0 exponents (int32, 255 = NaN
    block). The code's magnitude bits shifted to the top of an fp32 mantissa form the float 2^(127 - BIAS) times
    smaller than the value (the format's subnormals land on fp32 subnormals), so decoding is shifts, an OR for the
    sign and two exact multiplications."""
    BIAS: tl.constexpr = (1 << (EXP_BITS - 1)) - 1
    SIGN_BIT: tl.constexpr = 1 << (EXP_BITS + MAN_BITS)
    MAX_CODE: tl.constexpr = SIGN_BIT - 1
    bits = ((code & MAX_CODE) << (23 - MAN_BITS)) | ((code & SIGN_BIT) << (31 - EXP_BITS - MAN_BITS))
    scale = tl.where(biased == 255, float("nan"), _pow2(tl.minimum(biased, 254) - 127))
    return bits.to(tl.float32, bitcast=True) * (2.0**(127 - BIAS)) * scale


@triton.jit
def _load_packed_band(packed_ptr, scales_ptr, row, byte_col, rows, pstride, scale_stride, ROW_BLOCKS: tl.constexpr,
                      EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr):
    """Decode the bytes at (row, byte_col) of a packed tensor into fp32 values, element 2j (low nibble) and 2j+1
    interleaved along the last axis. ROW_BLOCKS: scales of the 32x1 layout (else 1x32)."""
    mask = (row < rows) & (byte_col < pstride)
    byte = tl.load(packed_ptr + row * pstride + byte_col, mask=mask, other=0).to(tl.int32)
    if ROW_BLOCKS:
        low_offs = (row // 32) * scale_stride + 2 * byte_col
        low_scale = tl.load(scales_ptr + low_offs, mask=mask, other=0).to(tl.int32)
        high_scale = tl.load(scales_ptr + low_offs + 1, mask=mask & (2 * byte_col + 1 < scale_stride),
                             other=0).to(tl.int32)
    else:
        low_scale = tl.load(scales_ptr + row * scale_stride + byte_col // 16, mask=mask, other=0).to(tl.int32)
        high_scale = low_scale
    low = _decode(byte & 0xF, low_scale, EXP_BITS, MAN_BITS)
    high = _decode(byte >> 4, high_scale, EXP_BITS, MAN_BITS)
    return tl.interleave(low, high)


@triton.jit
def _dequantize_kernel(packed_ptr, scales_ptr, y_ptr, rows, cols, pstride, scale_stride,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROW_BLOCKS: tl.constexpr,
                       IS_BF16: tl.constexpr, WIDE: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr):
    """Packed codes + biased E8M0 scales -> values, BLOCK_R rows x BLOCK_C columns per program."""
    row = _program_start(0, BLOCK_R, WIDE) + tl.arange(0, BLOCK_R)
    byte_col = tl.program_id(1) * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
    value = _load_packed_band(packed_ptr, scales_ptr, row[:, None], byte_col[None, :], rows, pstride, scale_stride,
                              ROW_BLOCKS, EXP_BITS, MAN_BITS)
    col = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(y_ptr + row[:, None] * cols + col[None, :], _to_output(value, IS_BF16, y_ptr.dtype.element_ty),
             mask=(row[:, None] < rows) & (col[None, :] < cols))


@triton.jit
def _load_pairs(x_ptr, pair_offs, mask, IS_BF16: tl.constexpr):
    """Elements 2j and 2j+1 of a row (pair j) as two fp32 tiles, from one load of their joint bits. 16-bit dtypes
    read 32-bit words, fp32 reads 64-bit words; bf16 widens exactly through its bits."""
    if x_ptr.dtype.element_ty == tl.float32:
        word = tl.load(x_ptr.to(tl.pointer_type(tl.int64)) + pair_offs, mask=mask, other=0)
        low = word.to(tl.int32).to(tl.float32, bitcast=True)
        high = (word >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    else:
        word = tl.load(x_ptr.to(tl.pointer_type(tl.int32)) + pair_offs, mask=mask, other=0)
        if IS_BF16:
            low = (word << 16).to(tl.float32, bitcast=True)
            high = ((word >> 16) << 16).to(tl.float32, bitcast=True)
        else:
            low = word.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            high = (word >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return low, high


@triton.jit
def _store_pairs(y_ptr, pair_offs, low, high, mask, IS_BF16: tl.constexpr):
    """Store fp32 tiles of elements 2j and 2j+1 as one word per pair (the inverse of ``_load_pairs``; values on an
    MX grid fit bf16 exactly, so bf16 takes the high half of the bits)."""
    if y_ptr.dtype.element_ty == tl.float32:
        word = (low.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF) | \
            (high.to(tl.int32, bitcast=True).to(tl.int64) << 32)
        tl.store(y_ptr.to(tl.pointer_type(tl.int64)) + pair_offs, word, mask=mask)
    else:
        if IS_BF16 and NATIVE:  # the high halves of both words in one byte permute
            word = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7632;", "=r,r,r", [low, high], dtype=tl.int32,
                                             is_pure=True, pack=1)
        else:
            if IS_BF16:
                low_bits = (low.to(tl.int32, bitcast=True) >> 16) & 0xFFFF
                high_bits = high.to(tl.int32, bitcast=True) >> 16
            else:
                low_bits = low.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
                high_bits = high.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
            word = low_bits | (high_bits << 16)
        tl.store(y_ptr.to(tl.pointer_type(tl.int32)) + pair_offs, word, mask=mask)


@triton.jit
def _quantize_pairs(low, high, amax_low, amax_high, pair, seed0, seed1, WIDE: tl.constexpr, EXP_BITS: tl.constexpr,
                    MAN_BITS: tl.constexpr, RCEIL: tl.constexpr, ROUNDING: tl.constexpr, OVERFLOW_EXP: tl.constexpr):
    """Dequantized element pairs (low: element 2j of flat pair index ``pair``, high: 2j+1) given the broadcast amax of
    each one's block (_block_amax: NaN or +inf for a block that must come out NaN). Stochastic rounding takes both
    draws from one hash of the pair."""
    uniform_low = low
    uniform_high = high
    if ROUNDING == ROUND_STOCHASTIC:
        if WIDE:  # the element index wraps mod 2^32, so the pair index mod 2^31
            pair = pair & 0x7FFFFFFF
        h = _pair_hash(pair.to(tl.uint32), seed0, seed1)
        uniform_low = _scaled_uniform(_draw_word(h, False), MAN_BITS)
        uniform_high = _scaled_uniform(_draw_word(h, True), MAN_BITS)
    low_q, _, _ = _quantize_tile(low, amax_low, amax_low < float("inf"), uniform_low, low, EXP_BITS, MAN_BITS, RCEIL,
                                 ROUNDING, OVERFLOW_EXP)
    high_q, _, _ = _quantize_tile(high, amax_high, amax_high < float("inf"), uniform_high, high, EXP_BITS, MAN_BITS,
                                  RCEIL, ROUNDING, OVERFLOW_EXP)
    return low_q, high_q


@triton.jit
def _quantize_both_layouts_kernel(x_ptr, y_rows_ptr, y_cols_ptr, sums_ptr, rows, half_cols, seed_rows_ptr,
                                  seed_cols_ptr, BLOCK_C: tl.constexpr, WRITE_SUMS: tl.constexpr,
                                  IS_BF16: tl.constexpr, WIDE: tl.constexpr, EXP_BITS: tl.constexpr,
                                  MAN_BITS: tl.constexpr, RCEIL: tl.constexpr, ROUNDING: tl.constexpr,
                                  OVERFLOW_EXP: tl.constexpr):
    """One read, two quantizations: a band of 32 rows x BLOCK_C columns (2 * half_cols columns in all) quantized in
    1x32 blocks (to y_rows, seed words at seed_rows_ptr) and in 32x1 blocks (to y_cols, at seed_cols_ptr), as a
    (rows, blocks, 16 pairs) tile of element pairs. The backward pass's dY feeds Q3 and Q5 this way. WRITE_SUMS:
    also the band's fp32 column sums, row ``band`` of sums_ptr (the bias gradient's partial sums, from the same
    read)."""
    row = _program_start(0, 32, WIDE) + tl.arange(0, 32)
    pair = tl.program_id(1) * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 32)[:, None] * 16 + tl.arange(0, 16)[None, :]
    row3 = row[:, None, None]
    pair3 = pair[None, :, :]
    mask = (row3 < rows) & (pair3 < half_cols)
    pair_offs = row3 * half_cols + pair3
    low, high = _load_pairs(x_ptr, pair_offs, mask, IS_BF16)
    seed0, seed1 = _load_seed(seed_rows_ptr, ROUNDING)
    seed2, seed3 = _load_seed(seed_cols_ptr, ROUNDING)
    amax = _max_of_amaxes(_block_amax(low, 2), _block_amax(high, 2))[:, :, None]
    low_q, high_q = _quantize_pairs(low, high, amax, amax, pair_offs, seed0, seed1, WIDE, EXP_BITS, MAN_BITS, RCEIL,
                                    ROUNDING, OVERFLOW_EXP)
    _store_pairs(y_rows_ptr, pair_offs, low_q, high_q, mask, IS_BF16)
    amax_low = _block_amax(low, 0)[None, :, :]
    amax_high = _block_amax(high, 0)[None, :, :]
    low_q, high_q = _quantize_pairs(low, high, amax_low, amax_high, pair_offs, seed2, seed3, WIDE, EXP_BITS,
                                    MAN_BITS, RCEIL, ROUNDING, OVERFLOW_EXP)
    _store_pairs(y_cols_ptr, pair_offs, low_q, high_q, mask, IS_BF16)
    if WRITE_SUMS:
        band_offs = _program_start(0, 1, WIDE) * half_cols + pair
        _store_pairs(sums_ptr, band_offs, tl.sum(low, axis=0), tl.sum(high, axis=0), pair < half_cols, False)


@triton.jit
def _requantize_kernel(packed_ptr, scales_ptr, y_ptr, rows, half_cols, scale_stride, seed_ptr,
                       BLOCK_C: tl.constexpr, IS_BF16: tl.constexpr, WIDE: tl.constexpr,
                       IN_EXP_BITS: tl.constexpr, IN_MAN_BITS: tl.constexpr,
                       EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, RCEIL: tl.constexpr, ROUNDING: tl.constexpr,
                       OVERFLOW_EXP: tl.constexpr):
    """A tensor saved as 1x32 packed codes of the IN_EXP_BITS/IN_MAN_BITS format + scales (2 * half_cols columns),
    dequantized to y's dtype in registers and quantized again in 32x1 blocks (Q6 of Q1(X), Q4 of Q2(W)): a band of
    32 rows x BLOCK_C columns per program, one byte = one element pair."""
    row = _program_start(0, 32, WIDE) + tl.arange(0, 32)
    block = tl.program_id(1) * (BLOCK_C // 32) + tl.arange(0, BLOCK_C // 32)
    pair = block[:, None] * 16 + tl.arange(0, 16)[None, :]
    row3 = row[:, None, None]
    pair3 = pair[None, :, :]
    mask = (row3 < rows) & (pair3 < half_cols)
    pair_offs = row3 * half_cols + pair3
    # The same byte offsets, provably contiguous only in runs of 4: the compiler then loads 4 bytes per thread, the
    # register layout of the int32 pair stores below, instead of 16-byte vectors that need a layout conversion.
    lane = tl.arange(0, 16)
    byte_offs = row3 * half_cols + (block[:, None] * 16 + (lane // 4 * 4)[None, :] + (lane % 4)[None, :])[None, :, :]
    byte = tl.load(packed_ptr + byte_offs, mask=mask, other=0).to(tl.int32)
    biased = tl.load(scales_ptr + row[:, None] * scale_stride + block[None, :],
                     mask=(row[:, None] < rows) & (block[None, :] < scale_stride), other=0).to(tl.int32)[:, :, None]
    low = _decode(byte & 0xF, biased, IN_EXP_BITS, IN_MAN_BITS)
    high = _decode(byte >> 4, biased, IN_EXP_BITS, IN_MAN_BITS)
    if not IS_BF16:  # the saved tensor's own rounding (fp16); bf16 and fp32 hold every dequantized value exactly
        low = low.to(y_ptr.dtype.element_ty).to(tl.float32)
        high = high.to(y_ptr.dtype.element_ty).to(tl.float32)
    amax_low = _block_amax(low, 0)[None, :, :]
    amax_high = _block_amax(high, 0)[None, :, :]
    seed0, seed1 = _load_seed(seed_ptr, ROUNDING)
    low_q, high_q = _quantize_pairs(low, high, amax_low, amax_high, pair_offs, seed0, seed1, WIDE, EXP_BITS,
                                    MAN_BITS, RCEIL, ROUNDING, OVERFLOW_EXP)
    _store_pairs(y_ptr, pair_offs, low_q, high_q, mask, IS_BF16)


def _wide(rows: int, cols: int) -> bool:
    """Whether a kernel's element offsets (tail tiles included) may reach 2^31 and need int64 arithmetic."""
    return (rows + 256) * (cols + 256) >= 2**31


def _tensor_constexprs(dtype: torch.dtype, rows: int, cols: int) -> dict:
    """The compile-time arguments every kernel takes for its (rows, cols) tensor of values stored as ``dtype``."""
    return dict(IS_BF16=dtype == torch.bfloat16, WIDE=_wide(rows, cols))


def _format_constexprs(fmt: ElementFormat, prefix: str = "") -> dict:
    """The compile-time arguments naming an element format, from which the kernels derive its constants (``prefix``
    names the input format of the requantize kernel)."""
    return {prefix + "EXP_BITS": fmt.exp_bits, prefix + "MAN_BITS": fmt.man_bits}


def _quantizer_constexprs(fmt: ElementFormat, scale_rule: str, rounding: str, dtype: torch.dtype) -> dict:
    """The compile-time arguments of a quantizer, for values stored as ``dtype``."""
    return dict(RCEIL=scale_rule == "rceil", ROUNDING=Rounding.named(rounding).value,
                OVERFLOW_EXP=overflow_exponent(fmt, dtype), **_format_constexprs(fmt))


def quantize_2d(x2d: torch.Tensor, layout: str, fmt: ElementFormat, scale_rule: str, rounding: str, *,
                ema2d: torch.Tensor | None = None, seed: torch.Tensor | None = None, want_values: bool = True,
                want_packed: bool = False, launch: dict | None = None):
    """Run the fused quantizer on a contiguous 2-D tensor; returns (values, packed, scales), None where not asked.
    ``seed``: the two seed words (int64, on x2d's device) that stochastic rounding reads; ``launch`` overrides the
    tile shape (keys of LAUNCH_1X32 / LAUNCH_32X1)."""
    rows, cols = x2d.shape
    device = x2d.device
    y = torch.empty_like(x2d) if want_values else x2d
    pstride = (cols + 1) // 2
    packed = torch.empty((rows, pstride), dtype=torch.uint8, device=device) if want_packed else x2d
    if layout == "1x32":
        scales_shape = (rows, triton.cdiv(cols, BLOCK_SIZE))
    else:
        scales_shape = (triton.cdiv(rows, BLOCK_SIZE), cols)
    scales = torch.empty(scales_shape, dtype=torch.uint8, device=device) if want_packed else x2d
    # Unused pointers (no EMA, no seed words, an output not asked for) point at x2d: the kernel never reads them.
    args = dict(x_ptr=x2d, ema_ptr=x2d if ema2d is None else ema2d, y_ptr=y, packed_ptr=packed, scales_ptr=scales,
                rows=rows, cols=cols, pstride=pstride, seed_ptr=x2d if seed is None else seed,
                WRITE_Y=want_values, WRITE_PACKED=want_packed, **_tensor_constexprs(x2d.dtype, rows, cols),
                **_quantizer_constexprs(fmt, scale_rule, rounding, x2d.dtype))
    if rows * cols > 0:
        if layout == "1x32":
            cfg = launch or LAUNCH_1X32
            grid = (triton.cdiv(rows * triton.cdiv(cols, BLOCK_SIZE), cfg["groups"]),)
            _quantize_1x32_kernel[grid](GROUPS=cfg["groups"], WHOLE_BLOCKS=cols % BLOCK_SIZE == 0,
                                        num_warps=cfg["num_warps"], **args)
        else:
            cfg = launch or LAUNCH_32X1
            grid = (triton.cdiv(rows, BLOCK_SIZE), triton.cdiv(cols, cfg["block_c"]))
            _quantize_32x1_kernel[grid](BLOCK_C=cfg["block_c"], num_warps=cfg["num_warps"], **args)
    return (y if want_values else None), (packed if want_packed else None), (scales if want_packed else None)


def _pairs_aligned(t: torch.Tensor, cols: int) -> bool:
    """Whether the pair kernels can read/write ``t``'s element pairs as whole words (even rows, aligned base)."""
    return cols % 2 == 0 and t.data_ptr() % (2 * t.element_size()) == 0


def quantize_both_layouts_2d(x2d: torch.Tensor, fmt: ElementFormat, scale_rule: str, rounding: str, *,
                             seeds: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
                             want_band_sums: bool = False, launch: dict | None = None) -> tuple[torch.Tensor, ...]:
    """Values of x2d quantized in 1x32 blocks (seed words ``seeds[0]``) and in 32x1 blocks (``seeds[1]``), from one
    read (an odd column count or a misaligned tensor takes two passes instead), and with ``want_band_sums`` a third
    result: reference.band_sums of x2d, summed in the kernel's order. Not for "ema" rounding."""
    rows, cols = x2d.shape
    if not _pairs_aligned(x2d, cols):
        values = tuple(quantize_2d(x2d, layout, fmt, scale_rule, rounding, seed=seed)[0]
                       for layout, seed in zip(LAYOUTS, seeds))
        return (*values, band_sums(x2d)) if want_band_sums else values
    y_rows, y_cols = torch.empty_like(x2d), torch.empty_like(x2d)
    sums = torch.empty((triton.cdiv(rows, BLOCK_SIZE), cols), dtype=torch.float32, device=x2d.device) \
        if want_band_sums else x2d
    if rows * cols > 0:
        cfg = launch or LAUNCH_BOTH_LAYOUTS
        grid = (triton.cdiv(rows, BLOCK_SIZE), triton.cdiv(cols, cfg["block_c"]))
        seed_rows, seed_cols = (x2d if seed is None else seed for seed in seeds)
        _quantize_both_layouts_kernel[grid](x_ptr=x2d, y_rows_ptr=y_rows, y_cols_ptr=y_cols, sums_ptr=sums,
                                            rows=rows, half_cols=cols // 2, seed_rows_ptr=seed_rows,
                                            seed_cols_ptr=seed_cols, BLOCK_C=cfg["block_c"],
                                            WRITE_SUMS=want_band_sums, num_warps=cfg["num_warps"],
                                            **_tensor_constexprs(x2d.dtype, rows, cols),
                                            **_quantizer_constexprs(fmt, scale_rule, rounding, x2d.dtype))
    return (y_rows, y_cols, sums) if want_band_sums else (y_rows, y_cols)


def requantize_2d(packed: torch.Tensor, scales: torch.Tensor, packed_fmt: ElementFormat, cols: int,
                  dtype: torch.dtype, fmt: ElementFormat, scale_rule: str, rounding: str, *,
                  seed: torch.Tensor | None = None, launch: dict | None = None) -> torch.Tensor:
    """A 1x32-packed tensor of ``cols`` columns, dequantized to ``dtype`` and quantized again in 32x1 blocks, in one
    pass (values of ``dtype``; an odd column count takes two passes). Not for "ema" rounding."""
    if cols % 2:
        values = dequantize_2d(packed, scales, "1x32", packed_fmt, cols, dtype)
        return quantize_2d(values, "32x1", fmt, scale_rule, rounding, seed=seed)[0]
    rows = packed.shape[0]
    y = torch.empty((rows, cols), dtype=dtype, device=packed.device)
    if rows * cols > 0:
        cfg = launch or LAUNCH_REQUANTIZE
        grid = (triton.cdiv(rows, BLOCK_SIZE), triton.cdiv(cols, cfg["block_c"]))
        _requantize_kernel[grid](packed_ptr=packed, scales_ptr=scales, y_ptr=y, rows=rows, half_cols=cols // 2,
                                 scale_stride=scales.shape[1], seed_ptr=packed if seed is None else seed,
                                 BLOCK_C=cfg["block_c"], num_warps=cfg["num_warps"],
                                 **_tensor_constexprs(dtype, rows, cols), **_format_constexprs(packed_fmt, "IN_"),
                                 **_quantizer_constexprs(fmt, scale_rule, rounding, dtype))
    return y


def dequantize_2d(packed: torch.Tensor, scales: torch.Tensor, layout: str, fmt: ElementFormat, cols: int,
                  dtype: torch.dtype, *, launch: dict | None = None) -> torch.Tensor:
    """Values of packed codes + scales, as a (rows, cols) tensor of ``dtype``; ``launch`` overrides the tile shape
    (keys of LAUNCH_DEQUANTIZE)."""
    rows = packed.shape[0]
    y = torch.empty((rows, cols), dtype=dtype, device=packed.device)
    if rows * cols > 0:
        cfg = launch or LAUNCH_DEQUANTIZE
        grid = (triton.cdiv(rows, cfg["block_r"]), triton.cdiv(cols, cfg["block_c"]))
        _dequantize_kernel[grid](packed_ptr=packed, scales_ptr=scales, y_ptr=y, rows=rows, cols=cols,
                                 pstride=packed.shape[1], scale_stride=scales.shape[1], BLOCK_R=cfg["block_r"],
                                 BLOCK_C=cfg["block_c"], num_warps=cfg["num_warps"], ROW_BLOCKS=layout == "32x1",
                                 **_tensor_constexprs(dtype, rows, cols), **_format_constexprs(fmt))
    return y
