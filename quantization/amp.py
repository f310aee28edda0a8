"""Autocast handling shared by the quantized Linear ops: quantize what the GEMM would see."""
from __future__ import annotations

import torch


def autocast_operands(x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cast the operands of a Linear to the autocast dtype when autocast is on for x's device (else unchanged).

    The ops then run with autocast off, so their quantizers see exactly the tensors the GEMM multiplies, and the
    gradients flow back through the casts to the fp32 master weights."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), weight.to(dtype), (bias.to(dtype) if bias is not None else None)


def apply_linear_op(function: type[torch.autograd.Function], name: str, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None, config: object) -> torch.Tensor:
    """Run ``function.apply(x, weight, bias, config)`` for a Linear op (x (..., D), weight (C, D)): shapes checked,
    operands cast as under autocast, the op itself with autocast off. ``name`` goes into the error message."""
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name}: the shapes of x {tuple(x.shape)} and weight {tuple(weight.shape)} do not match "
                         f"(expected x (..., D), weight (C, D))")
    x, weight, bias = autocast_operands(x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        return function.apply(x, weight, bias, config)
