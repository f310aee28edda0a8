"""Xi, Li, Chen, Zhu, "Training Transformers with 4-bit Integers" (NeurIPS 2023, arXiv 2306.11987) as a standalone
autograd op: the "INT4, per-tensor" baseline of TetraJet's Table 2. Fake quantization in PyTorch (values are INT4
grid values times a per-tensor scale, the GEMMs run in fp32), with the recipe's structure:

Forward, Hadamard quantizer (HQ), Y = HQ(X) HQ(W)^T + b:
    X (N, D) and W (C, D) are both transformed along the reduction dim D by the same block-diagonal Hadamard matrix
    H = BlockDiag(H_b, ..., H_b) (normalized Sylvester H_b, b = ``hadamard_block``), then each is quantized to INT4
    with ONE scale for the whole tensor: q = clamp(round(t / s), -8, 7), s = amax(|t|) / 7. Since H H^T = I, the
    transform cancels in the product: (X H)(W H)^T = X W^T in exact arithmetic.

Backward (straight-through through the rounding, so the gradients are those of Y = X~ W~^T with X~ = HQ(X) H^T,
W~ = HQ(W) H^T, i.e. the forward network actually run):
    dX = BS-LSS(dY) HQ(W) H^T               (sampling scores ||row of split dY||)
    dW = BS-LSS(dY)^T HQ(X) H^T             (sampling scores ||row of split dY|| * ||row of HQ(X)||, leverage scores)
    db = sum_N dY                            in high precision
  Bit splitting (BS): per-tensor scale s = amax(|dY|) / 98, v = dY / s in [-98, 98]; high part h = round(v / 14)
  (deterministic, in [-7, 7]), low part l = SR(v - 14 h) (stochastic rounding of a residual in [-7, 7], so l in
  [-7, 7]); dY ~ 14 s h + s l: two INT4 matrices stacked to (2N, C), i.e. dY at ~7.6 bits (197 levels) with unbiased
  rounding, E[14 h + l] = v exactly (no clamp ever acts).
  Leverage score sampling (LSS): the 2N stacked rows are kept independently with probabilities p_i = min(1, c l_i),
  c chosen so that sum p_i = ``lss_ratio`` * 2N (N by default, so the sampled GEMM costs one INT4 GEMM of the
  original size), and kept rows are divided by p_i: unbiased, E[estimate] = the bit-split dY. Rows with score 0
  contribute nothing and are never kept. For dW the score of row i is the leverage score ||split dY_i|| ||HQ(X)_i||
  of the rank-one term it contributes to dY^T X; for dX only ||split dY_i|| (every row meets the same W).
  One bit split of dY serves both gradients; the two GEMMs sample independently.

What is faithful and what is simplified (for the method config's comment):
- Faithful: HQ in the forward for both X and W along the reduction dim, block-diagonal normalized Hadamard, INT4
  [-8, 7] per-tensor scale, transform cancelling in the GEMM; backward reusing the forward's quantized operands
  HQ(X), HQ(W) (STE) and mapping back by H^T; bit splitting of dY into two INT4 halves with the published level
  counts (14 x 14: h, l in [-7, 7], scale amax/98) and stochastic rounding of the low half; leverage score
  sampling of the 2N split rows down to N expected rows with probabilities capped at 1 and the budget redistributed
  over the uncapped rows, reweighting by 1/p; LSS used for both dW (scores ||dY_i|| ||X_i||) and dX (scores
  ||dY_i||), as in the authors' code (kernels "quantize_grad_weight_LSS+LSQ", "quantize_grad_input_LSS+LSQ").
- Simplified, forward scale: the paper learns the per-tensor step size of X and W with LSQ (Esser et al.). Here it is
  the deterministic max scale s = amax / 7 (round to nearest, nothing clipped), recomputed each call; no step-size
  parameter, no LSQ gradient for it, and the STE passes the gradient everywhere (LSQ zeroes it where the input was
  clipped; with the max scale nothing is clipped, so this is the same STE).
- Simplified, bit splitting: the authors' code clamps both halves to [-6, 6] (which can clip, slightly biased);
  here h is in [-7, 7] and the residual in [-7, 7] needs no clamp, so the split is exactly unbiased.
- Simplified, execution: fake quantization; the 2N-row sampled GEMM is evaluated as the sum of the kept, reweighted
  halves (identical in exact arithmetic); the GEMMs and transforms run in fp32 (fp64 for fp64 inputs) and the
  gradients are cast to the dtypes of x and W. The dX GEMM's W operand is the forward INT4 HQ(W) (as the authors
  reuse it); no further transform of dY along C is applied.
- Default block size: 32, the group_size of the authors' HQ kernel benchmark (Cuda_LSS_HQ/quantize_forward_LSQ+HQ);
  the paper's text was not checked for the exact value used in its ViT runs.
- Randomness: stochastic rounding and Bernoulli sampling draw from torch's default generator of the tensors' device
  (torch.manual_seed reproduces a CPU run); draw order per backward: SR of the low half, then the dX sample, then
  the dW sample (each only if needed).
- Tails: D is zero-padded to a multiple of the block before the transform; the padded columns are contracted away in
  the forward and sliced off the gradients after the inverse transform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .amp import apply_linear_op
from .recipes import Recipe, register_recipe
from .registry import register_linear_op
from .tseng import padded_length, random_hadamard

__all__ = ["Int4Config", "int4_linear", "Int4LinearFunction", "int4_quantize", "hadamard_transform",
           "hadamard_quantize", "BitSplit", "bit_split", "leverage_probabilities", "leverage_sample",
           "lss_quantize", "INT4_MIN", "INT4_MAX", "SPLIT_BASE"]

INT4_MIN, INT4_MAX = -8, 7
SPLIT_BASE = 14  # high-half step in units of the low-half step (the authors' 2^4 - 2)
_SPLIT_RANGE = 7 * SPLIT_BASE  # |dY| / s <= 98


@dataclass(frozen=True)
class Int4Config:
    """hadamard_block: size b of the blocks of the forward Hadamard transform (power of two >= 2);
    lss: leverage score sampling of the bit-split dY in the backward (False: keep all 2N split rows);
    lss_ratio: expected fraction of the 2N split rows kept (0.5: N rows, the published budget)."""

    hadamard_block: int = 32
    lss: bool = True
    lss_ratio: float = 0.5

    def __post_init__(self) -> None:
        b = self.hadamard_block
        if isinstance(b, bool) or not isinstance(b, int) or b < 2 or (b & (b - 1)) != 0:
            raise ValueError(f"Int4Config.hadamard_block must be a power of two >= 2; got {b!r}")
        if not isinstance(self.lss, bool):
            raise ValueError(f"Int4Config.lss must be a bool; got {self.lss!r}")
        r = self.lss_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0.0 < r <= 1.0:
            raise ValueError(f"Int4Config.lss_ratio must be a finite number in (0, 1]; got {r!r}")


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def int4_quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor symmetric INT4, round to nearest: returns (q, s) with q = clamp(round(t / s), -8, 7) (integer
    values, float dtype) and s = amax(|t|) / 7 (a 0-d tensor; 1 for an all-zero tensor). Dequantized: q * s."""
    t = t.to(_work_dtype(t))
    amax = t.abs().amax()
    scale = torch.where(amax > 0, amax / INT4_MAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(t / scale), INT4_MIN, INT4_MAX)
    return q, scale


def hadamard_transform(t: torch.Tensor, block: int, dim: int = -1) -> torch.Tensor:
    """t H along ``dim``: zero-pad to a multiple of ``block``, apply the normalized Hadamard of size ``block`` to
    every contiguous block. H is symmetric and orthonormal, so applying it twice is the identity (on the padded
    tensor). Returns the padded tensor (fp32, or fp64 for fp64 input)."""
    n_pad = padded_length(t.shape[dim], block)
    ones = torch.ones(n_pad, dtype=torch.float32, device=t.device)
    return random_hadamard(t, dim, ones, block)


def hadamard_quantize(t: torch.Tensor, block: int, dim: int = -1) -> torch.Tensor:
    """Hadamard quantizer HQ: per-tensor INT4 of t H (transform along ``dim``), dequantized: q * s, padded along
    ``dim`` to a multiple of ``block``. HQ(X) HQ(W)^T (both along the reduction dim) approximates X W^T."""
    q, s = int4_quantize(hadamard_transform(t, block, dim))
    return q * s


class BitSplit(NamedTuple):
    """dY ~ scale * (SPLIT_BASE * high + low); high, low: integer values in [-7, 7] (float dtype)."""

    high: torch.Tensor
    low: torch.Tensor
    scale: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return self.scale * (SPLIT_BASE * self.high + self.low)

    def stacked(self) -> torch.Tensor:
        """The (2N, C) dequantized halves [scale * 14 * high; scale * low], whose row-pair sums give dequantize()."""
        return torch.cat([self.scale * SPLIT_BASE * self.high, self.scale * self.low], 0)


def bit_split(g: torch.Tensor, *, uniform: torch.Tensor | None = None) -> BitSplit:
    """Bit splitting of a 2-D gradient into two INT4 halves with one per-tensor scale s = amax / 98: high =
    round(g / (14 s)) in [-7, 7] (nearest), low = SR(g / s - 14 high) in [-7, 7] (stochastic rounding, up with
    probability equal to the fractional part; ``uniform`` in [0, 1) of g's shape overrides the draw). Unbiased:
    E[dequantize()] = g exactly."""
    if g.dim() != 2:
        raise ValueError(f"bit_split expects a 2-D tensor; got shape {tuple(g.shape)}")
    g = g.to(_work_dtype(g))
    amax = g.abs().amax()
    scale = torch.where(amax > 0, amax / _SPLIT_RANGE, torch.ones_like(amax))
    v = torch.clamp(g / scale, -_SPLIT_RANGE, _SPLIT_RANGE)  # only guards fp rounding of amax / scale
    high = torch.round(v / SPLIT_BASE)
    resid = v - SPLIT_BASE * high
    if uniform is None:
        uniform = torch.rand(g.shape, device=g.device, dtype=g.dtype)
    floor = torch.floor(resid)
    low = floor + (uniform.to(g.dtype) < (resid - floor)).to(g.dtype)
    low = torch.clamp(low, -7, 7)  # exact no-op: |resid| <= 7 up to fp rounding
    return BitSplit(high, low, scale)


def leverage_probabilities(scores: torch.Tensor, budget: float) -> torch.Tensor:
    """Inclusion probabilities p_i = min(1, c * scores_i) with sum p_i = budget (the expected sample size), the
    budget of the capped rows redistributed over the rest; zero scores get p = 0. If at most ``budget`` scores are
    positive, every positive one gets p = 1. Computed without reading anything back to the host (no sync)."""
    if scores.dim() != 1:
        raise ValueError(f"leverage_probabilities expects a 1-D tensor; got shape {tuple(scores.shape)}")
    scores = scores.to(torch.float64)
    pos = scores > 0
    n_pos = pos.sum()
    # water filling: with the k largest capped at 1, the rest get c_k * score, c_k = (budget - k) / (sum of the rest);
    # the smallest k whose (k+1)-th largest score stays below 1 is the solution (a tie is capped or not together).
    # The positive scores come first in descending order; the others are zeroed so the sums from the end start with
    # exact zeros, and positions k >= n_pos are never chosen.
    k = torch.arange(scores.numel(), dtype=scores.dtype, device=scores.device)
    ordered = torch.sort(scores, descending=True).values
    ordered = torch.where(k < n_pos, ordered, torch.zeros_like(ordered))
    rest = ordered.flip(0).cumsum(0).flip(0)  # rest[k] = sum of ordered[k:]
    c = (budget - k) / rest
    ok = (ordered * c < 1.0) & (k < budget) & (k < n_pos)
    first = torch.where(ok.any(), torch.argmax(ok.to(torch.uint8)), n_pos - 1).clamp(min=0)
    water = torch.clamp(scores * c[first], max=1.0)
    return torch.where(n_pos <= budget, pos.to(scores.dtype), water)


def leverage_sample(stacked: torch.Tensor, scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep row i of ``stacked`` (2N, C) with probability p_i = leverage_probabilities(scores, ratio * 2N), divide kept
    rows by p_i, drop the rest; return the (N, C) sum of the two halves. Unbiased for the sum of the halves."""
    rows = stacked.shape[0]
    if rows % 2:
        raise ValueError(f"leverage_sample expects an even number of stacked rows; got {rows}")
    p = leverage_probabilities(scores, ratio * rows).to(device=stacked.device)
    keep = torch.rand(rows, dtype=torch.float64, device=stacked.device) < p
    weight = torch.where(keep, 1.0 / p.clamp_min(1e-300), torch.zeros_like(p)).to(stacked.dtype)
    sampled = stacked * weight.unsqueeze(1)
    return sampled[: rows // 2] + sampled[rows // 2:]


def lss_quantize(g: torch.Tensor | None, row_weight: torch.Tensor | None = None, ratio: float = 0.5, *,
                 split: BitSplit | None = None) -> torch.Tensor:
    """Bit splitting + leverage score sampling of a 2-D gradient g (N, C): an unbiased estimate of g (N, C) whose
    product with any (N, D) or (C, D) matrix is an INT4-GEMM-able sampled product. Row scores: ||split row||, times
    ``row_weight`` (N,) (e.g. the norms of the rows of the other operand of dW = g^T X) for both halves. ``split``:
    reuse an existing bit split of g (g is then ignored and may be None)."""
    if split is None:
        if g is None:
            raise ValueError("lss_quantize needs g or split")
        split = bit_split(g)
    stacked = split.stacked()
    scores = stacked.norm(dim=1)
    if row_weight is not None:
        scores = scores * torch.cat([row_weight, row_weight]).to(scores.dtype)
    return leverage_sample(stacked, scores, ratio)


def _grad_estimate(split: BitSplit, row_weight: torch.Tensor | None, config: Int4Config) -> torch.Tensor:
    if not config.lss:
        return split.dequantize()
    return lss_quantize(None, row_weight, config.lss_ratio, split=split)


class Int4LinearFunction(torch.autograd.Function):
    """Y = HQ(X) HQ(W)^T + b; dX = BS-LSS(dY) HQ(W) H^T, dW = BS-LSS(dY)^T HQ(X) H^T (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: Int4Config):
        block = config.hadamard_block
        x2d = x.reshape(-1, x.shape[-1])
        xq = hadamard_quantize(x2d, block, -1)
        wq = hadamard_quantize(weight, block, -1)
        out = xq @ wq.t()
        if bias is not None:
            out = out + bias.to(out.dtype)
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.config = config
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.has_bias = bias is not None
        ctx.save_for_backward(xq if need_dw else None, wq if need_dx else None)
        return out.to(x.dtype).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        config: Int4Config = ctx.config
        xq, wq = ctx.saved_tensors
        d = ctx.x_shape[-1]
        dy = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            split = bit_split(dy)
            if ctx.needs_input_grad[0]:
                g = _grad_estimate(split, None, config).to(wq.dtype)
                gx = hadamard_transform(g @ wq, config.hadamard_block, -1)[:, :d]
                grad_x = gx.to(ctx.x_dtype).view(ctx.x_shape)
            if ctx.needs_input_grad[1]:
                g = _grad_estimate(split, xq.norm(dim=1), config).to(xq.dtype)
                gw = hadamard_transform(g.t() @ xq, config.hadamard_block, -1)[:, :d]
                grad_w = gw.to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)
        return grad_x, grad_w, grad_b, None


@register_linear_op("int4", Int4Config)
def int4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: Int4Config | None = None) -> torch.Tensor:
    """Linear layer trained as in Xi et al. 2023 (INT4 per-tensor). x (..., D), weight (C, D), bias (C,) or None ->
    (..., C) in x's dtype.

    Under autocast, x / weight / bias are cast to the autocast dtype first (as QLinear does) and the op runs with
    autocast off; the quantizers and GEMMs themselves run in fp32."""
    config = config if config is not None else Int4Config()
    if not isinstance(config, Int4Config):
        raise TypeError(f"config must be an Int4Config; got {type(config).__name__}")
    return apply_linear_op(Int4LinearFunction, "int4_linear", x, weight, bias, config)


register_recipe(Recipe("int4", op=Int4Config()))
