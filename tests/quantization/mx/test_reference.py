"""The PyTorch reference quantizer against the specification in docs/numerics.md: ties, scales, signs, NaN blocks."""
import math

import pytest
import torch

from quantization import FORMATS, dequantize, quantize, quantize_packed
from quantization.mx.reference import shared_exponent
from quantization.mx.testing import assert_bitwise_equal, nextafter32

TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
NEAREST = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
EVEN = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def _tie_block(values, amax=6.0):
    """One block whose amax gives scale 2^0 for both scale rules, followed by the values and their negatives."""
    return torch.tensor([amax] + values + [-v for v in values])


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("rounding,expected", [("nearest", NEAREST), ("even", EVEN)])
@pytest.mark.parametrize("scale_rule", ["rceil", "floor"])
def test_e2m1_tie_tables(rounding, expected, scale_rule, backend):
    for k in (0, 7, -9):  # the same ties at other scales
        x = _tie_block(TIES) * 2.0**k
        y = quantize(x, rounding=rounding, scale_rule=scale_rule, backend=backend)
        want = _tie_block(expected) * 2.0**k
        assert torch.equal(y, want), (k, y.tolist())


def test_e3m0_ties_nearest_and_even():
    x = _tie_block([0.125, 0.375, 0.75, 1.5, 3.0, 6.0, 12.0], amax=16.0)
    assert quantize(x, fmt="e3m0")[1:8].tolist() == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert quantize(x, fmt="e3m0", rounding="even")[1:8].tolist() == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_grid_values_are_fixed_points():
    for name, fmt in FORMATS.items():
        grid = torch.tensor(fmt.grid())
        x = torch.cat([grid, -grid])
        for rule in ("rceil", "floor"):
            assert torch.equal(quantize(x, fmt=name, scale_rule=rule), x), (name, rule)


def test_scale_rules_exact_at_powers_of_two_and_max():
    fmt = FORMATS["e2m1"]
    cases = {6.0: (0, 0), nextafter32(6.0, 7.0): (1, 0), 4.0: (0, 0), nextafter32(4.0, 0.0): (0, -1),
             8.0: (1, 1), nextafter32(8.0, 0.0): (1, 0), 3.0: (-1, -1), 1e-45: (-127, -127), 3e38: (126, 125)}
    for amax, (rceil, floor) in cases.items():
        a = torch.tensor([amax], dtype=torch.float32)
        assert shared_exponent(a, fmt, "rceil").item() == rceil, amax
        assert shared_exponent(a, fmt, "floor").item() == floor, amax
        if 1e-30 < amax < 1e30:
            assert rceil == math.ceil(math.log2(amax / 6)) and floor == math.floor(math.log2(amax)) - 2


def test_rceil_never_clips_floor_clips_like_ocp():
    x = torch.tensor([31.0, 7.75 * 4, 1.0])  # amax 31: OCP scale 4, 31/4 = 7.75 -> clipped to 6
    assert quantize(x, scale_rule="floor")[0].item() == 24.0
    assert quantize(x, scale_rule="rceil")[0].item() == 32.0


def test_zero_blocks_and_signed_zero():
    x = torch.tensor([0.0, -0.0] * 16 + [-0.0, 1e-3])
    y = quantize(x)
    assert_bitwise_equal(y[:32], x[:32])
    assert torch.signbit(y[32]) and y[32] == 0
    mx = quantize_packed(torch.zeros(3, 40))
    assert mx.scales.tolist() == [[0, 0]] * 3  # amax 0 -> smallest scale, all-zero codes
    assert mx.packed.eq(0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("layout", ["1x32", "32x1"])
def test_non_finite_block_is_all_nan(bad, layout):
    x = torch.randn(64, 64)
    x[5, 40] = bad  # 1x32: row 5, columns 32..63; 32x1: column 40, rows 0..31
    y = quantize(x, layout=layout)
    nan = torch.isnan(y)
    expected = torch.zeros_like(nan)
    if layout == "1x32":
        expected[5, 32:] = True
    else:
        expected[:32, 40] = True
    assert torch.equal(nan, expected)
    mx = quantize_packed(x, layout=layout)
    assert (mx.scales == 255).sum() == 1
    assert torch.equal(torch.isnan(dequantize(mx)), expected)


def test_ema_rounding_chooses_between_neighbours():
    # One block with scale 2^0 (amax 6); candidates of 1.2 are 1.0 and 1.5, threshold 1.25.
    w = torch.tensor([6.0, 1.2, 1.2, 1.2, -1.2, -1.2, 1.0, 0.0, -0.0, 0.3])
    ema = torch.tensor([6.0, 1.25, 1.2499, 2.9, -1.3, 1.3, 1.4, 0.3, 0.3, -0.3])
    y = quantize(w, rounding="ema", ema=ema)
    # 1.25 >= threshold: up; just below: down; far above: still only the upper neighbour; negative weight uses -ema;
    # opposite-sign EMA: down; on-grid weight 1.0 goes up when the EMA passes 1.25; +0 counts as positive and goes up
    # to 0.5 when ema/2^s >= 0.25; -0 counts as negative (its sign-aligned EMA is -0.3); 0.3 with ema -0.3: down.
    assert y.tolist() == [6.0, 1.5, 1.0, 1.5, -1.5, -1.0, 1.5, 0.5, -0.0, 0.0]


def test_packed_layout_and_codes():
    x = torch.tensor([[0.5, -6.0, 1.5, 0.0, -0.0]])
    mx = quantize_packed(x)
    assert mx.packed.shape == (1, 3) and mx.scales.shape == (1, 1)
    assert mx.packed.tolist() == [[0x1 | (0xF << 4), 0x3 | (0x0 << 4), 0x8]]
    assert mx.scales.item() == 127
    assert_bitwise_equal(dequantize(mx), x)
    assert mx.nbytes == 4


def test_packed_rejects_corrupt_shapes():
    mx = quantize_packed(torch.randn(4, 64))
    mx.scales = mx.scales[:, :1]
    with pytest.raises(ValueError, match="corrupt MXTensor"):
        dequantize(mx)
