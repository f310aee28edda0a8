"""Stochastic rounding: unbiased, only the two neighbouring grid values, seeded from torch's generator."""
import pytest
import torch

from quantization import quantize
from quantization.mx import reference
from quantization.mx.testing import STOCHASTIC_BLOCK as BLOCK, grid_neighbours, max_bias_in_sigmas

DRAWS = 4096


def _draws(rounding: str, layout: str, backend: str) -> torch.Tensor:
    """DRAWS independent roundings of BLOCK: one call on a tensor repeating the block, one draw per element."""
    x = BLOCK.repeat(DRAWS, 1)  # 1x32: each row is one block
    if layout == "32x1":
        x = x.t().contiguous()  # each column is one block
    torch.manual_seed(7)
    y = quantize(x, layout=layout, rounding=rounding, backend=backend)
    return y if layout == "1x32" else y.t()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", ["1x32", "32x1"])
def test_unbiased_and_two_point_support(layout, backend):
    y = _draws("stochastic", layout, backend)
    lower, upper = grid_neighbours(BLOCK)
    assert ((y == lower) | (y == upper)).all()
    assert max_bias_in_sigmas(y, BLOCK) < 5.0
    both = (lower != upper)
    assert ((y == lower).any(0) & (y == upper).any(0))[both].all()  # both neighbours occur


def test_bias_check_fails_for_deterministic_rounding():
    """The statistical check above can fail: nearest rounding is biased by many sigmas."""
    assert max_bias_in_sigmas(_draws("nearest", "1x32", "torch"), BLOCK) > 50.0


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


def test_backward_seeds_resume_exactly_from_a_checkpointed_rng_state(tmp_path):
    """QLinear's stochastic backward draws its seeds on the operand's device from torch's generator, whose state
    the trainer's checkpoints hold (training.rng_state): a restored state repeats the step bit for bit."""
    from quantization import QLinear
    from training import rng_state, set_rng_state

    torch.manual_seed(3)
    layer = QLinear(64, 48, recipe="tetrajet")
    x = torch.randn(40, 64)

    def grads():
        layer.weight.grad = None
        layer(x).square().sum().backward()
        return layer.weight.grad.clone()

    first = grads()
    torch.save(rng_state(), tmp_path / "rng.pth")
    second = grads()
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert not torch.equal(first, second)
    assert torch.equal(grads(), second)


def test_uniform_stream_is_flat_and_uncorrelated_across_neighbours_and_seeds():
    n = 1 << 18
    index = torch.arange(n)
    base = reference.uniform_from_index(index, torch.tensor([12345, 678])).double()
    counts = torch.bincount((base * 256).long(), minlength=256).double()
    chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
    assert chi2 < 255 + 6 * (2 * 255) ** 0.5  # 255 degrees of freedom, six sigma
    assert abs(base.mean() - 0.5) < 6 * (1 / 12 / n) ** 0.5

    def correlation(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.square().sum() * b.square().sum()).sqrt())

    others = {"next index": base.roll(-1),
              "seed word 0 + 1": reference.uniform_from_index(index, torch.tensor([12346, 678])).double(),
              "seed word 1 + 1": reference.uniform_from_index(index, torch.tensor([12345, 679])).double(),
              "seed word 1 + 2^31": reference.uniform_from_index(index, torch.tensor([12345, 678 + 2**31])).double()}
    for name, other in others.items():
        assert abs(correlation(base, other)) < 6 / n**0.5, name


@pytest.mark.parametrize("lag", [1, 2, 3, 32, 384])
def test_pairs_of_draws_are_flat_in_two_dimensions(lag):
    """(u_i, u_{i+lag}) over 16 x 16 cells: neighbours in a row, in a pair and across blocks, and elements 384
    apart (a column of a DeiT-S activation). A hash with too little mixing (one multiply-fold after the first
    step) fails at distances 2, 32 and 384 with chi-square 3e4 to 2e5 (255 expected)."""
    n = 1 << 18
    u = reference.uniform_from_index(torch.arange(n + lag), torch.tensor([4242, 99]))
    cells = (u[:n] * 16).long() * 16 + (u[lag:] * 16).long()
    counts = torch.bincount(cells, minlength=256).double()
    chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
    assert chi2 < 255 + 6 * (2 * 255) ** 0.5
