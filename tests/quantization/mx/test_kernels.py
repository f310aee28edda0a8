"""Triton kernels (interpreted on CPU, compiled on GPU) against the PyTorch reference, bit for bit."""
import itertools

import pytest
import torch

from quantization import dequantize, quantize, quantize_packed
from quantization.mx.testing import assert_bitwise_equal, edge_matrix

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN blocks

DTYPES = (torch.float32, torch.bfloat16)
MODES = list(itertools.product(("1x32", "32x1"), ("e2m1", "e3m0"), ("rceil", "floor"),
                               ("nearest", "even", "stochastic", "ema")))


def _input(layout, fmt, dtype):
    x = edge_matrix(fmt, dtype)
    return x.t().contiguous() if layout == "32x1" else x  # 32x1: the edge blocks run down the columns


def _ema_for(x):
    g = torch.Generator().manual_seed(1)
    # Around x, so that both rounding directions occur; some with the opposite sign.
    return x.float().nan_to_num(0.0, 0.0, 0.0) * (1 + 0.5 * torch.randn(x.shape, generator=g))


def _both_backends(fn, *args, **kwargs):
    torch.manual_seed(123)
    ref = fn(*args, backend="torch", **kwargs)
    torch.manual_seed(123)
    ker = fn(*args, backend="triton", **kwargs)
    return ref, ker


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,fmt,scale_rule,rounding", MODES)
def test_kernel_matches_reference(layout, fmt, scale_rule, rounding, dtype):
    x = _input(layout, fmt, dtype)
    ema = _ema_for(x) if rounding == "ema" else None
    ref, ker = _both_backends(quantize, x, layout, fmt, scale_rule, rounding, ema)
    assert_bitwise_equal(ref, ker)
    assert ker.dtype == x.dtype and ker.shape == x.shape


@pytest.mark.parametrize("layout,fmt,scale_rule,rounding", [m for m in MODES if m[2] == "rceil"])
def test_packed_form_matches_and_round_trips(layout, fmt, scale_rule, rounding):
    x = _input(layout, fmt, torch.bfloat16)
    ema = _ema_for(x) if rounding == "ema" else None
    ref, ker = _both_backends(quantize_packed, x, layout, fmt, scale_rule, rounding, ema)
    assert torch.equal(ref.packed, ker.packed) and torch.equal(ref.scales, ker.scales)
    torch.manual_seed(123)
    values = quantize(x, layout, fmt, scale_rule, rounding, ema, backend="torch")
    for backend in ("torch", "triton"):
        assert_bitwise_equal(dequantize(ref, backend=backend), values)


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (33, 70), (2, 3, 40), (64,)])
@pytest.mark.parametrize("layout", ["1x32", "32x1"])
def test_any_leading_shape_and_tails(shape, layout):
    x = torch.randn(shape)
    assert_bitwise_equal(*_both_backends(quantize, x, layout))


def test_empty_tensor():
    x = torch.empty(0, 64)
    for layout in ("1x32", "32x1"):
        assert quantize(x, layout, backend="triton").shape == (0, 64)


def test_fp16_matches():
    x = torch.randn(40, 70).half()
    for layout in ("1x32", "32x1"):
        assert_bitwise_equal(*_both_backends(quantize, x, layout, rounding="stochastic"))


def test_seed_words_of_one_read_from_the_device():
    """The kernels read the seed words from a device tensor; words equal to 1 (which Triton would specialize as
    integer arguments) give the reference's numbers."""
    from quantization import get_format
    from quantization.mx import kernels, reference

    x = torch.randn(40, 70)
    for layout in ("1x32", "32x1"):
        got, _, _ = kernels.quantize_2d(x, layout, get_format("e2m1"), "rceil", "stochastic", ema2d=None,
                                        seed=torch.tensor([1, 1]), want_values=True, want_packed=False)
        want, _, _ = reference.quantize_2d(x, layout, get_format("e2m1"), "rceil", "stochastic",
                                           seed=torch.tensor([1, 1]))
        assert_bitwise_equal(got, want)
