"""Tseng, Yu, Park, "Training LLMs with MXFP4" (arXiv 2502.20586) as a standalone autograd op (a baseline recipe).

Forward in high precision: Y = X W^T + b (``F.linear`` in the input dtype, no quantization).
Backward, both GEMMs in MXFP4 (E2M1 elements, OCP ``floor`` shared scale, blocks of 32 along the reduction dim):

    dX = dY W       reduction dim C (out_features):  dY (N, C) transformed along its last dim, W (C, D) along its rows
    dW = dY^T X     reduction dim N (tokens):        dY (N, C) and X (N, D) transformed along their rows
    db = sum_N dY   in high precision

Per GEMM A B (reduction dim K): draw random signs D (+-1, length K rounded up to the Hadamard block), transform both
operands with the same signs, A' = A D H and B' = H^T D B (H = blockwise orthonormal Walsh-Hadamard, so
A' B' = A D H H^T D B = A B in exact arithmetic), quantize A' and B' with ``prescaled_quantize`` (stochastic rounding),
multiply, and divide the product by prescale^2.

``prescaled_quantize``: per block of 32, s = floor(log2 amax) - emax (OCP, amax of the *un-prescaled* block), then the
grid value is SR(prescale * x / 2^s) and the dequantized value 2^s * SR(prescale * x / 2^s). Since amax / 2^s
< 2 * 2^emax (< 8 for E2M1), prescale 3/4 keeps every scaled value <= 6 = the E2M1 max: clipping never happens, and
stochastic rounding is unbiased, E[Q(x)] = prescale * x exactly. Note that
``ops.quantize(0.75 * x, scale_rule="floor")`` is NOT the same thing: it takes the scale from the amax of 0.75 x, which
drops one binade when amax's significand is below 4/3, and then clips (e.g. amax = 1.2 * 2^k). Hence this module
computes the scale itself, from ``reference`` building blocks (pure PyTorch, runs on any device; the Triton kernels are
not used). The stochastic rounding uses the project's counter-based hash (``reference.uniform_from_index``) seeded by
``ops.seed_words`` from torch's generator of the tensor's device.

Tails: the reduction dim is zero-padded to a multiple of ``hadamard_block`` before the transform. Because the padded
dim is contracted by the GEMM, nothing has to be sliced back: zero rows/columns of both operands, mixed by the same
orthonormal transform, still contribute exactly zero in exact arithmetic. Any N, C, D therefore works.
``random_hadamard`` returns the padded (longer) tensor for the same reason.

Details that the paper leaves open, and what we chose:
- Signs are shared between the two operands of one GEMM (required for the cancellation) and drawn independently for
  the two GEMMs (dX and dW), anew on every backward call, from torch's default (CPU) generator, so
  ``torch.manual_seed`` reproduces them on every device. Draw order per backward: signs(dX GEMM), SR seed dY, SR seed W,
  signs(dW GEMM), SR seed dY, SR seed X (each only if that gradient is needed).
- The transform is T(t) = t D H along the chosen dim: signs first, then the normalized Sylvester Hadamard (H symmetric,
  entries +-1/sqrt(block)), applied per contiguous block of ``hadamard_block`` elements.
- Scale rule: OCP floor, computed exactly from the fp32 amax of the transformed operand (not in bf16).
- Prescale: applied after the scale is chosen (inside the quantizer) and undone once, after the GEMM, by dividing the
  fp32 product by prescale^2 (16/9 for 3/4).
- Stochastic rounding of both operands of both GEMMs; the dY used by the two GEMMs is quantized twice, independently
  (different transform, different blocking).
- Precision: the transform, quantization and GEMMs run in fp32; gradients are cast to the dtypes of x and W.
- ``hadamard_block`` 64 (power of two >= 2); MX blocks of 32 are unchanged (with a block < 32 the MX blocks span several
  Hadamard blocks, which is fine).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .amp import apply_linear_op
from .mx.formats import get_format
from .mx.ops import Seed, seed_words
from .mx.reference import (_blocked, _unblocked, magnitude_limit, pow2, round_scaled, shared_exponent,
                           uniform_from_index)
from .recipes import Recipe, register_recipe
from .registry import register_linear_op

__all__ = ["TsengConfig", "tseng_linear", "TsengLinearFunction", "hadamard_matrix", "random_hadamard",
           "random_signs", "prescaled_quantize", "padded_length"]


@dataclass(frozen=True)
class TsengConfig:
    """fmt: element format of the backward GEMM operands; hadamard_block: size of the random Hadamard transform
    (power of two >= 2); prescale: factor applied to the scaled block before stochastic rounding (3/4 for E2M1:
    (2 - 2^-m) / 2 in general is the largest that never clips), undone after the GEMM; rht: apply the random Hadamard
    transform (False: plain MXFP4 backward with prescaled stochastic rounding)."""

    fmt: str = "e2m1"
    hadamard_block: int = 64
    prescale: float = 0.75
    rht: bool = True

    def __post_init__(self) -> None:
        get_format(self.fmt)  # raises a ValueError naming the valid formats
        b = self.hadamard_block
        if isinstance(b, bool) or not isinstance(b, int) or b < 2 or (b & (b - 1)) != 0:
            raise ValueError(f"TsengConfig.hadamard_block must be a power of two >= 2 (Sylvester construction); "
                             f"got {b!r}")
        p = self.prescale
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 < p <= 1.0:
            raise ValueError(f"TsengConfig.prescale must be a finite number in (0, 1] (3/4 for E2M1); got {p!r}")
        if not isinstance(self.rht, bool):
            raise ValueError(f"TsengConfig.rht must be a bool; got {self.rht!r}")


@functools.lru_cache(maxsize=64)
def _hadamard_cached(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(device=device, dtype=dtype)


def hadamard_matrix(n: int, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalized Walsh-Hadamard matrix of size n (power of two) by Sylvester construction: symmetric, H H^T = I.
    Cached per (n, device, dtype); do not modify the returned tensor in place."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (n & (n - 1)) != 0:
        raise ValueError(f"hadamard_matrix needs a power of two n >= 1; got {n!r}")
    return _hadamard_cached(n, torch.device(device) if device is not None else torch.device("cpu"), dtype)


def padded_length(n: int, block: int) -> int:
    """n rounded up to a multiple of ``block``: the length of a transformed dim (and of its sign vector)."""
    return -(-n // block) * block


def random_signs(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """n random +-1.0 (fp32), drawn from torch's default CPU generator (so torch.manual_seed repeats them on any
    device), then moved to ``device``."""
    signs = torch.randint(0, 2, (n,), dtype=torch.int64).to(torch.float32) * 2.0 - 1.0
    return signs.to(device) if device is not None else signs


def random_hadamard(t: torch.Tensor, dim: int, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Random Hadamard transform of ``t`` along ``dim``: zero-pad dim to a multiple of ``block``, multiply by the +-1
    ``signs`` (length = padded_length(t.shape[dim], block)), then apply the orthonormal Hadamard of size ``block`` to
    every contiguous block of ``block`` elements. Returns the padded result (fp32, or fp64 for fp64 input).

    Along a dim of length K with sign matrix D this is t D H (dim last). Applying it to both operands of a GEMM along
    the reduction dim with the same signs leaves the product unchanged: for A (M, K), B (K, P),
    random_hadamard(A, -1, s, b) @ random_hadamard(B, 0, s, b) = A D H H^T D B = A B. Do not slice the result back:
    the padded entries carry information; the padding only disappears through the contraction.
    """
    dim = dim % t.dim()
    n = t.shape[dim]
    n_pad = padded_length(n, block)
    if signs.shape != (n_pad,):
        raise ValueError(f"signs must have shape ({n_pad},) for a dim of length {n} and block {block}; "
                         f"got {tuple(signs.shape)}")
    dtype = torch.promote_types(t.dtype, torch.float32)
    moved = t.to(dtype).movedim(dim, -1)
    if n_pad != n:
        moved = F.pad(moved, (0, n_pad - n))
    moved = moved * signs.to(device=t.device, dtype=dtype)
    h = hadamard_matrix(block, t.device, dtype)
    out = (moved.reshape(*moved.shape[:-1], n_pad // block, block) @ h).reshape(moved.shape)
    return out.movedim(-1, dim)


def prescaled_quantize(x2d: torch.Tensor, layout: str, fmt: str = "e2m1", prescale: float = 0.75, *,
                       seed: Seed | None = None) -> torch.Tensor:
    """MX quantization with stochastic rounding of ``prescale * x``, shared scale taken from the un-prescaled block:
    returns 2^s * SR(prescale * x / 2^s) in fp32, s = floor(log2 amax(x)) - emax (OCP) per block of 32
    (``layout`` "1x32": along a row; "32x1": down a column). E[result] = prescale * x; with prescale 3/4 and E2M1,
    |prescale * x / 2^s| <= 6 always, so the format's clamp never acts. ``seed``: two seed words (or a tensor of them on
    x2d's device); None: drawn from torch's generator of that device. Non-finite blocks are not special-cased (gradients
    are assumed finite)."""
    element = get_format(fmt)
    if x2d.dim() != 2:
        raise ValueError(f"prescaled_quantize expects a 2-D tensor; got shape {tuple(x2d.shape)}")
    seed = seed_words(seed, "stochastic", x2d.device)
    rows, cols = x2d.shape
    xb = _blocked(x2d.float(), layout)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    s = shared_exponent(amax, element, "floor")
    v = xb * pow2(-s) * prescale
    index = torch.arange(rows * cols, device=x2d.device).view(rows, cols)
    uniform = uniform_from_index(_blocked(index, layout), seed)
    grid = round_scaled(v, element, "stochastic", limit=magnitude_limit(s, element, torch.float32), uniform=uniform)
    return _unblocked(grid * pow2(s), layout, rows, cols)


def _quantized_gemm(a: torch.Tensor, b: torch.Tensor, config: TsengConfig) -> torch.Tensor:
    """a (M, K) @ b (K, P) with both operands randomly Hadamard-transformed along K (shared fresh signs), MX-quantized
    along K (a: 1x32, b: 32x1) with prescaled stochastic rounding; the prescale is undone on the fp32 product."""
    if config.rht:
        signs = random_signs(padded_length(a.shape[1], config.hadamard_block), a.device)
        a = random_hadamard(a, 1, signs, config.hadamard_block)
        b = random_hadamard(b, 0, signs, config.hadamard_block)
    aq = prescaled_quantize(a.float().contiguous(), "1x32", config.fmt, config.prescale)
    bq = prescaled_quantize(b.float().contiguous(), "32x1", config.fmt, config.prescale)
    return (aq @ bq) / (config.prescale * config.prescale)


class TsengLinearFunction(torch.autograd.Function):
    """Y = X W^T + b in high precision; dX = Q(dY H)Q(H^T W), dW = Q(H^T dY)^T Q(H^T X) (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: TsengConfig):
        out = F.linear(x, weight, bias)
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.config = config
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x if need_dw else None, weight if need_dx else None)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        config: TsengConfig = ctx.config
        x, weight = ctx.saved_tensors
        dy = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _quantized_gemm(dy, weight, config).to(ctx.x_dtype).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            x2d = x.reshape(-1, ctx.x_shape[-1])
            grad_w = _quantized_gemm(dy.t(), x2d, config).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)
        return grad_x, grad_w, grad_b, None


@register_linear_op("tseng", TsengConfig)
def tseng_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 config: TsengConfig | None = None) -> torch.Tensor:
    """Linear layer with the Tseng et al. MXFP4 backward. x (..., D), weight (C, D), bias (C,) or None -> (..., C).

    Under autocast, x / weight / bias are cast to the autocast dtype first (as QLinear does) and the op runs with
    autocast off, so the forward is F.linear in that dtype and the gradients flow back through the casts."""
    config = config if config is not None else TsengConfig()
    if not isinstance(config, TsengConfig):
        raise TypeError(f"config must be a TsengConfig; got {type(config).__name__}")
    return apply_linear_op(TsengLinearFunction, "tseng_linear", x, weight, bias, config)


register_recipe(Recipe("tseng", op=TsengConfig()))
