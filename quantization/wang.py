"""Wang et al. 2025, "Optimizing Large Language Model Training Using FP4 Quantization" (arXiv 2501.17116), as a
standalone simulated-quantization autograd op (docs/methods.md#wang-et-al).

What is implemented (``wang_linear``):

* Forward GEMM in FP4 (E2M1 by default) with absmax scaling: activations token-wise (one scale per row of the
  (N, D) token matrix), weights channel-wise (one scale per output channel = row of W (C, D)); scale = absmax /
  fmt.max_value (6 for E2M1), no power-of-two restriction on the scale; round to nearest on the element grid with
  ties away from zero (``absmax_quantize``). A row of zeros has scale 0 and quantizes to zeros.
* Outlier clamping + compensation of the activations: t = the ``outlier_quantile`` (0.99) quantile of |X| over the
  whole tensor (one threshold per tensor, all leading dims flattened; not per token), Xc = clamp(X, -t, t), and
  Y = Q(Xc) Q(W)^T + (X - Xc) Q(W)^T + b, the residual product computed in the input's precision (fp32, or the
  autocast dtype the caller cast to). With ``outlier_residual=False`` the residual term is dropped (clamp only).
  The quantile is the 'linear' one (numpy's default method) of this module's own definition (see
  ``outlier_threshold``): the two order statistics exactly, by a two-pass radix select on the fp32 bit patterns of
  |X| (``torch.bincount`` histograms of the high and then the low 16 bits), O(n) in wide GPU ops, no size limit
  (``torch.quantile`` has refused inputs above 2^24 elements in many torch versions, and CUDA ``kthvalue`` on one
  huge row runs in essentially one thread block), no sampling; then the interpolation in float64, rounded once to
  float32, the same on every device and torch version. ``outlier_quantile=1`` disables clamping.
* Backward GEMMs in high precision (the dtype of the forward operands: fp32, or BF16 under the caller's autocast).
  Wang et al. quantize the forward GEMMs to FP4 and keep the gradients of the backward pass in higher precision
  (their framework uses FP8 for them; this project has no FP8 simulation, so we simply leave them unquantized).
* Weight gradient with the differentiable gradient estimator (DGE): dL/dW = (dY^T X) * f'(W / s_w), with
  f'(x) = (1/k) |2 x / delta - 1|^(1/k - 1), x = the position of W/s_w inside its quantization interval
  [lower, lower + delta) of the signed grid (+-grid, e.g. [-6, -4, ..., -0.5, 0, 0.5, ..., 6]), k = ``dge_k``,
  clamped above at ``dge_clamp``. f' is 1/k at grid points, grows toward the interval midpoint (the rounding decision
  boundary, where it would be infinite) and is clamped there. The top of the grid (|W/s| = max_value) is taken as
  the end of the last interval (f' = 1/k). The scale s_w is treated as a constant (no gradient through absmax).
  ``dge_derivative`` exposes f'.
* Activation gradient: straight-through estimator for the quantizer (dQ(Xc)/dXc = I), so dX = dY Q(W) where the
  clamp is exact through the residual path (d/dX [Q(Xc) + X - Xc] = 1 everywhere); the threshold t is a constant.
  Without the residual the clamp's own gradient applies (outliers get zero gradient).
* db = sum of dY over tokens.

Choices the paper leaves open, and simplifications:
* dW uses the full-precision activations X (dY^T X), not the quantized operand Q(Xc) + residual: the backward GEMMs
  run on unquantized operands; dX uses Q(W), the weight the forward used (STE through Q).
* Quantization arithmetic is done in float32; the dequantized operands are cast back to the input dtype.
* The residual GEMM is dense (a real implementation would use a sparse kernel for the ~1% outliers).
* Differences from the authors' public simulation code (MS-AMP based; noted, not followed: this module implements the
  paper's description, as above): there the clamp is two-sided on the signed values (the 0.01 and 0.99 quantiles of
  X, not of |X|), the residual is added to the quantized operand before one GEMM, and the scale factor comes from
  MS-AMP's ScalingMeta (a power of two, as we read MS-AMP) rather than absmax / 6.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .amp import apply_linear_op
from .mx.formats import ElementFormat, get_format
from .recipes import Recipe, register_recipe
from .registry import register_linear_op

@dataclass(frozen=True)
class WangConfig:
    fmt: str = "e2m1"
    dge_k: float = 5.0
    dge_clamp: float = 3.0
    outlier_quantile: float = 0.99
    outlier_residual: bool = True

    def __post_init__(self) -> None:
        get_format(self.fmt)  # raises ValueError naming the format
        if not (isinstance(self.dge_k, (int, float)) and self.dge_k > 1.0):
            # k > 1 so that the exponent 1/k - 1 is negative (f' >= 1/k, integrable singularity at the midpoint).
            raise ValueError(f"dge_k must be a number > 1, got {self.dge_k!r}")
        if not (isinstance(self.dge_clamp, (int, float)) and self.dge_clamp > 0):
            raise ValueError(f"dge_clamp must be a number > 0, got {self.dge_clamp!r}")
        if not (isinstance(self.outlier_quantile, (int, float)) and 0.0 < self.outlier_quantile <= 1.0):
            raise ValueError(f"outlier_quantile must be in (0, 1], got {self.outlier_quantile!r}")
        if not isinstance(self.outlier_residual, bool):
            raise ValueError(f"outlier_residual must be a bool, got {self.outlier_residual!r}")


def _format(fmt: "str | ElementFormat") -> ElementFormat:
    return get_format(fmt) if isinstance(fmt, str) else fmt


def round_to_grid(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Round to the nearest value of +-grid (grid: ascending non-negative magnitudes), ties away from zero;
    magnitudes beyond the top of the grid saturate to it."""
    mids = (grid[1:] + grid[:-1]) / 2
    mag = t.abs()
    idx = torch.searchsorted(mids, mag.contiguous(), right=True)  # |t| == midpoint goes to the upper point
    return torch.copysign(grid[idx], t)


def absmax_quantize(t: torch.Tensor, dim: int = -1, fmt: "str | ElementFormat" = "e2m1") -> torch.Tensor:
    """Absmax-scaled round-to-nearest quantization; returns dequantized values in ``t``'s dtype.

    ``dim`` is the dimension the absmax is taken over, so there is one scale per slice along the other dimensions:
    dim=-1 on the (N, D) token matrix gives token-wise scales, dim=-1 on W (C, D) channel-wise (per output channel).
    scale = absmax / fmt.max_value; all-zero slices stay zero.
    """
    f = _format(fmt)
    x = t.float()
    grid = torch.tensor(f.grid(), dtype=torch.float32, device=t.device)
    scale = x.abs().amax(dim=dim, keepdim=True) / f.max_value
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = round_to_grid(x / safe, grid) * scale
    return q.to(t.dtype)


def _scaled(t: torch.Tensor, dim: int, fmt: ElementFormat) -> torch.Tensor:
    """t / scale (float32) with the absmax scale of ``absmax_quantize``; all-zero slices give zeros."""
    x = t.float()
    scale = x.abs().amax(dim=dim, keepdim=True) / fmt.max_value
    return x / torch.where(scale > 0, scale, torch.ones_like(scale))


def dge_derivative(w_scaled: torch.Tensor, grid, k: float = 5.0, clamp: float = 3.0) -> torch.Tensor:
    """f'(x) = (1/k) |2x/delta - 1|^(1/k - 1), clamped at ``clamp``, for values in scaled units.

    ``grid``: the non-negative magnitudes (list or tensor, ascending); intervals are those of the signed grid.
    x = w_scaled - lower in [0, delta), lower = the largest grid point <= w_scaled; values at or beyond the top
    of the grid belong to the last interval (at +max, x = delta). Returns float32.
    """
    g = torch.as_tensor(grid, dtype=torch.float32, device=w_scaled.device)
    signed = torch.cat([-g.flip(0)[:-1], g]) if g[0] == 0 else torch.cat([-g.flip(0), g])
    w = w_scaled.float().contiguous()
    idx = (torch.searchsorted(signed, w, right=True) - 1).clamp(0, signed.numel() - 2)
    lower, upper = signed[idx], signed[idx + 1]
    delta = upper - lower
    u = (2 * (w - lower) / delta - 1).abs()
    # u = 0 (exact midpoint) gives inf ** negative -> inf, clamped below.
    return ((1.0 / k) * u.pow(1.0 / k - 1.0)).clamp(max=clamp)


_HIGH_BINS = 1 << 15  # bits 16..30 of a float32 with the sign bit clear
_LOW_BINS = 1 << 16   # bits 0..15


def _two_order_statistics(bits: torch.Tensor, k_lo: int, k_hi: int) -> torch.Tensor:
    """The k_lo-th and k_hi-th smallest (0-based, k_hi in {k_lo, k_lo + 1}) of ``bits``, as an int32 tensor (2,).

    ``bits``: 1-D int32, the bit patterns of non-negative float32 values (sign bit clear), so integer order is value
    order (+0 < subnormals < normals < +inf < NaN patterns). Radix select: pass 1 histograms the high 16 bits
    (15 of them vary) and finds the bucket of each rank by a cumulative sum; pass 2 histograms the low 16 bits of
    the elements in those buckets (rank k_hi = k_lo + 1 can lie in the next non-empty bucket, with only empty buckets
    in between: the pass-2 key puts that bucket's elements after the first's)."""
    high = bits >> 16
    hist = torch.bincount(high, minlength=_HIGH_BINS)
    cum = hist.cumsum(0)  # cum[b] = number of elements in buckets <= b
    b_lo = torch.searchsorted(cum, k_lo, right=True)  # the first bucket with cum > k: holds rank k
    b_hi = torch.searchsorted(cum, k_hi, right=True)
    before = (cum - hist).gather(0, b_lo.view(1))  # elements in buckets < b_lo, shape (1,)
    cand = bits[(high >= b_lo) & (high <= b_hi)]  # boolean selection: one host sync (its size)
    key = (cand & 0xFFFF) | ((cand >> 16) != b_lo).to(torch.int32) << 16
    cum2 = torch.bincount(key, minlength=2 * _LOW_BINS).cumsum(0)
    j = torch.searchsorted(cum2, torch.cat([k_lo - before, k_hi - before]), right=True)
    bucket = torch.where(j >= _LOW_BINS, b_hi, b_lo)
    return ((bucket << 16) | (j & 0xFFFF)).to(torch.int32)


def outlier_threshold(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of |x| over all elements ('linear' interpolation), as a 0-d float32 tensor on x's device.

    Definition, for the n values of |x| (bf16/fp16 widened to float32 exactly) in ascending order v_0 <= ... <=
    v_{n-1}: rank r = q * (n - 1) in float64 (q as given, not rounded to float32), lo = floor(r), hi = ceil(r); the
    result is v_lo where v_lo == v_hi (so an integral rank, and a rank between two equal values, return that value
    exactly, inf included), otherwise v_lo + (r - lo) * (v_hi - v_lo) evaluated in float64, one IEEE operation at a
    time, and rounded to float32. So it is within one float32 ulp of the exact real-valued interpolation (the float64
    steps add a few float64 ulps at most), bit for bit the same on every device and torch version, and never outside
    [v_lo, v_hi].

    NaN counts as larger than +inf (NaN bit patterns sort above inf's): the result is NaN only when a selected rank
    lands among the NaNs (the top ones), otherwise it is the quantile of the values with the NaNs counted in n.
    (``torch.quantile`` returns NaN whenever any element is NaN.)

    The two order statistics are exact: a radix select on the float32 bit patterns of |x| (``_two_order_statistics``:
    two ``torch.bincount`` histograms, cumulative sums, ``searchsorted``), O(n) with a handful of elementwise passes
    and small tensors. Host syncs on CUDA: the boolean selection of pass 2 (one), and ``torch.bincount`` itself reads
    its input's min and max on the host (two per call, two calls); nothing else waits on the device.

    Raises ValueError for an empty x or q outside [0, 1].
    """
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    # |x| as float32 bit patterns: clearing the sign bit is abs() (NaN included), and makes the int32 values
    # non-negative and ordered like the magnitudes.
    bits = x.detach().float().reshape(-1).view(torch.int32) & 0x7FFFFFFF
    n = bits.numel()
    if n == 0:
        raise ValueError("outlier_threshold of an empty tensor")
    rank = q * (n - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    v = _two_order_statistics(bits, lo, hi).view(torch.float32).double()
    # Separate tensor ops, so each is one correctly rounded float64 operation on any device (no fused multiply-add).
    between = v[0] + (rank - lo) * (v[1] - v[0])
    return torch.where(v[0] == v[1], v[0], between).float()


class WangLinearFunction(torch.autograd.Function):
    """Y = Q(Xc) Q(W)^T [+ (X - Xc) Q(W)^T] + b; dX = dY Q(W) [* mask without residual];
    dW = (dY^T X) * f'(W / s_w); db = sum(dY)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: WangConfig):
        fmt = get_format(config.fmt)
        in_features = x.shape[-1]
        x2d = x.reshape(-1, in_features)
        if config.outlier_quantile < 1.0 and x2d.numel() > 0:
            t = outlier_threshold(x2d, config.outlier_quantile).to(x2d.dtype)
            xc = torch.maximum(torch.minimum(x2d, t), -t)
        else:
            t, xc = None, x2d
        xq = absmax_quantize(xc, -1, fmt)
        wq = absmax_quantize(weight, -1, fmt).to(x2d.dtype)
        out = F.linear(xq, wq, bias)
        if config.outlier_residual and t is not None:
            out = out + F.linear(x2d - xc, wq)  # high-precision residual of the clamped outliers

        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        mask = None
        if need_dx and t is not None and not config.outlier_residual:
            mask = x2d.abs() <= t
        dge = dge_derivative(_scaled(weight, -1, fmt), fmt.grid(), config.dge_k, config.dge_clamp) if need_dw \
            else None
        ctx.save_for_backward(x2d if need_dw else None, wq if need_dx else None, dge, mask)
        ctx.x_shape, ctx.w_dtype = x.shape, weight.dtype
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x2d, wq, dge, mask = ctx.saved_tensors
        dy = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gx = dy @ wq.to(dy.dtype)
            if mask is not None:
                gx = gx * mask
            grad_x = gx.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            gwq = dy.t() @ x2d.to(dy.dtype)
            grad_w = (gwq.float() * dge).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)
        return grad_x, grad_w, grad_b, None


@register_linear_op("wang", WangConfig)
def wang_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: WangConfig | None = None) -> torch.Tensor:
    """Wang et al. FP4 linear: x (..., D), weight (C, D), bias (C,) or None -> (..., C). Under autocast the operands
    are cast to the autocast dtype first and the op runs with autocast off (as QLinear does)."""
    if config is None:
        config = WangConfig()
    return apply_linear_op(WangLinearFunction, "wang_linear", x, weight, bias, config)


register_recipe(Recipe("wang", op=WangConfig()))
