"""The quantizers as registered torch.library custom ops (namespace ``tetrajet``) with fake implementations.

torch.compile then traces a quantized model without graph breaks: each op is one opaque node whose output shapes
the fake implementation gives, and the real implementation picks the reference or the Triton kernels at run time.
The ops read everything from their tensor arguments (the stochastic seed words included) and never synchronise
with the host, so CUDA graphs can capture them. Outputs not asked for come back as empty tensors (an op cannot
return None or one of its inputs); ``quantization.mx.ops`` wraps the ops with the public signatures.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from .backends import resolve_backend
from .formats import BLOCK_SIZE, get_format


def _unused(like: Tensor, dtype: torch.dtype) -> Tensor:
    return like.new_empty((0,), dtype=dtype)


def _scales_shape(rows: int, cols: int, layout: str) -> tuple[int, int]:
    if layout == "1x32":
        return rows, -(-cols // BLOCK_SIZE)
    return -(-rows // BLOCK_SIZE), cols


@torch.library.custom_op("tetrajet::quantize_2d", mutates_args=())
def quantize_2d(x: Tensor, ema: Optional[Tensor], seed: Optional[Tensor], layout: str, fmt: str, scale_rule: str,
                rounding: str, backend: str, want_values: bool, want_packed: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(values, packed codes, scales) of a contiguous 2-D tensor; those not wanted are empty."""
    element = get_format(fmt)
    if resolve_backend(backend, x) == "triton":
        from . import kernels

        values, packed, scales = kernels.quantize_2d(x, element, layout, scale_rule, rounding, ema2d=ema, seed=seed,
                                                     want_values=want_values, want_packed=want_packed)
    else:
        deq, codes, scales = reference.quantize_2d(x, element, layout, scale_rule, rounding, ema2d=ema, seed=seed,
                                                   want_codes=want_packed)
        values = deq.to(x.dtype).contiguous() if want_values else None  # the layout the fake implementation gives
        packed = reference.pack_nibbles(codes) if want_packed else None
    return (values if want_values else _unused(x, x.dtype),
            packed if want_packed else _unused(x, torch.uint8),
            scales if want_packed else _unused(x, torch.uint8))


@quantize_2d.register_fake
def _(x, ema, seed, layout, fmt, scale_rule, rounding, backend, want_values, want_packed):
    rows, cols = x.shape
    values = x.new_empty((rows, cols)) if want_values else _unused(x, x.dtype)
    if not want_packed:
        return values, _unused(x, torch.uint8), _unused(x, torch.uint8)
    packed = x.new_empty((rows, (cols + 1) // 2), dtype=torch.uint8)
    return values, packed, x.new_empty(_scales_shape(rows, cols, layout), dtype=torch.uint8)


@torch.library.custom_op("tetrajet::quantize_both_layouts_2d", mutates_args=())
def quantize_both_layouts_2d(x: Tensor, seed_rows: Optional[Tensor], seed_cols: Optional[Tensor], fmt: str,
                             scale_rule: str, rounding: str, backend: str) -> tuple[Tensor, Tensor]:
    """Values of a contiguous 2-D tensor quantized in 1x32 and in 32x1 blocks (one read with the kernels)."""
    if resolve_backend(backend, x) == "triton":
        from . import kernels

        return kernels.quantize_both_layouts_2d(x, get_format(fmt), scale_rule, rounding, seeds=(seed_rows, seed_cols))
    return tuple(quantize_2d(x, None, seed, layout, fmt, scale_rule, rounding, "torch", True, False)[0]
                 for layout, seed in (("1x32", seed_rows), ("32x1", seed_cols)))


@quantize_both_layouts_2d.register_fake
def _(x, seed_rows, seed_cols, fmt, scale_rule, rounding, backend):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("tetrajet::requantize_2d", mutates_args=())
def requantize_2d(packed: Tensor, scales: Tensor, seed: Optional[Tensor], packed_fmt: str, cols: int,
                  dtype: torch.dtype, fmt: str, scale_rule: str, rounding: str, backend: str) -> Tensor:
    """A 1x32-packed (rows, cols) tensor dequantized to ``dtype`` and quantized again in 32x1 blocks."""
    rows = packed.shape[0]
    if resolve_backend(backend, packed) == "triton":
        from . import kernels

        return kernels.requantize_2d(packed, scales, get_format(packed_fmt), rows, cols, dtype, get_format(fmt),
                                     scale_rule, rounding, seed=seed)
    values = reference.dequantize_2d(packed, scales, get_format(packed_fmt), "1x32", rows, cols).to(dtype)
    return quantize_2d(values, None, seed, "32x1", fmt, scale_rule, rounding, "torch", True, False)[0]


@requantize_2d.register_fake
def _(packed, scales, seed, packed_fmt, cols, dtype, fmt, scale_rule, rounding, backend):
    return packed.new_empty((packed.shape[0], cols), dtype=dtype)


@torch.library.custom_op("tetrajet::dequantize_2d", mutates_args=())
def dequantize_2d(packed: Tensor, scales: Tensor, fmt: str, layout: str, cols: int, dtype: torch.dtype,
                  backend: str) -> Tensor:
    """Values (rows, cols) of ``dtype`` of packed codes and biased scales."""
    rows = packed.shape[0]
    if resolve_backend(backend, packed) == "triton":
        from . import kernels

        return kernels.dequantize_2d(packed, scales, get_format(fmt), layout, rows, cols, dtype)
    return reference.dequantize_2d(packed, scales, get_format(fmt), layout, rows, cols).to(dtype).contiguous()


@dequantize_2d.register_fake
def _(packed, scales, fmt, layout, cols, dtype, backend):
    return packed.new_empty((packed.shape[0], cols), dtype=dtype)
