"""Exactness at the rounding boundaries, kernels against the reference bit for bit: every grid midpoint and its one-ulp
neighbours of every element format, in every input dtype, layout and scale rule, through the plain quantizers and the
backward pass's fused kernels."""
import pytest
import torch

from quantization import FORMATS, dequantize, get_format, kernels, quantize_packed
from quantization.formats import LAYOUTS, SCALE_RULES
from quantization.ops import MXTensor, quantize_2d, requantize_2d

from quant_helpers import assert_bitwise_equal, both_ways, midpoint_blocks, requantize_midpoints

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on overflow

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The interpreter's cost is per program: the fused kernels run these small inputs as one band of columns.
WIDE_BAND = dict(block_c=1024, num_warps=2)


def _as_layout(blocks: torch.Tensor, layout: str) -> torch.Tensor:
    """(n, 32) blocks as the 1x32 blocks of a (n, 32) tensor or the 32x1 blocks of a (32, n) one."""
    return blocks.t().contiguous() if layout == "32x1" else blocks


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_rounds_midpoints_to_nearest_ties_away(dtype):
    blocks, want, fmts = midpoint_blocks(dtype)
    for fmt in FORMATS:
        rows = torch.tensor([f == fmt for f in fmts])
        for layout in LAYOUTS:
            for rule in SCALE_RULES:
                values, _, _ = quantize_2d(_as_layout(blocks, layout), layout, fmt, rule, "nearest", backend="torch")
                assert_bitwise_equal(_as_layout(values, layout)[rows], want[rows].to(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_reference_at_midpoints(dtype, layout):
    x = _as_layout(midpoint_blocks(dtype)[0], layout)
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            ref, ker = (quantize_2d(x, layout, fmt, rule, "nearest", backend=backend, want_packed=True)
                        for backend in ("torch", "triton"))
            assert_bitwise_equal(ker[0], ref[0])
            assert torch.equal(ker[1], ref[1]) and torch.equal(ker[2], ref[2]), (fmt, rule)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_both_layouts_kernel_matches_reference_at_midpoints(dtype):
    x = both_ways(midpoint_blocks(dtype)[0])
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            got = kernels.quantize_both_layouts_2d(x, get_format(fmt), rule, "nearest", seeds=((0, 0), (0, 0)),
                                                   launch=WIDE_BAND)
            for layout, values in zip(LAYOUTS, got):
                assert_bitwise_equal(values, quantize_2d(x, layout, fmt, rule, "nearest", backend="torch")[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_requantize_kernel_matches_reference_at_midpoint_ties(dtype):
    x = requantize_midpoints(dtype)
    mx = quantize_packed(x, "1x32", "e1m2", "rceil", "nearest", backend="torch")
    assert_bitwise_equal(dequantize(mx), x)  # the ties reach the requantizer unchanged
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            got = kernels.requantize_2d(mx.packed, mx.scales, get_format("e1m2"), *x.shape, dtype, get_format(fmt),
                                        rule, "nearest", seed=(0, 0), launch=WIDE_BAND)
            assert_bitwise_equal(got, requantize_2d(mx, fmt, rule, "nearest", backend="torch"))
            assert_bitwise_equal(got, quantize_2d(x, "32x1", fmt, rule, "nearest", backend="torch")[0])


def _zero_blocks_with_ema(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, ema), 1x32 blocks: all +0, all -0, mixed signed zeros, and one nonzero block holding zeros; the EMA of
    every zero is positive, negative, tiny or huge, so Q-EMA would round some up from the placeholder grid."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 32)
    x[1] = -0.0
    x[2, ::2] = -0.0
    x[3, :4] = torch.tensor([6.0, 1.2, -0.0, 0.0])
    ema = torch.randn(4, 32, generator=g) * torch.tensor([1e-30, 1.0, 1e30, 1.0])[torch.arange(32) % 4]
    ema[0, :8] = torch.tensor([2.0**-149, 2.0**-129, 2.0**-128, 1.0, 3e38, -1.0, 0.0, -0.0])
    ema[3, :4] = torch.tensor([6.0, 1.3, -1.0, 1.0])
    return x.to(dtype), ema


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qema_keeps_an_all_zero_block_zero(dtype, layout):
    x, ema = (_as_layout(t, layout) for t in _zero_blocks_with_ema(dtype))
    for fmt in FORMATS:
        for rule in SCALE_RULES:
            ref, ker = (quantize_2d(x, layout, fmt, rule, "ema", ema2d=ema, backend=backend, want_packed=True)
                        for backend in ("torch", "triton"))
            assert_bitwise_equal(ker[0], ref[0])
            assert torch.equal(ker[1], ref[1]) and torch.equal(ker[2], ref[2]), (fmt, rule)
            packed_values = dequantize(MXTensor(ker[1], ker[2], x.shape, torch.float32, layout, fmt))
            for values, zeros in ((ref[0], x), (packed_values, x.float())):  # exactly +-0 (fp16 would hide 2^-128)
                assert_bitwise_equal(_as_layout(values, layout)[:3], _as_layout(zeros, layout)[:3])
            below, above = _as_layout(ref[0], layout)[3, 2:4].tolist()
            assert below < 0 < above  # -0 and +0 in a nonzero block still follow their EMA off zero
