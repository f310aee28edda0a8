"""Xi et al. 2023 INT4 recipe (quantization/int4.py): Hadamard cancellation, per-tensor INT4 grid, unbiased bit
splitting and leverage score sampling, forward = hand composition, unbiased backward, shapes/dtypes, config errors.
CPU only, a few seconds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantization.int4 import (SPLIT_BASE, Int4Config, bit_split, hadamard_quantize, hadamard_transform,
                               int4_linear, int4_quantize, leverage_probabilities, leverage_sample, lss_quantize)
from quantization.tseng import hadamard_matrix
from tests.helpers import rel_error


# --- forward: Hadamard quantizer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [2, 32, 64])
@pytest.mark.parametrize("d", [64, 70, 5])
def test_hadamard_transform_cancels_in_product(block, d):
    torch.manual_seed(0)
    x, w = torch.randn(9, d, dtype=torch.float64), torch.randn(6, d, dtype=torch.float64)
    xh, wh = hadamard_transform(x, block), hadamard_transform(w, block)
    assert xh.shape[1] % block == 0 and xh.shape[1] >= d
    torch.testing.assert_close(xh @ wh.t(), x @ w.t(), atol=1e-12, rtol=0)
    # involution: H H = I (symmetric, orthonormal), on the padded tensor
    torch.testing.assert_close(hadamard_transform(xh, block)[:, :d], x, atol=1e-12, rtol=0)
    # it really mixes (not the identity)
    assert not torch.allclose(xh[:, :d], x)


def test_hadamard_transform_is_block_diagonal_matmul():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    h = hadamard_matrix(32)
    expected = torch.cat([x[:, :32] @ h, x[:, 32:] @ h], 1)
    torch.testing.assert_close(hadamard_transform(x, 32), expected, atol=1e-6, rtol=0)


def test_int4_quantize_on_grid_per_tensor():
    torch.manual_seed(0)
    t = torch.randn(40, 24) * 3
    q, s = int4_quantize(t)
    assert s.dim() == 0 and s.item() == pytest.approx(t.abs().max().item() / 7)
    assert torch.equal(q, q.round()) and q.min() >= -8 and q.max() <= 7
    assert set(q.unique().tolist()) <= set(range(-8, 8))
    assert q.abs().max() == 7  # amax maps to 7, nothing clipped
    assert ((q * s - t).abs() <= s / 2 + 1e-6).all()  # round to nearest
    deq = hadamard_quantize(t, 8)
    qh, sh = int4_quantize(hadamard_transform(t, 8))
    torch.testing.assert_close(deq, qh * sh)
    ratio = deq / sh
    torch.testing.assert_close(ratio, ratio.round(), atol=1e-5, rtol=0)
    assert len(ratio.round().unique()) <= 16


def test_int4_quantize_zero_tensor():
    q, s = int4_quantize(torch.zeros(3, 4))
    assert torch.equal(q, torch.zeros(3, 4)) and s.item() == 1.0


def test_hadamard_suppresses_outlier():
    """One outlier entry: per-tensor INT4 without the transform flushes the other tokens to ~0; HQ spreads the
    outlier over its block of 32 and keeps the other tokens far better."""
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    x[3, 5] = 30.0
    w = torch.randn(32, 128)
    ref = (x @ w.t())[4:]
    q_plain = (lambda t: int4_quantize(t)[0] * int4_quantize(t)[1])
    err_plain = rel_error((q_plain(x) @ q_plain(w).t())[4:], ref)
    err_hq = rel_error((hadamard_quantize(x, 32) @ hadamard_quantize(w, 32).t())[4:], ref)
    assert err_hq < 0.5 * err_plain


@pytest.mark.parametrize("shape,bias", [((4, 7, 64), True), ((10, 70), False), ((96,), True)])
def test_forward_equals_hand_composition(shape, bias):
    torch.manual_seed(0)
    d = shape[-1]
    x, w = torch.randn(*shape), torch.randn(24, d)
    b = torch.randn(24) if bias else None
    block = 32
    dp = -(-d // block) * block
    h = hadamard_matrix(block)

    def hq(t):
        t = F.pad(t, (0, dp - d)).reshape(t.shape[0], dp // block, block) @ h
        t = t.reshape(t.shape[0], dp)
        s = t.abs().max() / 7
        return torch.clamp(torch.round(t / s), -8, 7) * s

    expected = hq(x.reshape(-1, d)) @ hq(w).t()
    if b is not None:
        expected = expected + b
    out = int4_linear(x, w, b)
    assert out.shape == (*shape[:-1], 24) and out.dtype == x.dtype
    torch.testing.assert_close(out, expected.view(*shape[:-1], 24), atol=1e-5, rtol=1e-5)
    assert rel_error(out, F.linear(x, w, b)) < 0.25  # INT4 per tensor is coarse, but it is a linear layer


# --- backward quantizers -------------------------------------------------------------------------------------------

def test_bit_split_grid_and_exact_reconstruction_bounds():
    torch.manual_seed(0)
    g = torch.randn(50, 30) * 1e-3
    g[3, 4] = -0.02  # a large entry sets the per-tensor scale
    sp = bit_split(g)
    assert sp.scale.item() == pytest.approx(0.02 / 98)
    for half in (sp.high, sp.low):
        assert torch.equal(half, half.round()) and half.min() >= -7 and half.max() <= 7
    assert sp.high.min() == -7
    # error of one split: below one low step (the stochastic low half moves by < 1 step)
    assert ((sp.dequantize() - g).abs() < sp.scale * (1 + 1e-4)).all()
    assert SPLIT_BASE == 14


def test_bit_split_stochastic_rounding_unbiased():
    """Values at fractional low-step positions: the mean over draws converges to g; round-to-nearest would be off by
    0.3 steps everywhere, 30 standard errors."""
    s = 1.0 / 98
    frac = torch.tensor([0.3, -0.3, 0.7, 5.3, -6.7, 20.3, 97.6]) * s
    g = torch.cat([frac, torch.tensor([1.0])]).repeat(4, 1)  # amax 1 -> scale 1/98
    n = 4000
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros_like(g)
    for _ in range(n):
        acc += bit_split(g, uniform=torch.rand(g.shape, generator=gen)).dequantize()
    mean = acc / n
    sem = 0.5 * s / n ** 0.5  # std of a Bernoulli offset is <= 0.5 step
    assert ((mean - g).abs() < 5 * sem).all()
    rtn = bit_split(g, uniform=torch.full(g.shape, 0.5)).dequantize()  # SR with u = 0.5 = round to nearest
    assert ((rtn - g).abs()[:, :7] > 0.25 * s).all()


def test_leverage_probabilities_capped_and_budget():
    scores = torch.tensor([100.0, 1.0, 1.0, 2.0, 0.0, 4.0, 1.0, 1.0])
    p = leverage_probabilities(scores, 4.0)
    assert p.sum().item() == pytest.approx(4.0)
    # 100 is capped; then 4 * 3 / 10 = 1.2 > 1 caps the 4 as well; the rest share a budget of 2 over scores 6
    assert p[0] == 1.0 and p[5] == 1.0 and p[4] == 0.0 and (p <= 1).all() and (p >= 0).all()
    idx = [1, 2, 3, 6, 7]
    torch.testing.assert_close(p[idx], scores[idx].double() * 2 / 6)
    assert torch.equal(leverage_probabilities(torch.tensor([0.0, 3.0, 0.0, 1.0]), 2.0),
                       torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64))
    # cascade: capping one pushes another over 1
    p = leverage_probabilities(torch.tensor([10.0, 5.0, 1.0, 1.0, 1.0, 1.0]), 3.0)
    assert p[0] == 1.0 and p[1] == 1.0 and p[2:].sum().item() == pytest.approx(1.0)


@pytest.mark.slow
def test_lss_estimator_unbiased_for_dw():
    """E[lss_quantize(dY, ||X_i||)^T X] = dY^T X. Rows of dY have very different norms (structural sparsity). Two
    biased variants fail the same bound: the N rows of largest leverage score kept unweighted (deterministic
    selection, about 0.03-0.04 off here) and the same Bernoulli sample reweighted uniformly instead of by 1 / p_i."""
    torch.manual_seed(0)
    n, c, d = 32, 6, 5
    dy = torch.randn(n, c, dtype=torch.float64) * torch.logspace(-2, 0, n, dtype=torch.float64).unsqueeze(1)
    x = torch.randn(n, d, dtype=torch.float64) * torch.rand(n, 1, dtype=torch.float64)
    ref = dy.t() @ x
    xn = x.norm(dim=1)
    trials = 1000
    acc, acc_top, acc_uniform = (torch.zeros_like(ref) for _ in range(3))
    for _ in range(trials):
        acc += lss_quantize(dy, xn).t() @ x
        stacked = bit_split(dy).stacked()
        scores = stacked.norm(dim=1) * torch.cat([xn, xn])
        top = torch.zeros(2 * n, dtype=torch.float64)
        top[scores.topk(n).indices] = 1.0
        keep = (torch.rand(2 * n, dtype=torch.float64) < leverage_probabilities(scores, n)).double()
        for weights, into in ((top, acc_top), (keep * 2.0, acc_uniform)):
            b = stacked * weights.unsqueeze(1)
            into += (b[:n] + b[n:]).t() @ x

    def err(a):
        return ((a / trials - ref).norm() / ref.norm()).item()

    bound = 0.01  # measured ~0.002-0.004 for the unbiased estimator over seeds 0-3
    assert err(acc) < bound
    assert err(acc_top) > 2 * bound
    assert err(acc_uniform) > 10 * bound


def test_leverage_probabilities_random_properties():
    torch.manual_seed(0)
    for _ in range(100):
        scores = torch.rand(50) ** 4 * torch.randint(0, 2, (50,))
        budget = float(torch.randint(1, 30, (1,))) + 0.5 * float(torch.randint(0, 2, (1,)))
        p = leverage_probabilities(scores, budget)
        assert (p >= 0).all() and (p <= 1).all() and (p[scores == 0] == 0).all()
        if int((scores > 0).sum()) <= budget:
            assert torch.equal(p, (scores > 0).double())
            continue
        assert p.sum().item() == pytest.approx(budget, abs=1e-9)
        capped, free = p == 1, (p < 1) & (scores > 0)
        ratio = p[free] / scores[free].double()
        assert (ratio.max() - ratio.min()).item() < 1e-9  # proportional to the score below the cap
        if capped.any():
            assert scores[capped].min() >= scores[free].max()


def test_leverage_sample_keeps_expected_rows():
    torch.manual_seed(0)
    stacked = torch.randn(200, 3)
    scores = stacked.norm(dim=1)
    out = leverage_sample(torch.eye(200), scores, 0.5)
    assert out.shape == (100, 200)
    # output row j sums inputs j and j + 100; with the identity, kept input row i is a nonzero column i
    kept = [int((leverage_sample(torch.eye(200), scores, 0.5) != 0).any(dim=0).sum()) for _ in range(200)]
    assert abs(sum(kept) / len(kept) - 100) < 3


def test_leverage_sample_rejects_odd_rows():
    with pytest.raises(ValueError, match="even"):
        leverage_sample(torch.ones(3, 2), torch.ones(3), 0.5)


# --- the op end to end ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_backward_unbiased_for_ste_gradient():
    """Mean of dX, dW over seeds -> the straight-through gradients of the forward actually run:
    dX = dY HQ(W) H^T, dW = dY^T HQ(X) H^T; db exact."""
    torch.manual_seed(0)
    n, d, c = 24, 40, 12
    x0, w0, b0 = torch.randn(n, d, dtype=torch.float64), torch.randn(c, d, dtype=torch.float64), torch.randn(c)
    gy = torch.randn(n, c, dtype=torch.float64) * torch.logspace(-1, 0, n, dtype=torch.float64).unsqueeze(1)
    xq, wq = hadamard_quantize(x0, 32), hadamard_quantize(w0, 32)
    ref_dx = hadamard_transform(gy @ wq, 32)[:, :d]
    ref_dw = hadamard_transform(gy.t() @ xq, 32)[:, :d]
    trials = 1500
    sx = torch.zeros_like(ref_dx)
    sw = torch.zeros_like(ref_dw)
    for _ in range(trials):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        b = b0.double().requires_grad_()
        int4_linear(x, w, b).backward(gy)
        sx += x.grad
        sw += w.grad
        torch.testing.assert_close(b.grad, gy.sum(0))
    assert rel_error(sx / trials, ref_dx) < 0.03  # measured ~0.011-0.019 at 800 trials over seeds 0-2
    assert rel_error(sw / trials, ref_dw) < 0.03
    # and one draw is a usable (noisy) gradient of the full-precision layer
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    int4_linear(x, w).backward(gy)
    assert rel_error(w.grad, gy.t() @ x0) < 1.0


def test_backward_without_lss_is_bit_split_only():
    torch.manual_seed(0)
    x, w = torch.randn(16, 32, requires_grad=True), torch.randn(8, 32, requires_grad=True)
    gy = torch.randn(16, 8)
    int4_linear(x, w, config=Int4Config(lss=False)).backward(gy)
    xq = hadamard_quantize(x.detach(), 32)
    ref_dw = hadamard_transform(gy.t() @ xq, 32)[:, :32]
    assert rel_error(w.grad, ref_dw) < 0.02  # ~7.6-bit dY, no sampling noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_shapes_dtypes_and_partial_grads(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 48, dtype=dtype, requires_grad=True)
    w = torch.randn(20, 48, dtype=dtype, requires_grad=True)
    b = torch.randn(20, dtype=dtype, requires_grad=True)
    y = int4_linear(x, w, b)
    assert y.shape == (2, 5, 20) and y.dtype == dtype
    y.sum().backward()
    assert x.grad.shape == x.shape and x.grad.dtype == dtype
    assert w.grad.shape == w.shape and w.grad.dtype == dtype
    assert b.grad.shape == b.shape
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(w.grad.float()).all()
    # only the weight needs a gradient
    w2 = w.detach().clone().requires_grad_()
    int4_linear(x.detach(), w2).sum().backward()
    assert w2.grad is not None


def test_autocast_bf16_cpu():
    torch.manual_seed(0)
    x = torch.randn(8, 64, requires_grad=True)
    w = torch.randn(16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = int4_linear(x, w)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_zero_gradient_gives_zero():
    x = torch.randn(4, 32, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)
    int4_linear(x, w).backward(torch.zeros(4, 8))
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(w.grad, torch.zeros_like(w))


def test_seeded_reproducible():
    x = torch.randn(16, 32, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)
    grads = []
    for _ in range(2):
        torch.manual_seed(3)
        x.grad = w.grad = None
        int4_linear(x, w).backward(torch.ones(16, 8))
        grads.append((x.grad.clone(), w.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("kwargs,match", [
    ({"hadamard_block": 48}, "hadamard_block"), ({"hadamard_block": 1}, "hadamard_block"),
    ({"hadamard_block": True}, "hadamard_block"), ({"hadamard_block": 32.0}, "hadamard_block"),
    ({"lss": 1}, "lss"), ({"lss_ratio": 0.0}, "lss_ratio"), ({"lss_ratio": 1.5}, "lss_ratio"),
    ({"lss_ratio": float("nan")}, "lss_ratio"), ({"lss_ratio": "0.5"}, "lss_ratio"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        Int4Config(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_config_defaults_frozen_and_call_errors():
    cfg = Int4Config()
    assert (cfg.hadamard_block, cfg.lss, cfg.lss_ratio) == (32, True, 0.5)
    with pytest.raises(Exception):
        cfg.lss = False  # type: ignore[misc]
    with pytest.raises(TypeError, match="Int4Config"):
        int4_linear(torch.randn(2, 4), torch.randn(3, 4), config={"hadamard_block": 2})
    with pytest.raises(ValueError, match="do not match"):
        int4_linear(torch.randn(2, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="2-D"):
        bit_split(torch.randn(2, 3, 4))


def test_lss_scores_use_the_other_operand():
    """Leverage scores for dW multiply ||split dY_i|| by ||X_i||: rows meeting a zero row of X are never sampled
    (and, with 4 positive scores for a budget of 8, the rest are kept exactly, p = 1)."""
    dy = torch.ones(8, 4)  # v = 98 everywhere: high = 7, low = 0, so only the 8 high rows have positive norm
    rw = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])
    torch.manual_seed(0)
    out = lss_quantize(dy, rw)
    torch.testing.assert_close(out[:4], dy[:4])
    assert torch.equal(out[4:], torch.zeros(4, 4))
    torch.testing.assert_close(lss_quantize(dy), dy)  # without row weights all 8 are kept
