"""Which implementation quantizes a tensor: the PyTorch reference or the Triton kernels."""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "torch", "triton")


def triton_interpreted() -> bool:
    """Whether Triton runs its kernels in the CPU interpreter (TRITON_INTERPRET=1 set before importing)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """"torch" or "triton" for a tensor on x's device: "auto" takes the kernels for CUDA tensors."""
    check_backend(backend)
    if backend == "auto":
        return "triton" if x.is_cuda else "torch"
    if backend == "triton" and not x.is_cuda and not triton_interpreted():
        raise RuntimeError("backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 set before importing "
                           "quantization to run the kernels on the CPU")
    return backend
