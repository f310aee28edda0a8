"""QRampingAdamW against torch.optim.AdamW and a hand-written per-element oracle; state dicts; the calibration."""
import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from quantization import QLinear, get_recipe
from quantization.ramping import QRampingAdamW, QRampingCalibrator, QRampingConfig, update_periods_from_ratio

HYPER = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
SHAPES = [(40, 70), (33,), (5, 3, 4)]


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]


def _grads(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(steps)]


def _run(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()


def _assert_equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("flags", [{}, {"foreach": True}, {"fused": True}])
def test_without_periods_it_is_torch_adamw(flags):
    ours, theirs = _params(), _params()
    grads = _grads(5)
    _run(QRampingAdamW(ours, **HYPER, **flags), ours, grads)
    _run(torch.optim.AdamW(theirs, **HYPER, **flags), theirs, grads)
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_ones_periods_are_torch_adamw(backend):
    ours, theirs = _params(), _params()
    grads = _grads(5)
    optimizer = QRampingAdamW(ours, **HYPER, backend=backend)
    optimizer.set_update_periods({p: torch.ones(p.shape, dtype=torch.int64) for p in ours})
    _run(optimizer, ours, grads)
    _run(torch.optim.AdamW(theirs, **HYPER), theirs, grads)
    if backend == "torch":
        _assert_equal(ours, theirs)  # the reference performs torch's own operations
    else:
        for x, y in zip(ours, theirs):  # the kernel: same formula, rounding may differ in the last bit
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7)


def _oracle(params, periods, grads, lr, betas, eps, weight_decay):
    """Q-Ramping per element in float64 Python arithmetic, straight from the rule in docs/methods.md#q-ramping."""
    beta1, beta2 = betas
    out = []
    for index, p in enumerate(params):
        flat, per = p.detach().double().flatten().tolist(), periods[index].flatten().tolist()
        m, v, acc, cnt = [0.0] * len(flat), [0.0] * len(flat), [0.0] * len(flat), [0] * len(flat)
        for t, step_grads in enumerate(grads, start=1):
            g = step_grads[index].double().flatten().tolist()
            for i in range(len(flat)):
                flat[i] *= 1 - lr * weight_decay
                if math.isfinite(g[i]):
                    acc[i] += g[i]
                    cnt[i] += 1
                if cnt[i] and cnt[i] >= per[i]:
                    mean = acc[i] / cnt[i]
                    m[i] = beta1 * m[i] + (1 - beta1) * mean
                    v[i] = beta2 * v[i] + (1 - beta2) * mean * mean
                    m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
                    flat[i] -= lr * cnt[i] * m_hat / (math.sqrt(v_hat) + eps)
                    acc[i], cnt[i] = 0.0, 0
        out.append(torch.tensor(flat, dtype=torch.float64).view(p.shape))
    return out


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mixed_periods_match_the_per_element_oracle(backend):
    params = _params()
    g = torch.Generator().manual_seed(7)
    periods = [torch.randint(1, 5, s, generator=g) for s in SHAPES]
    grads = _grads(9)
    grads[3][0][0, :5] = float("nan")  # non-finite elements are not accumulated
    grads[5][1][2] = float("inf")
    want = _oracle(params, periods, grads, **HYPER)
    optimizer = QRampingAdamW(params, **HYPER, backend=backend)
    optimizer.set_update_periods(dict(zip(params, periods)))
    _run(optimizer, params, grads)
    for got, expected in zip(params, want):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_pending_accumulation_and_counts_are_visible_in_the_state():
    (p,) = [torch.zeros(4, requires_grad=True)]
    optimizer = QRampingAdamW([p], lr=0.1, weight_decay=0.0)
    optimizer.set_update_periods({p: torch.tensor([1, 2, 3, 3])})
    p.grad = torch.tensor([1.0, 1.0, 1.0, float("nan")])
    optimizer.step()
    state = optimizer.state[p]
    assert state["accum_count"].tolist() == [0, 1, 1, 0] and state["grad_accum"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert p[0] != 0 and p[1:].tolist() == [0.0, 0.0, 0.0]  # only the period-1 element moved


def test_weight_decay_applies_every_step_to_waiting_elements():
    p = torch.ones(3, requires_grad=True)
    optimizer = QRampingAdamW([p], lr=0.1, weight_decay=0.5)
    optimizer.set_update_periods({p: torch.full((3,), 4)})
    for _ in range(3):
        p.grad = torch.ones(3)
        optimizer.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.95**3))


def test_clipping_before_the_step_is_what_accumulates():
    p = torch.zeros(3, requires_grad=True)
    optimizer = QRampingAdamW([p], lr=0.1)
    optimizer.set_update_periods({p: torch.full((3,), 2)})
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    torch.nn.utils.clip_grad_norm_([p], 1.0)
    optimizer.step()
    torch.testing.assert_close(optimizer.state[p]["grad_accum"], torch.tensor([0.6, 0.8, 0.0]))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_state_dict_round_trip_mid_accumulation_resumes_identically(backend):
    params = _params()
    periods = [torch.full(s, 3) for s in SHAPES]
    grads = _grads(8)
    optimizer = QRampingAdamW(params, **HYPER, backend=backend)
    optimizer.set_update_periods(dict(zip(params, periods)))
    _run(optimizer, params, grads[:4])  # 4 steps with period 3: one element step taken, one gradient pending
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(optimizer.state_dict())
    _run(optimizer, params, grads[4:])

    resumed = [p.clone().requires_grad_() for p in saved_params]
    other = QRampingAdamW(resumed, **HYPER, backend=backend)
    other.load_state_dict(saved)
    state = other.state[resumed[0]]
    assert state["update_period"].dtype == state["accum_count"].dtype == torch.int32
    assert state["accum_count"].max() == 1
    _run(other, resumed, grads[4:])
    _assert_equal(params, resumed)


def test_plain_adamw_ignores_periods_and_keeps_accumulators():
    ours, theirs = _params(), _params()
    grads = _grads(3)
    optimizer = QRampingAdamW(ours, **HYPER)
    optimizer.set_update_periods({p: torch.full(p.shape, 5) for p in ours})
    with optimizer.plain_adamw():
        _run(optimizer, ours, grads)
    _run(torch.optim.AdamW(theirs, **HYPER), theirs, grads)
    _assert_equal(ours, theirs)
    assert all(int(s["accum_count"].abs().sum()) == 0 for s in optimizer.state.values())


def test_set_update_periods_errors_and_reset():
    a, b = _params()[:2]
    optimizer = QRampingAdamW([a, b], lr=0.1)
    with pytest.raises(ValueError, match=r"update period of shape \(3,\) for a parameter of shape \(40, 70\)"):
        optimizer.set_update_periods({a: torch.ones(3, dtype=torch.int64)})
    with pytest.raises(TypeError, match="integer tensor, got torch.float32"):
        optimizer.set_update_periods({a: torch.ones(40, 70)})
    with pytest.raises(ValueError, match="must be >= 1, got a minimum of 0"):
        optimizer.set_update_periods({a: torch.zeros(40, 70, dtype=torch.int64)})
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        optimizer.set_update_periods({torch.zeros(2): torch.ones(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="unknown backend 'cuda'; valid choices: auto, torch, triton"):
        QRampingAdamW([a], backend="cuda")
    optimizer.set_update_periods({a: torch.full((40, 70), 4), b: torch.full((33,), 2)})
    optimizer.set_update_periods({b: torch.full((33,), 3)})
    periods = optimizer.update_periods()
    assert periods[a].eq(1).all() and periods[b].eq(3).all()  # not given: back to period 1


def test_period_formula():
    ratio = torch.tensor([0.0, 15.9, 16.0, 31.9, 32.0, 100.0, 1e9])
    assert update_periods_from_ratio(ratio, 16, 5, 1000).tolist() == [1, 1, 6, 6, 11, 31, 1000]
    assert update_periods_from_ratio(ratio, 8, 3, 20).tolist() == [1, 4, 7, 10, 13, 20, 20]


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(QLinear(32, 64, recipe="tetrajet_qramping"), nn.GELU(),
                         QLinear(64, 10, recipe="tetrajet_qramping"))


def _train_step(model, optimizer, scaler, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 32, generator=g), torch.randint(0, 10, (48,), generator=g)
    optimizer.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()


def _rng_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()


def test_calibration_restores_everything_and_sets_periods():
    model = _tiny_model()
    optimizer = QRampingAdamW(model.parameters(), lr=5e-2, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
    for step in range(3):
        _train_step(model, optimizer, scaler, step)
    assert QRampingCalibrator(model, optimizer, 50).config == get_recipe("tetrajet_qramping").method_config("qramping")
    calibrator = QRampingCalibrator(model, optimizer, 50, QRampingConfig(k1=1.0, k2=2, calib_steps=10))
    assert calibrator.interval == 50 and calibrator.due(100) and not calibrator.due(101)
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), scaler.state_dict(),
              _rng_states())
    record = calibrator.calibrate(lambda i: _train_step(model, optimizer, scaler, 100 + i), restore=[scaler])
    for key, value in before[0].items():
        assert torch.equal(model.state_dict()[key], value), key
    after = optimizer.state_dict()
    for index, state in before[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value), key
    assert scaler.state_dict() == before[2] and _rng_states() == before[3]
    periods = optimizer.update_periods()
    assert set(periods) == {model[0].weight, model[2].weight}
    all_periods = torch.cat([p.flatten() for p in periods.values()]).float()
    assert record["type"] == "qramping" and record["seconds"] > 0 and record["max_period"] <= 50
    assert 0 < record["ramped_share"] == float((all_periods > 1).float().mean()) < 1  # k1 = 1: R_w >= 1 ramps
    assert record["mean_period"] == pytest.approx(float(all_periods.mean()))


def test_calibration_measures_through_the_forward_quantizer_on_a_constructed_trajectory():
    model = nn.Sequential(QLinear(32, 1, bias=False, recipe="tetrajet_qramping"))
    layer = model[0]
    optimizer = QRampingAdamW(model.parameters(), lr=0.0)
    base = torch.zeros(1, 32)
    base[0, 0] = 6.0  # block amax 6: scale 1, grid step 0.5 around 1.25
    trajectory = []
    for t in range(31):  # binary fractions: every distance below is exact
        w = base.clone()
        w[0, 1] = 1.25 + (2.0**-7 if t % 2 else -(2.0**-7))  # crosses 1.25 every step: R = 0.5 / 2^-6 = 32
        w[0, 2] = 1.25 + (-(2.0**-7) if t % 3 == 0 else 2.0**-7)  # moves only when it crosses: R = 32 too
        w[0, 3] = 0.3 + 0.01 * t  # moves, never crosses 0.25 or 0.75: R = 0
        w[0, 4] = 0.625 + 0.5 * (t // 10)  # three moves of 0.5, each to the next grid cell: R = 1
        w[0, 5] = 1.0 if t % 2 == 0 else 1.9  # 1.0 <-> 2.0 across two thresholds: R = 1 / 0.9
        trajectory.append(w)
    with torch.no_grad():
        layer.weight.copy_(trajectory[0])

    def constructed_step(i):
        with torch.no_grad():
            layer.weight.copy_(trajectory[i + 1])

    config = QRampingConfig(k1=16, k2=5, calib_steps=30)
    QRampingCalibrator(model, optimizer, steps_per_epoch=100, config=config).calibrate(constructed_step)
    periods = optimizer.update_periods()[layer.weight]
    assert periods[0, :6].tolist() == [1, 11, 11, 1, 1, 1] and periods[0, 6:].eq(1).all()
    QRampingCalibrator(model, optimizer, steps_per_epoch=8, config=QRampingConfig(k1=1, k2=3)).calibrate(
        constructed_step)
    assert optimizer.update_periods()[layer.weight][0, :6].tolist() == [1, 8, 8, 1, 4, 4]  # 97 capped at 8
    assert torch.equal(layer.weight, trajectory[0])  # restored


def test_calibrator_errors():
    model = _tiny_model()
    with pytest.raises(TypeError, match="needs a QRampingAdamW optimizer, got AdamW"):
        QRampingCalibrator(model, torch.optim.AdamW(model.parameters()), steps_per_epoch=10)
    plain = nn.Sequential(QLinear(32, 32, recipe="bf16"))
    with pytest.raises(ValueError, match="no QLinear with a weight quantizer"):
        QRampingCalibrator(plain, QRampingAdamW(plain.parameters()), steps_per_epoch=10)
    with pytest.raises(ValueError, match="qramping.k2 must be an integer >= 0, got 2.5"):
        QRampingConfig(k2=2.5)
