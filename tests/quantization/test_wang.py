"""Wang et al. FP4 recipe (quantization/wang.py): absmax quantizer, DGE, outlier clamping, forward and backward."""
import math

import numpy as np
import pytest
import torch

from quantization.mx.formats import get_format
from quantization.wang import (WangConfig, absmax_quantize, dge_derivative, outlier_threshold, round_to_grid,
                               wang_linear)

E2M1 = get_format("e2m1")
GRID = E2M1.grid()  # [0, 0.5, 1, 1.5, 2, 3, 4, 6]


def _on_grid(q, scale):
    g = torch.tensor(GRID)
    v = (q / scale).abs()
    return torch.isclose(v.unsqueeze(-1), g, rtol=0, atol=1e-5).any(-1).all()


# ---------------------------------------------------------------- absmax quantizer

def test_round_to_grid_ties_away_from_zero_and_saturation():
    g = torch.tensor(GRID)
    t = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -2.5, -5.0, 0.24, 0.26, 7.0, -9.0, 0.0])
    want = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.5, -1.0, -3.0, -6.0, 0.0, 0.5, 6.0, -6.0, 0.0])
    assert torch.equal(round_to_grid(t, g), want)


def test_absmax_tokenwise_one_scale_per_row():
    torch.manual_seed(0)
    x = torch.randn(7, 33) * torch.logspace(-3, 3, 7).unsqueeze(1)
    q = absmax_quantize(x, -1, "e2m1")
    scale = x.abs().amax(-1, keepdim=True) / 6
    assert q.shape == x.shape and q.dtype == x.dtype
    assert _on_grid(q, scale)
    # each row's absmax lands exactly on 6 * scale, and no value exceeds it
    assert torch.allclose(q.abs().amax(-1, keepdim=True), scale * 6, rtol=1e-6)
    # matches nearest rounding row by row
    ref = round_to_grid(x / scale, torch.tensor(GRID)) * scale
    assert torch.allclose(q, ref, rtol=1e-6, atol=0)


def test_absmax_channelwise_weight_and_dim0():
    torch.manual_seed(1)
    w = torch.randn(5, 12) * torch.tensor([1e-2, 1.0, 3.0, 50.0, 0.1]).unsqueeze(1)
    q = absmax_quantize(w, -1, E2M1)  # one scale per output channel (row of W)
    s = w.abs().amax(-1, keepdim=True) / 6
    assert _on_grid(q, s)
    # dim=0 gives one scale per column instead
    q0 = absmax_quantize(w.t().contiguous(), 0, "e2m1")
    assert torch.allclose(q0, q.t(), rtol=1e-6)


def test_absmax_ties_away_from_zero_scaled():
    # absmax 6 -> scale 1: the values are exactly the midpoints
    x = torch.tensor([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0],
                      [-6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0]])
    q = absmax_quantize(x, -1, "e2m1")
    assert torch.equal(q[0], torch.tensor([6.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]))
    assert torch.equal(q[1], -q[0])
    # scale 1/2 (absmax 3): ties still away from zero
    assert torch.equal(absmax_quantize(x[:1] / 2, -1, "e2m1"), q[:1] / 2)


def test_absmax_zero_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.1, 0.3]])
    q = absmax_quantize(x, -1, "e2m1")
    assert torch.equal(q[0], torch.zeros(3))
    assert torch.isfinite(q).all()
    assert torch.equal(absmax_quantize(torch.zeros(3, 4), -1, "e2m1"), torch.zeros(3, 4))


def test_absmax_bf16_keeps_dtype():
    x = torch.randn(4, 8).bfloat16()
    q = absmax_quantize(x, -1, "e2m1")
    assert q.dtype == torch.bfloat16
    assert torch.allclose(q.float(), absmax_quantize(x.float(), -1, "e2m1"), rtol=1e-2)


# ---------------------------------------------------------------- DGE

def _f_prime(x, delta, k=5.0, clamp=3.0):
    u = abs(2 * x / delta - 1)
    return min(clamp, (1 / k) * u ** (1 / k - 1)) if u > 0 else clamp


@pytest.mark.parametrize("w, lower, delta", [
    (0.1, 0.0, 0.5), (0.4, 0.0, 0.5), (1.2, 1.0, 0.5), (2.3, 2.0, 1.0), (2.9, 2.0, 1.0), (4.5, 4.0, 2.0),
    (5.9, 4.0, 2.0), (-0.1, -0.5, 0.5), (-2.3, -3.0, 1.0), (-5.0, -6.0, 2.0),
])
def test_dge_matches_formula(w, lower, delta):
    got = dge_derivative(torch.tensor([w]), GRID, 5.0, 3.0).item()
    want = _f_prime(w - lower, delta)
    assert got == pytest.approx(want, rel=1e-5)


def test_dge_hand_values_grid_points_and_clamp():
    # on a grid point x = 0: u = 1 -> f' = 1/k
    pts = torch.tensor([0.0, 0.5, 1.0, 3.0, 6.0, -6.0, -1.5])
    assert torch.allclose(dge_derivative(pts, GRID, 5.0, 3.0), torch.full((7,), 0.2))
    # 3/4 of the way: u = 0.5 -> 0.2 * 0.5^-0.8
    assert dge_derivative(torch.tensor([0.375]), GRID).item() == pytest.approx(0.2 * 0.5 ** -0.8, rel=1e-6)
    # the singularity sits at the interval midpoint (the rounding boundary): clamped at 3 there and nearby
    mids = torch.tensor([0.25, 0.75, 2.5, 5.0, -5.0, 0.2501, 2.49])
    assert torch.equal(dge_derivative(mids, GRID, 5.0, 3.0), torch.full((7,), 3.0))
    # clamp engages when (1/5)|u|^-0.8 > 3, i.e. |u| < 15^-1.25
    a = 15 ** -1.25
    inside = torch.tensor([0.25 + 0.25 * a * 0.9])
    outside = torch.tensor([0.25 + 0.25 * a * 1.1])
    assert dge_derivative(inside, GRID).item() == 3.0
    assert dge_derivative(outside, GRID).item() < 3.0
    assert dge_derivative(torch.tensor([0.251]), GRID, 5.0, 10.0).item() == 10.0  # other clamp value respected
    assert dge_derivative(torch.tensor([0.3]), GRID, 5.0, 10.0).item() == pytest.approx(0.2 * 0.2 ** -0.8, rel=1e-6)


def _clamped_mean(k, c):
    """Mean of min(c, (1/k)|u|^(1/k-1)) over u uniform in [-1, 1] (= over x uniform in an interval)."""
    a = (1 / (k * c)) ** (k / (k - 1))  # |u| below which the clamp is active
    return 1 - a ** (1 / k) + c * a


@pytest.mark.parametrize("lower, delta", [(0.0, 0.5), (2.0, 1.0), (4.0, 2.0), (-3.0, 1.0)])
def test_dge_mean_over_interval(lower, delta):
    n = 400_000
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n * delta + lower
    m3 = dge_derivative(x.float(), GRID, 5.0, 3.0).double().mean().item()
    # with the clamp at 3, k = 5 the mean is 1 - 15^-1/4 + 3 * 15^-5/4 = 0.5935 (not 1: the clamp removes the
    # integrable spike at the midpoint); without a clamp it is exactly 1 (f(delta) - f(0) = delta).
    assert _clamped_mean(5.0, 3.0) == pytest.approx(0.59349, abs=1e-4)
    assert m3 == pytest.approx(_clamped_mean(5.0, 3.0), abs=2e-3)
    m100 = dge_derivative(x.float(), GRID, 5.0, 100.0).double().mean().item()
    assert m100 == pytest.approx(_clamped_mean(5.0, 100.0), abs=5e-3)
    assert _clamped_mean(5.0, 1e12) == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------- outlier clamping

def _np_quantile(x, q):
    """Independent reference for outlier_threshold: numpy sorts |x| in float64 (NaN last), then the definition's
    'linear' interpolation in float64, rounded to float32 once."""
    s = np.sort(np.abs(x.detach().float().reshape(-1).numpy().astype(np.float64)))
    rank = q * (s.size - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    a, b = s[lo], s[hi]
    return np.float32(a if a == b else a + (rank - lo) * (b - a))


def _same_bits(got, want):
    """got (0-d float32 tensor) has the bits of want (np.float32); any NaN equals any NaN."""
    assert got.dtype == torch.float32 and got.shape == ()
    if got.isnan().item() or np.isnan(want):
        return bool(got.isnan().item() and np.isnan(want))
    return got.view(torch.int32).item() == int(np.float32(want).view(np.int32))


def _check_exact(x, qs=(0.0, 0.5, 0.99, 1.0)):
    for q in qs:
        assert _same_bits(outlier_threshold(x, q), _np_quantile(x, q)), (x.shape, q)


QS_ALL = (0.0, 0.5, 0.99, 1.0, 0.25, 0.9, 0.999, 1e-7, 1 - 1e-7)


def test_outlier_threshold_hand_computed():
    x = -torch.arange(1.0, 101.0)  # |x| = 1 .. 100
    assert outlier_threshold(x, 0.5).item() == 50.5  # rank 49.5: between 50 and 51
    assert outlier_threshold(x, 0.99).item() == np.float32(99.01)  # rank 98.01: 99 + 0.01 * (100 - 99)
    assert outlier_threshold(x, 1.0).item() == 100.0 and outlier_threshold(x, 0.0).item() == 1.0
    assert outlier_threshold(torch.tensor([[4.0, -1.0], [0.0, 2.0]]), 0.5).item() == 1.5  # 0 1 2 4: rank 1.5


def test_outlier_threshold_within_one_ulp_of_numpy_quantile():
    g = torch.Generator().manual_seed(2)
    for shape in [(1,), (7,), (100,), (13, 17), (3, 5, 64), (20000,)]:
        x = torch.randn(shape, generator=g) * 10.0 ** float(torch.empty(()).uniform_(-6, 6, generator=g))
        a = np.abs(x.numpy().astype(np.float64)).reshape(-1)
        for q in (0.99, 0.5, 0.9, 1.0, 0.0, 0.123456789):
            want = np.quantile(a, q, method="linear")
            got = outlier_threshold(x, q).item()
            assert abs(got - want) <= np.spacing(np.float32(want)), (shape, q, got, want)


@pytest.mark.slow
def test_outlier_threshold_bitwise_random_sizes():
    g = torch.Generator().manual_seed(11)
    for _ in range(60):
        n = int(torch.randint(1, 3000, (1,), generator=g))
        scale = 10.0 ** float(torch.empty(()).uniform_(-6, 6, generator=g))
        x = torch.randn(n, generator=g) * scale
        _check_exact(x, QS_ALL)
    for q in torch.rand(40, generator=g, dtype=torch.float64).tolist():  # arbitrary q, q * (n - 1) rarely integral
        _check_exact(torch.randn(997, generator=g), (q,))
    _check_exact(torch.randn(300, 700, generator=g), QS_ALL)  # 2-D input, 210000 elements


def test_outlier_threshold_bitwise_ties_and_all_equal():
    g = torch.Generator().manual_seed(12)
    x = torch.randint(-3, 4, (5000,), generator=g).float() * 0.75  # 4 distinct magnitudes, heavy ties
    _check_exact(x, QS_ALL)
    for n in (1, 2, 3, 1000, 4097):
        _check_exact(torch.full((n,), -2.5), QS_ALL)
        assert outlier_threshold(torch.full((n,), -2.5), 0.99).item() == 2.5
    # ties straddling the interpolation: ranks lo and hi on the same value, and on different values
    x = torch.tensor([1.0] * 99 + [3.0])
    _check_exact(x, QS_ALL)


def test_outlier_threshold_bitwise_zeros_and_subnormals():
    g = torch.Generator().manual_seed(13)
    _check_exact(torch.zeros(777), QS_ALL)
    _check_exact(-torch.zeros(5), QS_ALL)  # -0.0: |x| = +0.0
    assert outlier_threshold(-torch.zeros(5), 0.5).view(torch.int32).item() == 0
    x = torch.randn(2000, generator=g)
    x[torch.rand(2000, generator=g) < 0.7] = 0.0  # most of the tensor exactly zero
    _check_exact(x, QS_ALL)
    tiny = torch.finfo(torch.float32).tiny
    sub = torch.randn(3000, generator=g) * tiny  # mostly subnormal (|x| < 2^-126), some normal
    assert ((sub.abs() < tiny) & (sub != 0)).sum() > 1000
    _check_exact(sub, QS_ALL)
    # smallest subnormals and zeros only
    x = torch.tensor([0.0, 1e-45, -1e-45, 3e-45, 0.0, 2.8e-45] * 50)
    _check_exact(x, QS_ALL)


def test_outlier_threshold_bitwise_infs_and_wide_range():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(1000, generator=g)
    x[[3, 500, 999]] = torch.tensor([float("inf"), -float("inf"), float("inf")])
    # q = 0.99 selects finite values; ranks reaching the infs give inf (between two infs, or finite to inf)
    _check_exact(x, QS_ALL + (0.998, 0.9985, 0.999))
    assert math.isfinite(outlier_threshold(x, 0.99).item())
    assert outlier_threshold(x, 1.0).item() == math.inf and outlier_threshold(x, 0.9985).item() == math.inf
    _check_exact(torch.tensor([float("inf")]), QS_ALL)
    _check_exact(torch.tensor([1.0, float("inf")]), QS_ALL)
    # magnitudes over the whole float32 range: subnormal .. 1e38, plus infs (many high-16-bit buckets)
    w = torch.randn(4000, generator=g, dtype=torch.float64) * torch.exp(torch.randn(4000, generator=g,
                                                                              dtype=torch.float64) * 30)
    w = w.float()
    assert w.isinf().any() and (w.abs() < torch.finfo(torch.float32).tiny).any()
    _check_exact(w, QS_ALL)


def test_outlier_threshold_bitwise_adjacent_buckets():
    # ranks lo and lo + 1 in different radix buckets (bits >> 16): consecutive floats across a bucket boundary, and
    # far-apart buckets with only empty buckets between
    b = 0x3F80  # bucket of 1.0
    pats = torch.tensor([(b << 16) | 0xFFFF, ((b + 1) << 16) | 0x0000], dtype=torch.int32)
    x = pats.view(torch.float32).repeat_interleave(torch.tensor([3, 5]))  # sorted: 3 x lower, 5 x next float
    _check_exact(x, QS_ALL + (2 / 7, 2.5 / 7, 3 / 7))
    x = torch.tensor([1e-30] * 10 + [1e30] * 10)
    _check_exact(x, QS_ALL + (9 / 19, 9.5 / 19))
    x = torch.tensor([1.0, 2.0])
    for q in (0.0, 0.3, 0.5, 0.7, 1.0):
        _check_exact(x, (q,))
    # all 2^16 low patterns of one bucket, and the first of the next, shuffled
    g = torch.Generator().manual_seed(15)
    pats = torch.cat([(b << 16) | torch.arange(1 << 16, dtype=torch.int32), torch.tensor([(b + 1) << 16],
                                                                                          dtype=torch.int32)])
    x = pats.view(torch.float32)[torch.randperm(pats.numel(), generator=g)]
    _check_exact(x, QS_ALL + (1 - 0.5 / 65536, 0.5 / 65536))


def test_outlier_threshold_n1_and_dtypes():
    for v in (0.0, -3.25, 1e-40, 7e37):
        _check_exact(torch.tensor([v]), QS_ALL)
        _check_exact(torch.tensor(v), QS_ALL)  # 0-d input
        assert outlier_threshold(torch.tensor([v]), 0.99).item() == torch.tensor([v]).abs().item()
    g = torch.Generator().manual_seed(16)
    x = torch.randn(37, 61, generator=g) * 3
    for dt in (torch.bfloat16, torch.float16):
        xd = x.to(dt)
        _check_exact(xd, QS_ALL)
        for q in QS_ALL:  # widened to float32 exactly first: the same as on the float32 copy
            assert outlier_threshold(xd, q).item() == outlier_threshold(xd.float(), q).item()
    xb = torch.randint(-2, 3, (4001,), generator=g).to(torch.bfloat16) * 1.5  # bf16 with heavy ties
    _check_exact(xb, QS_ALL)
    t = outlier_threshold(x.to(torch.bfloat16), 0.99)
    assert t.dtype == torch.float32 and t.shape == () and t.device == x.device
    # non-contiguous input and a tensor needing grad
    xt = torch.randn(64, 48, generator=g).t()
    _check_exact(xt, QS_ALL)
    xg = torch.randn(100, generator=g, requires_grad=True)
    assert not outlier_threshold(xg, 0.5).requires_grad


def test_outlier_threshold_nan_ordered_above_inf():
    # NaN counts as larger than +inf (not torch.quantile's all-NaN result)
    x = torch.arange(1.0, 101.0)
    x[[10, 20]] = torch.tensor([float("nan"), -float("nan")])
    got = outlier_threshold(x, 0.5)
    assert _same_bits(got, _np_quantile(x, 0.5))  # the median of 98 numbers and two NaNs counted on top
    assert math.isfinite(got.item())
    assert math.isnan(outlier_threshold(x, 1.0).item()) and math.isnan(outlier_threshold(x, 0.995).item())
    g = torch.Generator().manual_seed(17)
    y = torch.randn(3000, generator=g)
    y[torch.randint(0, 3000, (20,), generator=g)] = float("nan")
    y[torch.randint(0, 3000, (5,), generator=g)] = float("inf")
    for q in QS_ALL + (0.9955, 0.997):
        assert _same_bits(outlier_threshold(y, q), _np_quantile(y, q)), q


def test_outlier_threshold_rejects_empty_and_bad_q():
    with pytest.raises(ValueError, match="empty"):
        outlier_threshold(torch.zeros(0, 4), 0.5)
    for q in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="q must be"):
            outlier_threshold(torch.ones(4), q)


def test_outlier_residual_reconstructs_unclamped_product():
    torch.manual_seed(3)
    x = torch.randn(64, 32)
    x[3, 5], x[10, 0] = 40.0, -25.0
    w = torch.randn(16, 32)
    t = outlier_threshold(x, 0.99)
    xc = x.clamp(-t, t)
    assert (x != xc).sum() >= 2  # something is clamped
    # identity quantizer: Q(clamp X) W^T + (X - clamp X) W^T == X W^T
    assert torch.allclose(xc @ w.t() + (x - xc) @ w.t(), x @ w.t(), rtol=1e-5, atol=1e-4)


def test_residual_zero_when_nothing_exceeds_quantile():
    # 2% of entries share the largest magnitude -> the 0.99 quantile is that magnitude; nothing exceeds it
    x = torch.zeros(10, 10)
    x[0, 0], x[5, 5] = 1.0, -1.0
    x[1] = 0.5
    t = outlier_threshold(x, 0.99)
    assert t.item() == 1.0
    assert torch.equal(x - x.clamp(-t, t), torch.zeros_like(x))
    w = torch.randn(4, 10)
    # the op: same output with and without the residual term
    cfg_r, cfg_n = WangConfig(), WangConfig(outlier_residual=False)
    assert torch.equal(wang_linear(x, w, None, cfg_r), wang_linear(x, w, None, cfg_n))


# ---------------------------------------------------------------- the op: forward / backward

def _hand_forward(x, w, b, q=0.99, residual=True):
    x2 = x.reshape(-1, x.shape[-1])
    t = torch.tensor(_np_quantile(x2, q))
    xc = x2.clamp(-t, t)
    xq = absmax_quantize(xc, -1, "e2m1")
    wq = absmax_quantize(w, -1, "e2m1")
    y = xq @ wq.t() + (b if b is not None else 0)
    if residual:
        y = y + (x2 - xc) @ wq.t()
    return y.reshape(*x.shape[:-1], w.shape[0]), t, wq


def _data(seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 10, 32, generator=g)
    x[0, 1, 2], x[2, 4, 7] = 30.0, -20.0
    w = torch.randn(12, 32, generator=g) * 0.1
    b = torch.randn(12, generator=g)
    return x, w, b


@pytest.mark.parametrize("residual", [True, False])
def test_forward_equals_hand_composition(residual):
    x, w, b = _data()
    y = wang_linear(x, w, b, WangConfig(outlier_residual=residual))
    ref, _, _ = _hand_forward(x, w, b, residual=residual)
    assert y.shape == (3, 10, 12) and y.dtype == torch.float32
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    # no clamping with quantile 1: plain Q(X) Q(W)^T + b
    y1 = wang_linear(x, w, None, WangConfig(outlier_quantile=1.0))
    ref1 = absmax_quantize(x.reshape(-1, 32), -1, "e2m1") @ absmax_quantize(w, -1, "e2m1").t()
    assert torch.allclose(y1, ref1.reshape(3, 10, 12), rtol=1e-5, atol=1e-5)


def test_residual_improves_outlier_error():
    x, w, b = _data()
    exact = x @ w.t() + b
    e_res = (wang_linear(x, w, b) - exact).norm()
    e_none = (wang_linear(x, w, b, WangConfig(outlier_quantile=1.0)) - exact).norm()
    assert e_res < e_none


def test_backward_dw_is_dge_scaled_and_dx_is_ste():
    x, w, b = _data(5)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    y = wang_linear(x, w, b)
    dy = torch.randn_like(y)
    y.backward(dy)
    x2, dy2 = x.detach().reshape(-1, 32), dy.reshape(-1, 12)
    wd = w.detach()
    w_scaled = wd / (wd.abs().amax(-1, keepdim=True) / 6)
    fprime = dge_derivative(w_scaled, GRID, 5.0, 3.0)
    assert torch.allclose(w.grad, (dy2.t() @ x2) * fprime, rtol=1e-5, atol=1e-5)
    wq = absmax_quantize(wd, -1, "e2m1")
    # STE: d/dX [Q(clamp X) + (X - clamp X)] = 1, so dX = dY Q(W) everywhere (outliers included)
    assert torch.allclose(x.grad, (dy2 @ wq).reshape(x.shape), rtol=1e-5, atol=1e-5)
    assert torch.allclose(b.grad, dy2.sum(0), rtol=1e-5, atol=1e-5)


def test_backward_without_residual_masks_outliers():
    x, w, b = _data(6)
    x.requires_grad_(True)
    y = wang_linear(x, w, b, WangConfig(outlier_residual=False))
    dy = torch.randn_like(y)
    y.backward(dy)
    t = torch.tensor(_np_quantile(x, 0.99))
    mask = x.detach().abs() <= t
    ref = (dy.reshape(-1, 12) @ absmax_quantize(w, -1, "e2m1")).reshape(x.shape) * mask
    assert torch.allclose(x.grad, ref, rtol=1e-5, atol=1e-5)
    assert (x.grad[~mask] == 0).all() and (~mask).any()


def test_autograd_selective_and_shapes():
    x, w, _ = _data(7)
    w.requires_grad_(True)
    y = wang_linear(x, w)  # x needs no grad, no bias
    y.sum().backward()
    assert w.grad.shape == w.shape and w.grad.dtype == w.dtype
    x2 = torch.randn(5, 32, requires_grad=True)
    wang_linear(x2, w.detach()).sum().backward()
    assert x2.grad.shape == (5, 32)
    assert wang_linear(torch.randn(2, 3, 4, 32), w.detach()).shape == (2, 3, 4, 12)


def test_bf16_inputs():
    x, w, b = _data(8)
    xb, wb, bb = x.bfloat16().requires_grad_(True), w.bfloat16().requires_grad_(True), b.bfloat16()
    y = wang_linear(xb, wb, bb)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    ref, _, _ = _hand_forward(xb.detach().float(), wb.detach().float(), bb.float())
    assert torch.allclose(y.float(), ref, rtol=5e-2, atol=5e-2)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("kwargs, word", [
    (dict(fmt="e9m9"), "e9m9"), (dict(dge_k=1.0), "1.0"), (dict(dge_k=-2.0), "-2.0"), (dict(dge_clamp=0.0), "0.0"),
    (dict(outlier_quantile=0.0), "0.0"), (dict(outlier_quantile=1.5), "1.5"), (dict(outlier_residual="yes"), "yes"),
])
def test_bad_config(kwargs, word):
    with pytest.raises(ValueError, match=word):
        WangConfig(**kwargs)


def test_default_config_and_shape_errors():
    c = WangConfig()
    assert (c.fmt, c.dge_k, c.dge_clamp, c.outlier_quantile, c.outlier_residual) == ("e2m1", 5.0, 3.0, 0.99, True)
    with pytest.raises(ValueError, match="shape"):
        wang_linear(torch.randn(4, 8), torch.randn(3, 9))
    assert math.isfinite(wang_linear(torch.zeros(4, 8), torch.zeros(3, 8)).abs().sum().item())


def test_outlier_threshold_beyond_torch_quantile_limit():
    n = 2**24 + 3  # above torch.quantile's historical 2^24 input limit; the radix select has none
    x = torch.randn(n, generator=torch.Generator().manual_seed(9))
    _check_exact(x.view(-1, 1), (0.99, 0.5))
