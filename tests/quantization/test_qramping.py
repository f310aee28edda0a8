"""QRampingAdamW against torch.optim.AdamW and a hand-written per-element oracle; state dicts; the calibration."""
import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from quantization import QLinear, get_recipe
from quantization import ramping
from quantization.ramping import QRampingAdamW, QRampingCalibrator, QRampingConfig, update_periods_from_ratio
from training.rewind import rewound

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
    record = calibrator.calibrate(lambda i: _train_step(model, optimizer, scaler, 100 + i),
                                  rewind=lambda: rewound([model, optimizer, scaler]))
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

    def rewind():
        return rewound([model, optimizer])

    QRampingCalibrator(model, optimizer, steps_per_epoch=100, config=config).calibrate(constructed_step, rewind)
    periods = optimizer.update_periods()[layer.weight]
    assert periods[0, :6].tolist() == [1, 11, 11, 1, 1, 1] and periods[0, 6:].eq(1).all()
    QRampingCalibrator(model, optimizer, steps_per_epoch=8, config=QRampingConfig(k1=1, k2=3)).calibrate(
        constructed_step, rewind)
    assert optimizer.update_periods()[layer.weight][0, :6].tolist() == [1, 8, 8, 1, 4, 4]  # 97 capped at 8
    assert torch.equal(layer.weight, trajectory[0])  # restored

    def main_process_says_two(periods):  # what share_from_main does under DDP: rank 0's values, in place
        shared.append(len(periods))
        for period in periods:
            period.fill_(2)

    shared = []
    QRampingCalibrator(model, optimizer, steps_per_epoch=8, config=QRampingConfig(k1=1, k2=3),
                       share_from_main=main_process_says_two).calibrate(constructed_step, rewind)
    assert shared == [1] and optimizer.update_periods()[layer.weight].eq(2).all()


def test_calibrator_errors():
    model = _tiny_model()
    with pytest.raises(TypeError, match="needs a QRampingAdamW optimizer, got AdamW"):
        QRampingCalibrator(model, torch.optim.AdamW(model.parameters()), steps_per_epoch=10)
    plain = nn.Sequential(QLinear(32, 32, recipe="bf16"))
    with pytest.raises(ValueError, match="no QLinear with a weight quantizer"):
        QRampingCalibrator(plain, QRampingAdamW(plain.parameters()), steps_per_epoch=10)
    with pytest.raises(ValueError, match="qramping.k2 must be an integer >= 0, got 2.5"):
        QRampingConfig(k2=2.5)


# -- capturable=True: device counters and device scalars, bit for bit the host-counter step ----------------------

def _two_groups(seed=0):
    params = _params(seed)
    return params, [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}]


def _scheduled_lr(step):
    return HYPER["lr"] * (0.5 + 0.125 * (step % 5))  # a new rate at every step, as a per-step schedule sets it


def _run_scheduled(optimizer, params, grads, first_step=0, lr_tensor=None, lr_of=_scheduled_lr):
    for step, step_grads in enumerate(grads, start=first_step):
        for group in optimizer.param_groups:
            group["lr"] = lr_of(step) if lr_tensor is None else lr_tensor.fill_(lr_of(step))
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()


def _ramping_optimizer(params, groups, capturable, periods_seed=7):
    optimizer = QRampingAdamW(groups, **HYPER, backend="triton", capturable=capturable)
    g = torch.Generator().manual_seed(periods_seed)
    optimizer.set_update_periods({p: torch.randint(1, 4, p.shape, generator=g) for p in params})
    return optimizer


def _assert_same_run(a_params, a_opt, b_params, b_opt):
    _assert_equal(a_params, b_params)
    for p, q in zip(a_params, b_params):
        assert a_opt.state[p].keys() == b_opt.state[q].keys()
        for key, value in a_opt.state[p].items():
            assert torch.equal(value.cpu(), b_opt.state[q][key].cpu()), key


@pytest.mark.parametrize("lr_dtype", [None, torch.float64, torch.float32])
def test_capturable_step_is_the_host_counter_step_bit_for_bit(lr_dtype, monkeypatch):
    """The device path (counters on the device, scalars computed there, lr a float or a tensor filled in place)
    gives the host path's parameters and state bit for bit, without reading a tensor on the host."""
    grads = _grads(6)
    grads[2][0][0, :5] = float("nan")
    host_params, host_groups = _two_groups()
    host = _ramping_optimizer(host_params, host_groups, capturable=False)
    if lr_dtype is torch.float32:  # the host run at the rates a float32 tensor holds
        _run_scheduled(host, host_params, grads, lr_of=lambda step: float(torch.tensor(_scheduled_lr(step),
                                                                                       dtype=torch.float32)))
    else:
        _run_scheduled(host, host_params, grads)

    params, groups = _two_groups()
    device = _ramping_optimizer(params, groups, capturable=True)
    lr_tensor = None if lr_dtype is None else torch.zeros((), dtype=lr_dtype)

    def no_host_read(*args, **kwargs):
        raise AssertionError("the capturable step read a tensor on the host")

    _run_scheduled(device, params, grads[:1], lr_tensor=lr_tensor)  # builds its tables (an eager warm-up step)
    for name in ("tolist", "item"):
        monkeypatch.setattr(torch.Tensor, name, no_host_read)
    _run_scheduled(device, params, grads[1:], first_step=1, lr_tensor=lr_tensor)
    monkeypatch.undo()
    _assert_same_run(host_params, host, params, device)
    assert all(group["capturable"] for group in device.param_groups)


def test_capturable_step_past_the_end_of_the_bias_table():
    """Steps beyond the table's last entry read that entry (1.0 both): still the host's values bit for bit."""
    betas = (0.5, 0.6)
    table = ramping.bias_correction_table(*betas)
    last = table.shape[1] - 1
    runs = []
    for capturable in (False, True):
        params = _params()
        optimizer = QRampingAdamW(params, **{**HYPER, "betas": betas}, backend="triton", capturable=capturable)
        optimizer.set_update_periods({p: torch.full(p.shape, 2) for p in params})
        for p in params:
            optimizer.state[p]["step"].fill_(last - 2)
        _run(optimizer, params, _grads(5))
        runs.append((params, optimizer))
    _assert_same_run(*runs[0], *runs[1])
    assert float(runs[1][1].state[runs[1][0][0]]["step"]) == last + 3


def test_bias_correction_table_is_the_host_arithmetic():
    beta1, beta2 = 0.9, 0.999
    table = ramping.bias_correction_table(beta1, beta2)
    last = table.shape[1] - 1
    for step in (1, 2, 7, 100, 5000, last):
        assert table[0, step].item() == 1 - beta1 ** float(step)
        assert table[1, step].item() == (1 - beta2 ** float(step)) ** 0.5
    assert table[:, last].tolist() == [1.0, 1.0]
    assert all(1 - beta2 ** float(step) == 1.0 for step in range(last, last + 20000, 7))  # what clamping relies on
    assert ramping.bias_correction_table(0.0, 0.0).shape == (2, 2)
    with pytest.raises(ValueError, match=r"betas \(0.9, 0.9999999\) would need \d+ entries"):
        ramping.bias_correction_table(0.9, 0.9999999)


def _without_capturable(state):
    """A state dict as QRampingAdamW wrote it before it had ``capturable``."""
    state = copy.deepcopy(state)
    for group in state["param_groups"]:
        del group["capturable"]
    return state


@pytest.mark.parametrize("saved, loaded", [("old", True), ("host", True), ("device", False), ("device", True)])
def test_state_dicts_resume_across_capturable_settings_bit_for_bit(saved, loaded):
    """A run whose optimizer is saved mid-accumulation and loaded into one of either setting continues exactly as
    the uninterrupted host-counter run; the loaded optimizer keeps its own setting."""
    grads = _grads(8)
    want_params, want_groups = _two_groups()
    want = _ramping_optimizer(want_params, want_groups, capturable=False)
    _run_scheduled(want, want_params, grads)

    params, groups = _two_groups()
    first = _ramping_optimizer(params, groups, capturable=saved == "device")
    _run_scheduled(first, params, grads[:4])
    state = copy.deepcopy(first.state_dict())
    if saved == "old":
        state = _without_capturable(state)
    resumed = [p.detach().clone().requires_grad_() for p in params]
    other = QRampingAdamW([{"params": resumed[:2]}, {"params": resumed[2:], "weight_decay": 0.0}], **HYPER,
                          backend="triton", capturable=loaded)
    other.load_state_dict(state)
    assert all(group["capturable"] is loaded for group in other.param_groups)
    assert all(s["step"].dtype == torch.float32 and s["update_period"].dtype == torch.int32
               for s in other.state.values())
    _run_scheduled(other, resumed, grads[4:], first_step=4)
    _assert_same_run(want_params, want, resumed, other)
