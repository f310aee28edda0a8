"""The quantizers as registered torch.library custom ops (namespace ``tetrajet``) with fake implementations.

torch.compile then traces a quantized model without graph breaks: each op is one opaque node whose output shapes
the fake implementation gives, and the real implementation picks the reference or the Triton kernels at run time.
The ops read everything from their tensor arguments (the stochastic seed words included) and never synchronise
with the host, so CUDA graphs can capture them. Each op takes the arguments of the function of the same name in
``reference`` and ``kernels``, in the same order, with formats as names and the backend last. Outputs not asked for
come back as empty tensors (an op cannot return None or one of its inputs); ``quantization.mx.ops`` wraps the ops
with the public signatures.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .backends import resolve_backend
from .formats import BLOCK_SIZE, get_format


def _implementation(backend: str, x: Tensor) -> ModuleType:
    """The module that quantizes x: ``kernels`` (imported only then, as it imports Triton) or ``reference``."""
    if resolve_backend(backend, x) == "triton":
        from . import kernels

        return kernels
    return reference


def _unused(like: Tensor, dtype: torch.dtype) -> Tensor:
    return like.new_empty((0,), dtype=dtype)


def _scales_shape(rows: int, cols: int, layout: str) -> tuple[int, int]:
    if layout == "1x32":
        return rows, -(-cols // BLOCK_SIZE)
    return -(-rows // BLOCK_SIZE), cols


@torch.library.custom_op("tetrajet::quantize_2d", mutates_args=())
def quantize_2d(x: Tensor, layout: str, fmt: str, scale_rule: str, rounding: str, ema: Optional[Tensor],
                seed: Optional[Tensor], want_values: bool, want_packed: bool,
                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(values, packed codes, scales) of a contiguous 2-D tensor; those not wanted are empty."""
    values, packed, scales = _implementation(backend, x).quantize_2d(
        x, layout, get_format(fmt), scale_rule, rounding, ema2d=ema, seed=seed, want_values=want_values,
        want_packed=want_packed)
    return (values if want_values else _unused(x, x.dtype),
            packed if want_packed else _unused(x, torch.uint8),
            scales if want_packed else _unused(x, torch.uint8))


@quantize_2d.register_fake
def _(x, layout, fmt, scale_rule, rounding, ema, seed, want_values, want_packed, backend):
    rows, cols = x.shape
    values = x.new_empty((rows, cols)) if want_values else _unused(x, x.dtype)
    if not want_packed:
        return values, _unused(x, torch.uint8), _unused(x, torch.uint8)
    packed = x.new_empty((rows, (cols + 1) // 2), dtype=torch.uint8)
    return values, packed, x.new_empty(_scales_shape(rows, cols, layout), dtype=torch.uint8)


@torch.library.custom_op("tetrajet::quantize_both_layouts_2d", mutates_args=())
def quantize_both_layouts_2d(x: Tensor, fmt: str, scale_rule: str, rounding: str, seed_rows: Optional[Tensor],
                             seed_cols: Optional[Tensor], want_band_sums: bool,
                             backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Values of a contiguous 2-D tensor quantized in 1x32 and in 32x1 blocks (one read with the kernels), and its
    fp32 band sums (empty if not wanted)."""
    out = _implementation(backend, x).quantize_both_layouts_2d(x, get_format(fmt), scale_rule, rounding,
                                                               seeds=(seed_rows, seed_cols),
                                                               want_band_sums=want_band_sums)
    return out if want_band_sums else (*out, _unused(x, torch.float32))


@quantize_both_layouts_2d.register_fake
def _(x, fmt, scale_rule, rounding, seed_rows, seed_cols, want_band_sums, backend):
    rows, cols = x.shape
    sums = x.new_empty((-(-rows // BLOCK_SIZE), cols), dtype=torch.float32) if want_band_sums \
        else _unused(x, torch.float32)
    return torch.empty_like(x), torch.empty_like(x), sums


@torch.library.custom_op("tetrajet::requantize_2d", mutates_args=())
def requantize_2d(packed: Tensor, scales: Tensor, packed_fmt: str, cols: int, dtype: torch.dtype, fmt: str,
                  scale_rule: str, rounding: str, seed: Optional[Tensor], backend: str) -> Tensor:
    """A 1x32-packed (rows, cols) tensor dequantized to ``dtype`` and quantized again in 32x1 blocks."""
    return _implementation(backend, packed).requantize_2d(packed, scales, get_format(packed_fmt), cols, dtype,
                                                          get_format(fmt), scale_rule, rounding, seed=seed)


@requantize_2d.register_fake
def _(packed, scales, packed_fmt, cols, dtype, fmt, scale_rule, rounding, seed, backend):
    return packed.new_empty((packed.shape[0], cols), dtype=dtype)


@torch.library.custom_op("tetrajet::dequantize_2d", mutates_args=())
def dequantize_2d(packed: Tensor, scales: Tensor, layout: str, fmt: str, cols: int, dtype: torch.dtype,
                  backend: str) -> Tensor:
    """Values (rows, cols) of ``dtype`` of packed codes and biased scales."""
    return _implementation(backend, packed).dequantize_2d(packed, scales, layout, get_format(fmt), cols, dtype)


@dequantize_2d.register_fake
def _(packed, scales, layout, fmt, cols, dtype, backend):
    return packed.new_empty((packed.shape[0], cols), dtype=dtype)
