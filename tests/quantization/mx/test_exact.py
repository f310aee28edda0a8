"""Exactness at the numerical boundaries, kernels against the reference bit for bit (values, codes and scales), in
every input dtype, layout and scale rule, through the plain quantizers and the backward pass's fused kernels: every
grid midpoint of every element format and its one-ulp neighbours; Q-EMA on all-zero blocks; rceil's saturation at the
top of the dtype's range. scripts/check_kernels_gpu.py runs the same cases on the compiled kernels."""
import pytest
import torch

from quantization import FORMATS, dequantize
from quantization.mx.formats import LAYOUTS, ROUNDINGS, SCALE_RULES
from quantization.mx.ops import MXTensor, quantize_2d
from quantization.mx.testing import (as_layout, assert_bitwise_equal, both_ways, check_both_layouts, check_quantize,
                                     check_requantize, check_zero_draws, midpoint_blocks, overflow_blocks,
                                     requantize_input, zero_blocks_with_ema, zero_draw_case)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on overflow

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The interpreter's cost is per program: the fused kernels run these small inputs as one band of columns.
WIDE_BAND = dict(block_c=1024, num_warps=2)


def _rows_of(fmts: list[str], fmt: str) -> torch.Tensor:
    return torch.tensor([f == fmt for f in fmts])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_rounds_midpoints_to_nearest_ties_away(dtype):
    blocks, want, fmts = midpoint_blocks(dtype)
    for fmt in FORMATS:
        for layout in LAYOUTS:
            for rule in SCALE_RULES:
                values, _, _ = quantize_2d(as_layout(blocks, layout), layout, fmt, rule, "nearest", backend="torch")
                rows = _rows_of(fmts, fmt)
                assert_bitwise_equal(as_layout(values, layout)[rows], want[rows].to(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_reference_at_midpoints(dtype, layout):
    x = as_layout(midpoint_blocks(dtype)[0], layout)
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            check_quantize(x, layout, fmt, rule, "nearest")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_kernels_match_reference_at_midpoints(dtype):
    both = both_ways(midpoint_blocks(dtype)[0])
    # Only ties reach the requantizer: a one-ulp neighbour has more significant bits than a 4-bit MX value.
    packed = requantize_input(midpoint_blocks(dtype, neighbours=False)[0])
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            check_both_layouts(both, fmt, rule, "nearest", launch=WIDE_BAND)
            check_requantize(packed, fmt, rule, "nearest", launch=WIDE_BAND)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qema_keeps_an_all_zero_block_zero(dtype, layout):
    x, ema = (as_layout(t, layout) for t in zero_blocks_with_ema(dtype))
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            values = as_layout(check_quantize(x, layout, fmt, rule, "ema", ema=ema), layout)
            _, packed, scales = quantize_2d(x, layout, fmt, rule, "ema", ema2d=ema, backend="torch", want_packed=True)
            packed_values = as_layout(dequantize(MXTensor(packed, scales, x.shape, torch.float32, layout, fmt)), layout)
            zeros = as_layout(x, layout)[:3]
            assert_bitwise_equal(values[:3], zeros)  # exactly +-0, signs kept
            assert_bitwise_equal(packed_values[:3], zeros.float())  # also in fp32, where fp16 cannot hide 2^-128
            below, above = values[3, 2:4].tolist()
            assert below < 0 < above  # in a nonzero block a signed zero still follows its EMA off zero


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rceil_saturates_at_the_top_of_the_dtype(dtype, layout):
    blocks, want, fmts = overflow_blocks(dtype)
    x = as_layout(blocks, layout)
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            for rounding in ROUNDINGS:
                ema = x.float() if rounding == "ema" else None  # the EMA points where x does: up from T
                values = as_layout(check_quantize(x, layout, fmt, rule, rounding, ema=ema), layout)
                assert torch.isfinite(values).all(), (fmt, rule, rounding)
                if rule == "rceil" and rounding == "nearest":
                    rows = _rows_of(fmts, fmt)
                    assert_bitwise_equal(values[rows], want[rows].to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_kernels_saturate_like_the_reference(dtype):
    blocks = overflow_blocks(dtype)[0]
    both, packed = both_ways(blocks), requantize_input(blocks)
    for fmt in FORMATS:  # rceil only: floor never reaches the overflow exponent
        for rounding in ("nearest", "stochastic"):  # the fused kernels take no EMA
            outputs = (*check_both_layouts(both, fmt, "rceil", rounding, launch=WIDE_BAND),
                       check_requantize(packed, fmt, "rceil", rounding, launch=WIDE_BAND))
            assert all(torch.isfinite(values).all() for values in outputs), (fmt, rounding)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_stochastic_rounding_keeps_subnormals(dtype):
    x, seeds = zero_draw_case(dtype)
    check_zero_draws(x, seeds, launch=WIDE_BAND)
