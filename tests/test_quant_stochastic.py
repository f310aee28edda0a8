"""Stochastic rounding: unbiased, only the two neighbouring grid values, seeded from torch's generator."""
import pytest
import torch

from quantization import quantize

DRAWS = 4096
# 32 values in one block with amax 6 (scale 2^0) that sit at assorted positions between grid points.
BLOCK = torch.tensor([6.0, 0.1, 0.3, 0.55, 0.8, 1.1, 1.3, 1.49, 1.6, 1.9, 2.2, 2.6, 2.9, 3.3, 3.8, 4.4,
                      5.1, 5.9, -0.2, -0.7, -1.2, -1.7, -2.4, -3.6, -4.2, -5.5, 0.01, -0.04, 2.99, 4.01, 0.26, 0.0])
GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _draws(rounding: str, layout: str, backend: str) -> torch.Tensor:
    """DRAWS independent roundings of BLOCK: one call on a tensor repeating the block, one draw per element."""
    x = BLOCK.repeat(DRAWS, 1)  # 1x32: each row is one block
    if layout == "32x1":
        x = x.t().contiguous()  # each column is one block
    torch.manual_seed(7)
    y = quantize(x, layout=layout, rounding=rounding, backend=backend)
    return y if layout == "1x32" else y.t()


def _neighbours(v: torch.Tensor):
    a = v.abs()
    lower = GRID[torch.searchsorted(GRID, a, right=True) - 1]
    upper = GRID[torch.clamp(torch.searchsorted(GRID, a, right=False), max=len(GRID) - 1)]
    return lower * v.sign(), upper * v.sign()


def _max_bias_in_sigmas(y: torch.Tensor) -> float:
    lower, upper = _neighbours(BLOCK)
    p = ((BLOCK.abs() - lower.abs()) / (upper.abs() - lower.abs()).clamp(min=1e-12)).clamp(0, 1)
    sigma = ((upper - lower).abs() * (p * (1 - p)).sqrt() / DRAWS**0.5).clamp(min=1e-6)
    return ((y.mean(0) - BLOCK).abs() / sigma).max().item()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", ["1x32", "32x1"])
def test_unbiased_and_two_point_support(layout, backend):
    y = _draws("stochastic", layout, backend)
    lower, upper = _neighbours(BLOCK)
    assert ((y == lower) | (y == upper)).all()
    assert _max_bias_in_sigmas(y) < 5.0
    both = (lower != upper)
    assert ((y == lower).any(0) & (y == upper).any(0))[both].all()  # both neighbours occur


def test_bias_check_fails_for_deterministic_rounding():
    """The statistical check above can fail: nearest rounding is biased by many sigmas."""
    assert _max_bias_in_sigmas(_draws("nearest", "1x32", "torch")) > 50.0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_seeded_from_torch_generator(backend):
    x = torch.randn(64, 64)
    torch.manual_seed(0)
    a = quantize(x, rounding="stochastic", backend=backend)
    b = quantize(x, rounding="stochastic", backend=backend)
    torch.manual_seed(0)
    c = quantize(x, rounding="stochastic", backend=backend)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)
