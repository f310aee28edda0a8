"""Tseng et al. MXFP4 recipe (quantization/tseng.py): Hadamard algebra, seeding, no-clipping prescale, exact forward,
unbiased backward, shapes/dtypes, config validation. CPU only, a few seconds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantization.mx import ops
from quantization.tseng import (TsengConfig, hadamard_matrix, padded_length, prescaled_quantize, random_hadamard,
                                random_signs, tseng_linear)
from tests.helpers import rel_error


# --- Hadamard matrix and transform ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 64, 128])
def test_hadamard_matrix_orthonormal(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n) and h.dtype == torch.float32
    torch.testing.assert_close(h @ h.t(), torch.eye(n), atol=1e-6, rtol=0)
    assert torch.equal(h, h.t())
    assert torch.allclose(h.abs(), torch.full((n, n), n ** -0.5))
    assert hadamard_matrix(n) is h  # cached per (size, device, dtype)
    assert hadamard_matrix(n, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("bad", [0, 3, 48, -4, 2.0])
def test_hadamard_matrix_rejects_non_power_of_two(bad):
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(bad)


@pytest.mark.parametrize("block", [2, 16, 64])
@pytest.mark.parametrize("k", [64, 70, 128, 5])
def test_random_hadamard_cancels_in_both_gemms(block, k):
    torch.manual_seed(1)
    # dX = dY W: reduction dim C = k; dY (N, C) along its last dim, W (C, D) along its rows.
    dy, w = torch.randn(33, k), torch.randn(k, 24)
    signs = random_signs(padded_length(k, block))
    a, b = random_hadamard(dy, -1, signs, block), random_hadamard(w, 0, signs, block)
    assert a.shape == (33, padded_length(k, block)) and b.shape == (padded_length(k, block), 24)
    assert not torch.allclose(a[:, :k], dy)  # the transform does something
    torch.testing.assert_close(a @ b, dy @ w, atol=1e-4, rtol=1e-5)
    # dW = dY^T X: reduction dim N = k; both along the token dim (rows).
    dy, x = torch.randn(k, 40), torch.randn(k, 24)
    signs = random_signs(padded_length(k, block))
    a, b = random_hadamard(dy, 0, signs, block), random_hadamard(x, 0, signs, block)
    torch.testing.assert_close(a.t() @ b, dy.t() @ x, atol=1e-4, rtol=1e-5)
    # A transform is an isometry along the dim (norms preserved).
    torch.testing.assert_close(b.norm(dim=0), x.norm(dim=0), atol=1e-4, rtol=1e-5)


def test_random_hadamard_checks_sign_length():
    with pytest.raises(ValueError, match="signs must have shape"):
        random_hadamard(torch.randn(4, 70), -1, torch.ones(70), 64)


def test_signs_fresh_per_call_and_seeded():
    torch.manual_seed(5)
    s1, s2 = random_signs(128), random_signs(128)
    assert not torch.equal(s1, s2)
    assert set(s1.unique().tolist()) == {-1.0, 1.0}
    torch.manual_seed(5)
    assert torch.equal(random_signs(128), s1) and torch.equal(random_signs(128), s2)


def test_backward_fresh_per_call_and_repeats_under_seed():
    x, w, dy = torch.randn(2, 20, 48), torch.randn(40, 48), torch.randn(2, 20, 40)

    def grads():
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        tseng_linear(xr, wr, None).backward(dy)
        return xr.grad, wr.grad

    torch.manual_seed(7)
    gx1, gw1 = grads()
    gx2, gw2 = grads()
    assert not torch.equal(gx1, gx2) and not torch.equal(gw1, gw2)
    torch.manual_seed(7)
    gx3, gw3 = grads()
    assert torch.equal(gx1, gx3) and torch.equal(gw1, gw3)


# --- 3/4 prescale: the E2M1 clamp never acts ---------------------------------------------------------------------

def _worst_case_blocks() -> torch.Tensor:
    """Rows of 32 whose amax sits just below / at / just above a power of two, over many binades, with the rest of the
    block random in [-amax, amax] (including values next to amax)."""
    g = torch.Generator().manual_seed(0)
    below = 2.0 - 2.0**-23  # largest fp32 significand: amax / 2^s -> 8 from below
    rows = []
    for k in range(-20, 21):
        for mant in (below, 1.999, 1.75, 1.5, 4 / 3, 1.2, 1.0 + 2.0**-23, 1.0):
            amax = mant * 2.0**k
            row = (torch.rand(32, generator=g) * 2 - 1) * amax
            row[0] = amax
            row[1] = -amax
            row[2] = amax * (1 - 2.0**-22)
            rows.append(row)
    return torch.stack(rows)


def _unclipped_support(v: torch.Tensor):
    """The two E2M1 grid neighbours of v (|v| rounded down / up within its binade) with no clamp at 6."""
    av = v.abs()
    e = (torch.frexp(av).exponent - 1).clamp(0, 2).float()  # exact floor(log2 |v|) (log2 rounds near 2^k)
    step = 2.0 ** (e - 1)
    low = torch.floor(av / step) * step
    return low * v.sign(), (low + step) * v.sign()


@pytest.mark.parametrize("layout", ["1x32", "32x1"])
def test_prescale_never_saturates(layout):
    x = _worst_case_blocks()
    if layout == "32x1":
        x = x.t().contiguous()
    blocks = x.t() if layout == "32x1" else x  # one block per row here
    s = (torch.frexp(blocks.abs().amax(dim=1, keepdim=True)).exponent - 3).float()  # OCP floor(log2 amax) - 2
    v = 0.75 * blocks / 2.0**s
    assert v.abs().max().item() <= 6.0  # 0.75 * (amax / 2^s < 8) <= 6
    low, up = _unclipped_support(v)
    assert up.abs().max().item() <= 6.0  # even the upper neighbour stays on the grid: the clamp never acts
    for seed in range(8):
        q = prescaled_quantize(x, layout, seed=(seed, 17))
        qb = (q.t() if layout == "32x1" else q) / 2.0**s
        assert torch.all((qb == low) | (qb == up)), "a value left its unclipped stochastic-rounding support"
    # Contrast: prescaling before ops.quantize takes the scale from 0.75 * amax and does clip (amax = 1.2 * 2^k).
    row = torch.full((1, 32), 1.2)
    deq = ops.quantize(0.75 * row, "1x32", "e2m1", "floor", "stochastic")
    assert deq.max().item() < 0.9  # 0.9 / 2^-3 = 7.2 is clamped to 6 -> 0.75: biased


@pytest.mark.slow
def test_prescaled_quantize_unbiased():
    torch.manual_seed(0)
    x = _worst_case_blocks()[::4] * 3.0
    draws = 400
    mean = torch.stack([prescaled_quantize(x, "1x32", seed=(i, 3)) for i in range(draws)]).mean(0)
    scale = 2.0 ** (torch.frexp(x.abs().amax(dim=1, keepdim=True)).exponent - 3).float()
    # One draw is off by at most one grid step (<= 2 * 2^s); the mean of 400 by ~2^s / sqrt(400) = 0.05 * 2^s.
    assert ((mean - 0.75 * x).abs() / scale).max().item() < 0.25
    # ... whereas the error of a single draw is of the order of the step.
    assert ((prescaled_quantize(x, "1x32", seed=(0, 3)) - 0.75 * x).abs() / scale).max().item() > 0.4


# --- the op ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_equals_f_linear(dtype, with_bias):
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, 48, dtype=dtype), torch.randn(70, 48, dtype=dtype)
    b = torch.randn(70, dtype=dtype) if with_bias else None
    assert torch.equal(tseng_linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(tseng_linear(x, w, b, TsengConfig(rht=False)), F.linear(x, w, b))


def _mean_grads(x, w, b, dy, draws, config):
    sx, sw, errs = torch.zeros_like(x), torch.zeros_like(w), []
    xr0, wr0, br0 = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    F.linear(xr0, wr0, br0).backward(dy)
    for _ in range(draws):
        xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        tseng_linear(xr, wr, br, config).backward(dy)
        assert torch.equal(br.grad, br0.grad)  # bias gradient in high precision
        sx += xr.grad
        sw += wr.grad
        errs.append(rel_error(xr.grad, xr0.grad))
    return sx / draws, sw / draws, xr0.grad, wr0.grad, sum(errs) / draws


def _biased_gemm(a, b):
    """Same RHT, but nearest rounding and no prescale (floor scale then clips): a biased estimator."""
    signs = random_signs(padded_length(a.shape[1], 64))
    a, b = random_hadamard(a, 1, signs, 64), random_hadamard(b, 0, signs, 64)
    return (ops.quantize(a.contiguous(), "1x32", "e2m1", "floor", "nearest")
            @ ops.quantize(b.contiguous(), "32x1", "e2m1", "floor", "nearest"))


@pytest.mark.slow
def test_gradients_unbiased():
    torch.manual_seed(0)
    # N = 80 tokens and C = 70 are not multiples of 64: exercises the padding of both reduction dims.
    x, w, b, dy = torch.randn(2, 40, 48), torch.randn(70, 48), torch.randn(70), torch.randn(2, 40, 70)
    draws = 300
    mx, mw, gx, gw, per_draw = _mean_grads(x, w, b, dy, draws, TsengConfig())
    bound = 2.0 * per_draw / draws**0.5  # noise level of an unbiased mean: per-draw error / sqrt(draws) (~0.013)
    assert per_draw < 0.5
    assert rel_error(mx, gx) < bound and rel_error(mw, gw) < bound
    # The biased variant (nearest, no prescale) fails the same bound: its mean stays off by ~4-5%.
    dy2, x2 = dy.reshape(-1, 70), x.reshape(-1, 48)
    bx = sum(_biased_gemm(dy2, w) for _ in range(draws)) / draws
    bw = sum(_biased_gemm(dy2.t(), x2) for _ in range(draws)) / draws
    assert rel_error(bx.view_as(gx), gx) > 1.5 * bound and rel_error(bw, gw) > 1.5 * bound


@pytest.mark.slow
def test_gradients_unbiased_without_rht():
    torch.manual_seed(1)
    x, w, b, dy = torch.randn(64, 32), torch.randn(32, 32), torch.randn(32), torch.randn(64, 32)
    draws = 200
    mx, mw, gx, gw, per_draw = _mean_grads(x, w, b, dy, draws, TsengConfig(rht=False))
    bound = 2.0 * per_draw / draws**0.5
    assert rel_error(mx, gx) < bound and rel_error(mw, gw) < bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_shapes_and_dtypes(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 48, dtype=dtype, requires_grad=True)
    w = torch.randn(20, 48, dtype=dtype, requires_grad=True)
    b = torch.randn(20, dtype=dtype, requires_grad=True)
    y = tseng_linear(x, w, b)
    assert y.shape == (2, 3, 7, 20) and y.dtype == dtype
    y.backward(torch.randn_like(y))
    for t in (x, w, b):
        assert t.grad.shape == t.shape and t.grad.dtype == dtype and torch.isfinite(t.grad).all()
    # Only one input needing a gradient; no bias.
    w2 = torch.randn(20, 48, dtype=dtype, requires_grad=True)
    tseng_linear(torch.randn(5, 48, dtype=dtype), w2).sum().backward()
    assert w2.grad.shape == (20, 48)
    x2 = torch.randn(5, 48, dtype=dtype, requires_grad=True)
    tseng_linear(x2, torch.randn(20, 48, dtype=dtype)).sum().backward()
    assert x2.grad.shape == (5, 48)


def test_autocast_casts_operands():
    x = torch.randn(4, 48, requires_grad=True)
    w = torch.randn(20, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tseng_linear(x, w)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, F.linear(x.bfloat16(), w.bfloat16()))
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


@pytest.mark.parametrize("kwargs, match", [
    ({"hadamard_block": 48}, "power of two"),
    ({"hadamard_block": 1}, "power of two"),
    ({"hadamard_block": 0}, "power of two"),
    ({"hadamard_block": True}, "power of two"),
    ({"prescale": 0.0}, "prescale"),
    ({"prescale": 1.5}, "prescale"),
    ({"prescale": float("nan")}, "prescale"),
    ({"fmt": "e9m9"}, "e9m9"),
    ({"rht": "yes"}, "rht"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TsengConfig(**kwargs)


def test_bad_shapes_and_config_type():
    with pytest.raises(ValueError, match="do not match"):
        tseng_linear(torch.randn(4, 48), torch.randn(20, 40))
    with pytest.raises(TypeError, match="TsengConfig"):
        tseng_linear(torch.randn(4, 48), torch.randn(20, 48), None, {"prescale": 0.75})
