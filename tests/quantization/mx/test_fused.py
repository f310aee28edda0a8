"""The backward pass's fused kernels against the reference, bit for bit: dY quantized in both layouts from one read
(Q3 + Q5) and a 1x32-packed tensor requantized in 32x1 blocks (Q6 of Q1(X), Q4 of Q2(W))."""
import dataclasses
import itertools

import pytest
import torch

from quantization import dequantize, quantize, quantize_packed
from quantization.mx.ops import quantize_2d, quantize_both_layouts_2d, requantize_2d
from quantization.mx.testing import (assert_bitwise_equal, check_both_layouts, check_quantize, check_requantize,
                                     edge_matrix, requantize_input)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN blocks

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _edges_both_ways(fmt: str, dtype: torch.dtype) -> torch.Tensor:
    """Edge-case blocks along the rows (top left) and down the columns (bottom right), with tails both ways; an even
    column count, so the one-pass pair kernels run (odd counts take two passes: test_..._any_size)."""
    a = edge_matrix(fmt, torch.float32)
    rows, cols = a.shape
    x = torch.zeros(rows + cols, cols + rows + (cols + rows) % 2)
    x[:rows, :cols] = a
    x[rows:, cols:cols + rows] = a.t()
    x[rows:, :cols] = torch.randn(cols, cols)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt,scale_rule,rounding",
                         list(itertools.product(("e2m1", "e3m0"), ("rceil", "floor"), ("nearest", "even", "stochastic"))))
def test_both_layouts_match_two_reference_quantizers(fmt, scale_rule, rounding, dtype):
    x = _edges_both_ways(fmt, dtype)
    seeds = ((11, 2**31 - 2), (1, 1))
    got = quantize_both_layouts_2d(x, fmt, scale_rule, rounding, seeds=seeds, backend="triton")
    for layout, seed, values in zip(("1x32", "32x1"), seeds, got):
        assert_bitwise_equal(values, quantize_2d(x, layout, fmt, scale_rule, rounding, seed=seed, backend="torch")[0])


def test_both_layouts_draw_seeds_in_order_and_backends_agree():
    x = torch.randn(70, 100, dtype=torch.bfloat16)
    outs = []
    for backend in ("torch", "triton"):
        torch.manual_seed(5)
        outs.append(quantize_both_layouts_2d(x, "e2m1", "rceil", "stochastic", backend=backend))
    for a, b in zip(*outs):
        assert_bitwise_equal(a, b)
    torch.manual_seed(5)
    first, second = quantize(x, "1x32", rounding="stochastic"), quantize(x, "32x1", rounding="stochastic")
    assert_bitwise_equal(outs[0][0], first)
    assert_bitwise_equal(outs[0][1], second)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(70, 100), (64, 33)], ids=["tail-rows", "odd-cols"])
def test_both_layouts_sum_the_columns_from_the_same_read(shape, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape) * torch.exp(2 * torch.randn(shape))).to(dtype)
    x[3, 5], x[40, 7] = float("inf"), float("nan")
    seeds = ((3, 4), (5, 6))
    for backend in ("torch", "triton"):
        rows_v, cols_v, sums = quantize_both_layouts_2d(x, "e2m1", "rceil", "stochastic", seeds=seeds,
                                                        want_column_sums=True, backend=backend)
        plain = quantize_both_layouts_2d(x, "e2m1", "rceil", "stochastic", seeds=seeds, backend=backend)
        assert_bitwise_equal(rows_v, plain[0])  # asking for the sums changes no value
        assert_bitwise_equal(cols_v, plain[1])
        want = x.float().sum(0, dtype=torch.float64)
        assert sums.dtype == torch.float32 and sums.shape == (shape[1],)
        assert torch.isinf(sums[5]) and torch.isnan(sums[7])
        finite = torch.isfinite(want)
        # fp32 sums in another order: within 2 * rows * 2^-24 of the sum of magnitudes
        bound = 2 * shape[0] * 2.0**-24 * x.float().abs().sum(0, dtype=torch.float64)
        assert ((sums.double() - want).abs()[finite] <= bound[finite]).all()


def test_band_sums_of_the_kernel_and_the_reference_agree_to_fp32_rounding():
    from quantization.mx import kernels, reference
    from quantization.mx.formats import get_format
    torch.manual_seed(1)
    x = torch.randn(100, 64, dtype=torch.bfloat16)
    *_, got = kernels.quantize_both_layouts_2d(x, get_format("e2m1"), "rceil", "nearest", want_band_sums=True)
    want = reference.band_sums(x)
    assert got.shape == want.shape == (4, 64)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-5)
    assert torch.equal(want[3], x[96:].float().sum(0))  # the short last band: 4 rows


def test_both_layouts_rejects_ema():
    with pytest.raises(ValueError, match="ema"):
        quantize_both_layouts_2d(torch.ones(4, 4), "e2m1", "rceil", "ema")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("packed_fmt,fmt,scale_rule,rounding",
                         [("e2m1", "e2m1", "rceil", "nearest"), ("e2m1", "e2m1", "rceil", "stochastic"),
                          ("e2m1", "e2m1", "floor", "even"), ("e3m0", "e2m1", "rceil", "stochastic"),
                          ("e2m1", "e3m0", "floor", "nearest")])
def test_requantize_matches_dequantize_then_quantize(packed_fmt, fmt, scale_rule, rounding, dtype):
    x = _edges_both_ways(packed_fmt, dtype)
    mx = quantize_packed(x, "1x32", packed_fmt, "rceil", "nearest", backend="torch")
    seed = (7, 2**31 - 2)
    got = requantize_2d(mx, fmt, scale_rule, rounding, seed=seed, backend="triton")
    want = quantize_2d(dequantize(mx, backend="torch"), "32x1", fmt, scale_rule, rounding, seed=seed,
                       backend="torch")[0]
    assert_bitwise_equal(got, want)
    assert_bitwise_equal(requantize_2d(mx, fmt, scale_rule, rounding, seed=seed, backend="torch"), want)


@pytest.mark.parametrize("shape", [(1, 1), (33, 70), (5, 3), (64, 31)])
def test_requantize_and_both_layouts_any_size(shape):
    x = torch.randn(shape, dtype=torch.bfloat16) * 3
    mx = quantize_packed(x, "1x32")
    assert_bitwise_equal(requantize_2d(mx, "e2m1", "rceil", "nearest", backend="triton"),
                         quantize(dequantize(mx), "32x1", backend="torch"))
    rows_v, cols_v = quantize_both_layouts_2d(x, "e2m1", "rceil", "nearest", backend="triton")
    assert_bitwise_equal(rows_v, quantize(x, "1x32", backend="torch"))
    assert_bitwise_equal(cols_v, quantize(x, "32x1", backend="torch"))


def test_misaligned_tensor_takes_two_passes():
    storage = torch.randn(1 + 64 * 40, dtype=torch.bfloat16)
    x = storage[1:].view(64, 40)  # contiguous, but its element pairs straddle 32-bit words
    rows_v, cols_v = quantize_both_layouts_2d(x, "e2m1", "rceil", "nearest", backend="triton")
    assert_bitwise_equal(rows_v, quantize(x, "1x32", backend="torch"))
    assert_bitwise_equal(cols_v, quantize(x, "32x1", backend="torch"))


def test_requantize_rejects_other_layouts_and_ema():
    mx = quantize_packed(torch.randn(32, 32), "32x1")
    with pytest.raises(ValueError, match="1x32"):
        requantize_2d(mx, "e2m1", "rceil", "nearest")
    with pytest.raises(ValueError, match="ema"):
        requantize_2d(quantize_packed(torch.randn(32, 32)), "e2m1", "rceil", "ema")


def test_requantize_keeps_the_saved_dtypes_rounding():
    # Packed from fp32, 60000 rounds up to 4 * 2^14 = 65536, which the tensor read as fp16 holds as inf (a NaN block
    # after Q6); fp16 data itself would saturate to 3 * 2^14 instead (test_exact.py).
    x = torch.randn(64, 64)
    x[3, :8] = 60000.0
    mx = dataclasses.replace(quantize_packed(x, "1x32"), dtype=torch.float16)
    want = quantize(dequantize(mx), "32x1", backend="torch")
    assert torch.isnan(want[:32, :8]).all()
    assert_bitwise_equal(requantize_2d(mx, "e2m1", "rceil", "nearest", backend="triton"), want)


@pytest.mark.parametrize("rounding", ("nearest", "stochastic"))
def test_int64_index_path_matches_the_reference(rounding, monkeypatch):
    """The kernels' int64 offsets (taken for tensors of 2^31 elements or more, forced here on a small one) give the
    reference's results. (The wrap of the hash's index mod 2^32, pair index mod 2^31, needs 2^31 elements to show.)"""
    from quantization.mx import kernels

    monkeypatch.setattr(kernels, "_wide", lambda rows, cols: True)
    x = _edges_both_ways("e2m1", torch.bfloat16)
    check_both_layouts(x, "e2m1", "rceil", rounding)
    for layout in ("1x32", "32x1"):
        check_quantize(x, layout, "e2m1", "rceil", rounding)
    check_requantize(requantize_input(torch.randn(64, 32, generator=torch.Generator().manual_seed(0))), "e2m1", "rceil",
                     rounding)
