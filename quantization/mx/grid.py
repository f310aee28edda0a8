"""Where weights sit on their MX grid: per-element block scales and signed grid positions.

Shared by the oscillation metrics (QuantConf, traces), the Dampen clip bounds and Freeze's flip tracking. The scale is
the one the weight quantizer Q2 uses: 1x32 blocks along the last dim, computed exactly as in reference.py.
"""
from __future__ import annotations

import functools

import torch

from . import reference
from .formats import ElementFormat, get_format


def block_scales(weight: torch.Tensor, fmt: str, scale_rule: str) -> torch.Tensor:
    """2^s (fp32, shaped like ``weight``) of each element's 1x32 block under the format named ``fmt`` and
    ``scale_rule``."""
    w2d = weight.detach().reshape(-1, weight.shape[-1]).float()
    blocks = reference._blocked(w2d.abs(), "1x32")
    exponent = reference.shared_exponent(blocks.amax(dim=-1, keepdim=True), get_format(fmt), scale_rule)
    scales = reference._unblocked(reference.pow2(exponent).expand_as(blocks), "1x32", *w2d.shape)
    return scales.reshape(weight.shape)


def grid_magnitudes(fmt: ElementFormat, device: torch.device | str | None = None) -> torch.Tensor:
    """The format's non-negative grid values, ascending (fp32). Cached per format and device: building the tensor on
    a GPU is a copy from pageable host memory, which waits for the device (Freeze looks it up twice per layer per
    optimizer step). Shared: do not modify the result in place."""
    return _grid_magnitudes(fmt, torch.device(device) if device is not None else torch.device("cpu"))


@functools.lru_cache(maxsize=32)
def _grid_magnitudes(fmt: ElementFormat, device: torch.device) -> torch.Tensor:
    return torch.tensor(fmt.grid(), dtype=torch.float32, device=device)


def grid_index(grid_values: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Signed position (int8, in [-max_code, max_code]) of exact signed grid values, e.g. E2M1 -1.5 -> -3, 6 -> 7."""
    magnitudes = grid_magnitudes(fmt, grid_values.device)
    index = torch.searchsorted(magnitudes, grid_values.abs().float().contiguous())
    return torch.where(grid_values < 0, -index, index).to(torch.int8)


def index_value(index: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Inverse of ``grid_index``: the signed grid value (fp32) at each signed position."""
    magnitudes = grid_magnitudes(fmt, index.device)
    value = magnitudes[index.abs().long()]
    return torch.where(index < 0, -value, value)
