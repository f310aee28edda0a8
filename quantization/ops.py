"""Public quantization entry points: validate arguments, pick a backend, reshape to the 2-D view and back."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import reference
from .formats import BLOCK_SIZE, check_layout, check_rounding, check_scale_rule, get_format

BACKENDS = ("auto", "torch", "triton")
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


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if x.is_cuda else "torch"
    if backend == "triton" and not x.is_cuda and not triton_interpreted():
        raise RuntimeError("backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 set before importing "
                           "quantization to run the kernels on the CPU")
    return backend


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise TypeError(f"cannot quantize a tensor of dtype {x.dtype}; supported dtypes: {names}")


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    cols = x.shape[-1] if x.dim() else 1
    return x.reshape(-1, cols).contiguous()


def draw_seed() -> tuple[int, int]:
    """Two 31-bit words from torch's default generator: torch.manual_seed makes stochastic rounding repeat."""
    words = torch.randint(0, 2**31 - 1, (2,), dtype=torch.int64).tolist()
    return words[0], words[1]


def _seed_for(rounding: str, seed: tuple[int, int] | None) -> tuple[int, int]:
    """The seed a kernel gets: ``seed``, else a fresh draw for stochastic rounding, else an unused (0, 0)."""
    if seed is None and rounding == "stochastic":
        return draw_seed()
    return seed or (0, 0)


def quantize_2d(x2d: torch.Tensor, layout: str, fmt: str, scale_rule: str, rounding: str, *,
                ema2d: torch.Tensor | None = None, backend: str = "auto", want_values: bool = True,
                want_packed: bool = False, seed: tuple[int, int] | None = None):
    """Quantize a contiguous 2-D tensor (arguments already validated); returns (values, packed, scales), the ones
    not asked for as None. Used by ``quantize`` and by the autograd Function, which wants both outputs in one pass."""
    element = get_format(fmt)
    seed = _seed_for(rounding, seed)
    if _resolve_backend(backend, x2d) == "triton":
        from . import kernels

        return kernels.quantize_2d(x2d, element, layout, scale_rule, rounding, ema2d=ema2d, seed=seed,
                                   want_values=want_values, want_packed=want_packed)
    deq, codes, scales = reference.quantize_2d(x2d, element, layout, scale_rule, rounding, ema2d=ema2d, seed=seed,
                                               want_codes=want_packed)
    values = deq.to(x2d.dtype) if want_values else None
    packed = reference.pack_nibbles(codes) if want_packed else None
    return values, packed, (scales if want_packed else None)


def quantize_both_layouts_2d(x2d: torch.Tensor, fmt: str, scale_rule: str, rounding: str, *,
                             seeds: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None),
                             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Values of a contiguous 2-D tensor quantized in 1x32 blocks and in 32x1 blocks (one read on the GPU): the
    backward pass's Q3 and Q5 of dY. Seeds default to two draws, in that order; "ema" rounding is not supported."""
    if rounding == "ema":
        raise ValueError("quantize_both_layouts_2d does not take rounding='ema' (it needs a per-call EMA tensor)")
    seeds = tuple(_seed_for(rounding, seed) for seed in seeds)
    if _resolve_backend(backend, x2d) == "triton":
        from . import kernels

        return kernels.quantize_both_layouts_2d(x2d, get_format(fmt), scale_rule, rounding, seeds=seeds)
    rows_values, _, _ = quantize_2d(x2d, "1x32", fmt, scale_rule, rounding, backend="torch", seed=seeds[0])
    cols_values, _, _ = quantize_2d(x2d, "32x1", fmt, scale_rule, rounding, backend="torch", seed=seeds[1])
    return rows_values, cols_values


def requantize_2d(mx: MXTensor, fmt: str, scale_rule: str, rounding: str, *, seed: tuple[int, int] | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """Values of a 1x32-packed MXTensor (2-D), dequantized to its dtype and quantized again in 32x1 blocks: the
    backward pass's Q6 of the saved Q1(X) and Q4 of the saved Q2(W), one pass on the GPU. No "ema" rounding."""
    if mx.layout != "1x32":
        raise ValueError(f"requantize_2d reads the 1x32 packed layout, got {mx.layout!r}")
    if rounding == "ema":
        raise ValueError("requantize_2d does not take rounding='ema' (it needs a per-call EMA tensor)")
    seed = _seed_for(rounding, seed)
    rows, cols = mx.rows_cols
    if _resolve_backend(backend, mx.packed) == "triton":
        from . import kernels

        return kernels.requantize_2d(mx.packed, mx.scales, get_format(mx.fmt), rows, cols, mx.dtype,
                                     get_format(fmt), scale_rule, rounding, seed=seed)
    values = reference.dequantize_2d(mx.packed, mx.scales, get_format(mx.fmt), "1x32", rows, cols).to(mx.dtype)
    requantized, _, _ = quantize_2d(values, "32x1", fmt, scale_rule, rounding, backend="torch", seed=seed)
    return requantized


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
    rounding "nearest" (ties away), "even", "stochastic" (seeded from torch's default generator), "ema" (Q-EMA:
    ``ema`` chooses between the two grid neighbours of x; an all-zero block stays zero).
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
    element = get_format(mx.fmt)
    out_dtype = dtype or mx.dtype
    if _resolve_backend(backend, mx.packed) == "triton":
        from . import kernels

        y = kernels.dequantize_2d(mx.packed, mx.scales, element, mx.layout, rows, cols, out_dtype)
    else:
        y = reference.dequantize_2d(mx.packed, mx.scales, element, mx.layout, rows, cols).to(out_dtype)
    return y.view(mx.shape)
