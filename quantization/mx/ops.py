"""Public quantization entry points: validate arguments, pick a backend, reshape to the 2-D view and back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch

from . import custom_ops
from .backends import check_backend
from .formats import BLOCK_SIZE, check_layout, check_rounding, check_scale_rule, get_format

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class MXTensor:
    """Compact MX representation: 4-bit codes packed two per byte along the last dim of the 2-D view (element 2j
    in the low nibble) and one biased E8M0 exponent (uint8, 255 = NaN block) per block of 32."""

    packed: torch.Tensor
    scales: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    layout: str
    fmt: str

    @property
    def rows_cols(self) -> tuple[int, int]:
        cols = self.shape[-1] if len(self.shape) else 1
        return (self.packed.shape[0], cols)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scales.numel()

    def dequantize(self, backend: str = "auto") -> torch.Tensor:
        return dequantize(self, backend=backend)


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise TypeError(f"cannot quantize a tensor of dtype {x.dtype}; supported dtypes: {names}")


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    cols = x.shape[-1] if x.dim() else 1
    return x.reshape(-1, cols).contiguous()


Seed = Union[Tuple[int, int], torch.Tensor]


def draw_seeds(count: int, device: "torch.device | str") -> torch.Tensor:
    """``count`` pairs of 31-bit seed words (int64, shaped (count, 2)) drawn on ``device`` from torch's generator
    of that device: no host value (CUDA-graph safe), and torch.manual_seed or a restored RNG state repeats them."""
    return torch.randint(0, 2**31 - 1, (count, 2), dtype=torch.int64, device=device)


def seed_words(seed: Seed | None, rounding: str, device: "torch.device | str") -> torch.Tensor | None:
    """The seed tensor a stochastic quantizer reads: ``seed`` (two words, or a tensor of them on ``device``), else a
    fresh draw; None for the other roundings, which use no seed."""
    if rounding != "stochastic":
        return None
    if seed is None:
        return draw_seeds(1, device)[0]
    if isinstance(seed, torch.Tensor):
        if seed.shape != (2,):
            raise ValueError(f"a seed tensor holds two words, got shape {tuple(seed.shape)}")
        return seed
    return torch.tensor(seed, dtype=torch.int64, device=device)


def quantize_2d(x2d: torch.Tensor, layout: str, fmt: str, scale_rule: str, rounding: str, *,
                ema2d: torch.Tensor | None = None, seed: Seed | None = None, want_values: bool = True,
                want_packed: bool = False, backend: str = "auto"):
    """Quantize a contiguous 2-D tensor (arguments already validated); returns (values, packed, scales), the ones
    not asked for as None. Used by ``quantize`` and by the autograd Function, which wants both outputs in one pass.
    ``seed``: stochastic rounding's two seed words (default: drawn on x2d's device). The parameters of
    ``reference.quantize_2d`` and ``kernels.quantize_2d``, with the format by name and the backend added."""
    check_backend(backend)
    values, packed, scales = custom_ops.quantize_2d(x2d, layout, fmt, scale_rule, rounding, ema2d,
                                                    seed_words(seed, rounding, x2d.device), want_values, want_packed,
                                                    backend)
    return (values if want_values else None), (packed if want_packed else None), (scales if want_packed else None)


def quantize_both_layouts_2d(x2d: torch.Tensor, fmt: str, scale_rule: str, rounding: str, *,
                             seeds: tuple[Seed | None, Seed | None] = (None, None), want_column_sums: bool = False,
                             backend: str = "auto") -> tuple[torch.Tensor, ...]:
    """Values of a contiguous 2-D tensor quantized in 1x32 blocks and in 32x1 blocks (one read on the GPU): the
    backward pass's Q3 and Q5 of dY. Seeds default to two draws, in that order; "ema" rounding is not supported.
    ``want_column_sums``: also x2d's fp32 column sums (the bias gradient) from the same read, as a third result;
    they are sums over bands of 32 rows (``reference.band_sums``), then over the bands, so their last bits may
    differ from ``x2d.float().sum(0)``."""
    if rounding == "ema":
        raise ValueError("quantize_both_layouts_2d does not take rounding='ema' (it needs a per-call EMA tensor)")
    check_backend(backend)
    rows_seed, cols_seed = (seed_words(seed, rounding, x2d.device) for seed in seeds)
    y_rows, y_cols, sums = custom_ops.quantize_both_layouts_2d(x2d, fmt, scale_rule, rounding, rows_seed, cols_seed,
                                                               want_column_sums, backend)
    return (y_rows, y_cols, sums.sum(0)) if want_column_sums else (y_rows, y_cols)


def requantize_2d(mx: MXTensor, fmt: str, scale_rule: str, rounding: str, *, seed: Seed | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """Values of a 1x32-packed MXTensor (2-D), dequantized to its dtype and quantized again in 32x1 blocks: the
    backward pass's Q6 of the saved Q1(X) and Q4 of the saved Q2(W), one pass on the GPU. No "ema" rounding."""
    if mx.layout != "1x32":
        raise ValueError(f"requantize_2d reads the 1x32 packed layout, got {mx.layout!r}")
    if rounding == "ema":
        raise ValueError("requantize_2d does not take rounding='ema' (it needs a per-call EMA tensor)")
    check_backend(backend)
    _, cols = mx.rows_cols
    return custom_ops.requantize_2d(mx.packed, mx.scales, mx.fmt, cols, mx.dtype, fmt, scale_rule, rounding,
                                    seed_words(seed, rounding, mx.packed.device), backend)


def _validate(x: torch.Tensor, layout: str, fmt: str, scale_rule: str, rounding: str,
              ema: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    _check_dtype(x)
    check_layout(layout)
    element = get_format(fmt)
    check_scale_rule(scale_rule)
    check_rounding(rounding)
    if rounding == "ema":
        if ema is None:
            raise ValueError("rounding='ema' needs the EMA tensor: pass ema=<tensor shaped like x>")
        if ema.shape != x.shape:
            raise ValueError(f"ema has shape {tuple(ema.shape)} but x has shape {tuple(x.shape)}")
    if element.bits > 8:
        raise ValueError(f"format {fmt!r} has {element.bits} bits; at most 8 are supported")


def quantize(x: torch.Tensor, layout: str = "1x32", fmt: str = "e2m1", scale_rule: str = "rceil",
             rounding: str = "nearest", ema: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Fake-quantize x to an MX format: returns the dequantized tensor (same shape and dtype as x).

    layout "1x32": blocks of 32 along the last dim; "32x1": blocks of 32 rows of the 2-D view that flattens all leading
    dims. scale_rule "rceil" (TetraJet; saturates where a value would round to Inf in x's dtype) or "floor" (OCP).
    rounding "nearest" (ties away), "even", "stochastic" (seeds drawn on x's device from torch's generator), "ema"
    (Q-EMA: ``ema`` chooses between the two grid neighbours of x; an all-zero block stays zero).
    backend "torch" (reference), "triton" (kernels), "auto" (Triton for CUDA tensors).
    """
    _validate(x, layout, fmt, scale_rule, rounding, ema)
    x2d = _as_2d(x)
    ema2d = _as_2d(ema.to(torch.float32)) if rounding == "ema" else None
    values, _, _ = quantize_2d(x2d, layout, fmt, scale_rule, rounding, ema2d=ema2d, backend=backend)
    return values.view(x.shape)


def quantize_packed(x: torch.Tensor, layout: str = "1x32", fmt: str = "e2m1", scale_rule: str = "rceil",
                    rounding: str = "nearest", ema: torch.Tensor | None = None, backend: str = "auto") -> MXTensor:
    """Like ``quantize`` but returns the compact form (packed 4-bit codes + E8M0 scales), for storage and export."""
    _validate(x, layout, fmt, scale_rule, rounding, ema)
    if get_format(fmt).bits != 4:
        raise ValueError(f"packing two codes per byte needs a 4-bit format; {fmt!r} has {get_format(fmt).bits} bits")
    x2d = _as_2d(x)
    ema2d = _as_2d(ema.to(torch.float32)) if rounding == "ema" else None
    _, packed, scales = quantize_2d(x2d, layout, fmt, scale_rule, rounding, ema2d=ema2d, backend=backend,
                                    want_values=False, want_packed=True)
    return MXTensor(packed, scales, x.shape, x.dtype, layout, fmt)


def dequantize(mx: MXTensor, backend: str = "auto", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Values of a compact MXTensor, shaped and typed like the tensor it came from (or as ``dtype``)."""
    rows, cols = mx.rows_cols
    expected_packed = (rows, (cols + 1) // 2)
    blocks = -(-cols // BLOCK_SIZE) if mx.layout == "1x32" else -(-rows // BLOCK_SIZE)
    expected_scales = (rows, blocks) if mx.layout == "1x32" else (blocks, cols)
    if tuple(mx.packed.shape) != expected_packed or tuple(mx.scales.shape) != expected_scales:
        raise ValueError(f"corrupt MXTensor: packed {tuple(mx.packed.shape)} / scales {tuple(mx.scales.shape)}, "
                         f"expected {expected_packed} / {expected_scales} for shape {tuple(mx.shape)}")
    check_backend(backend)
    y = custom_ops.dequantize_2d(mx.packed, mx.scales, mx.layout, mx.fmt, cols, dtype or mx.dtype, backend)
    return y.view(mx.shape)
