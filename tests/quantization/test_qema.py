"""Q-EMA: rounding cases, the EMA buffer and its warm-up, the optimizer-step hook, model EMA and resume."""
import copy

import pytest
import torch
from timm.utils import ModelEmaV3

from quantization import QLinear, get_recipe, quantize, registry
from quantization.ema import QEMA_WARMUP_UPDATES, QEmaState, attach_qema, qema_layers, update_qema
from tests.helpers import tiny_mlp, train_mlp

BACKENDS = ["torch", "triton"]


def _ema_round(w, ema, backend, scale_exp=0):
    """Q-EMA rounding of ``w`` in one block whose amax 6 * 2^k fixes the scale 2^k (values given at scale 1)."""
    s = 2.0**scale_exp
    w = torch.tensor([6.0] + w) * s
    ema = torch.tensor([6.0] + ema) * s
    return (quantize(w, rounding="ema", ema=ema, backend=backend) / s)[1:].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale_exp", [0, -7, 5])
def test_ema_rounding_cases(backend, scale_exp):
    cases = [  # (w, ema, expected): candidates come from w, the sign-aligned EMA picks one
        (1.0, 1.2, 1.0),     # on the grid, EMA below the midpoint 1.25: stays
        (1.0, 1.25, 1.5),    # on the grid, EMA exactly at the midpoint: up
        (1.0, 0.7, 1.0),     # below w: the lower candidate is w itself, never lower
        (2.2, 2.9, 3.0),     # EMA far above: only the upper neighbour, 3.0 (not 4)
        (5.0, 5.0, 6.0),     # top binade (step 2): midpoint 5 -> up to 6
        (5.9, 100.0, 6.0),   # EMA beyond the range: clamped to the largest value
        (-1.2, -1.3, -1.5),  # negative weight: sign-aligned EMA 1.3 >= 1.25: up in magnitude
        (-1.2, 1.3, -1.0),   # opposite-sign EMA: its aligned value -1.3 is below: down
        (0.0, 0.3, 0.5),     # +0 counts as positive: 0.3 >= 0.25 goes to 0.5
        (0.0, -0.3, 0.0),    # +0 with a negative EMA stays 0
        (-0.0, -0.3, -0.5),  # -0 counts as negative: aligned EMA 0.3 goes to -0.5
        (0.2, 0.2, 0.0),     # w itself would round down: EMA equal to w gives nearest
    ]
    got = _ema_round([c[0] for c in cases], [c[1] for c in cases], backend, scale_exp)
    assert got == [c[2] for c in cases]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ema_equal_to_weight_is_nearest_rounding(backend):
    torch.manual_seed(0)
    w = torch.randn(16, 96) * torch.exp(torch.randn(16, 1))
    assert torch.equal(quantize(w, rounding="ema", ema=w, backend=backend), quantize(w, backend=backend))




def test_hook_updates_the_ema_buffer_after_every_step_and_warms_up():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    handle = attach_qema(model, optimizer)
    layers = qema_layers(model)
    expected = [m.weight.detach().clone() for m in layers]
    for step in range(QEMA_WARMUP_UPDATES + 2):
        active = step >= QEMA_WARMUP_UPDATES
        assert all(m.qema_state.active() == active for m in layers)
        plain = layers[0].weight.detach()
        want = quantize(plain, rounding="ema", ema=layers[0].qema_state.weight_ema) if active else quantize(plain)
        assert torch.equal(layers[0].quantized_weight(), want)
        train_mlp(model, optimizer, 1, seed=step)
        expected = [e.lerp(m.weight.detach(), 1 - 0.998) for e, m in zip(expected, layers)]
        for m, e in zip(layers, expected):
            assert int(m.qema_state.ema_updates) == step + 1
            assert torch.equal(m.qema_state.weight_ema, e)
    assert not torch.equal(layers[0].quantized_weight(), quantize(layers[0].weight.detach()))  # EMA matters here
    handle.remove()
    train_mlp(model, optimizer, 1)
    assert int(layers[0].qema_state.ema_updates) == QEMA_WARMUP_UPDATES + 2


@pytest.mark.parametrize("recipe_beta,argument,used", [(0.9, None, 0.9), (0.9, 0.5, 0.5)])
def test_beta_from_the_recipe_or_the_argument(recipe_beta, argument, used):
    model = tiny_mlp(get_recipe("tetrajet_qema").replace(qema_beta=recipe_beta))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [m.qema_state.weight_ema.clone() for m in qema_layers(model)]
    attach_qema(model, optimizer, beta=argument)
    train_mlp(model, optimizer, 1)
    for m, e in zip(qema_layers(model), before):
        assert torch.equal(m.qema_state.weight_ema, e.lerp(m.weight.detach(), 1 - used))


def test_batched_update_equals_per_layer_update():
    model = tiny_mlp()
    with torch.no_grad():
        for m in model.parameters():
            m.add_(0.1)
    twin = copy.deepcopy(model)
    update_qema(qema_layers(model), 0.7)
    for m in qema_layers(twin):
        m.qema_state.update(m.weight, 0.7)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)


def test_skipped_step_does_not_update():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    attach_qema(model, optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaler.scale(model(torch.randn(4, 64)).sum()).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(optimizer)  # non-finite gradient: GradScaler skips optimizer.step, and the hook with it
    assert int(model[0].qema_state.ema_updates) == 0


@pytest.mark.slow
def test_model_ema_neither_corrupts_nor_is_corrupted():
    model = tiny_mlp()
    model_ema = ModelEmaV3(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    attach_qema(model, optimizer)
    reference = tiny_mlp()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    attach_qema(reference, ref_opt)
    train_mlp(model, optimizer, QEMA_WARMUP_UPDATES + 1, model_ema=model_ema)
    train_mlp(reference, ref_opt, QEMA_WARMUP_UPDATES + 1)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)  # the model EMA changed nothing in the training model
    ema_layer = model_ema.module[0]
    # the copied count: its own Q-EMA switches on too
    assert int(ema_layer.qema_state.ema_updates) == QEMA_WARMUP_UPDATES + 1
    assert ema_layer.qema_state.active()
    assert torch.equal(ema_layer.quantized_weight(),
                       quantize(ema_layer.weight.detach(), rounding="ema", ema=ema_layer.qema_state.weight_ema))
    assert not torch.equal(ema_layer.qema_state.weight_ema, model[0].qema_state.weight_ema)  # its own average


@pytest.mark.slow
def test_resume_from_state_dicts_with_the_hook_attached_again():
    model = tiny_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    attach_qema(model, optimizer)
    train_mlp(model, optimizer, 6, seed=3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train_mlp(model, optimizer, 8, seed=4)

    resumed = tiny_mlp(seed=123)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    attach_qema(resumed, resumed_opt)
    assert not resumed[0].qema_state.active()
    train_mlp(resumed, resumed_opt, 8, seed=4)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    assert resumed[0].qema_state.active()


def test_errors():
    with pytest.raises(ValueError, match="no QLinear with Q-EMA"):
        attach_qema(tiny_mlp("tetrajet"), torch.optim.SGD(tiny_mlp().parameters(), lr=0.1))
    model = tiny_mlp()
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\), got 1.5"):
        attach_qema(model, torch.optim.SGD(model.parameters(), lr=0.1), beta=1.5)
    with pytest.raises(ValueError, match="qema_beta must be in"):
        get_recipe("tetrajet_qema").replace(qema_beta=1.0)


def test_state_is_a_layer_state_built_from_the_copied_weight():
    linear = torch.nn.Linear(64, 48)
    layer = QLinear.from_linear(linear, "tetrajet_qema")
    assert isinstance(layer.qema_state, QEmaState)
    assert torch.equal(layer.qema_state.weight_ema, linear.weight.detach())  # the EMA starts at W0, not at init
    assert {"qema_state.weight_ema", "qema_state.ema_updates"} <= set(layer.state_dict())
    assert QLinear(64, 48, recipe="tetrajet").qema_state is None


def test_checkpoints_with_the_older_buffer_names_load():
    model = tiny_mlp()
    with torch.no_grad():
        for m in qema_layers(model):
            m.qema_state.update(m.weight + 0.1, 0.5)
    old = {k.replace("qema_state.", ""): v for k, v in model.state_dict().items()}
    assert "0.weight_ema" in old
    loaded = tiny_mlp(seed=5)
    loaded.load_state_dict(old)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key


class _OtherTarget(torch.nn.Module):
    def rounding_target(self, weight):
        return weight


def test_ema_rounding_needs_exactly_one_rounding_target(monkeypatch):
    monkeypatch.delitem(registry._LAYER_STATES, "qema_state")
    with pytest.raises(ValueError, match="one layer state with a rounding_target expected.*got none"):
        QLinear(64, 48, recipe="tetrajet_qema")
    monkeypatch.undo()
    monkeypatch.setitem(registry._LAYER_STATES, "other_state", lambda recipe, weight: _OtherTarget())
    with pytest.raises(ValueError, match=r"got \['qema_state', 'other_state'\]"):
        QLinear(64, 48, recipe="tetrajet_qema")
    with pytest.raises(ValueError, match="no layer state with a rounding_target expected"):
        QLinear(64, 48, recipe="tetrajet")


TABLE8_BETA = {"deit_tiny": 0.9983, "deit_small": 0.9972, "deit_base": 0.999, "swin_tiny": 0.9975, "swin_small": 0.998}
TABLE8_K2 = {"deit_tiny": 5, "deit_small": 5, "deit_base": 5, "swin_tiny": 3, "swin_small": 4}


def test_method_configs_resolve_to_the_paper_settings():
    from configs import load_config

    def recipe(path, *overrides):
        return load_config([f"configs/methods/{path}.yaml"], overrides).method.resolved

    for name in ("tetrajet_qema", "tetrajet_qramping", "tetrajet_dampen", "tetrajet_freeze"):
        assert recipe(name) == get_recipe(name)
    for model, beta in TABLE8_BETA.items():
        assert recipe(f"tuned/tetrajet_qema_{model}") == get_recipe("tetrajet_qema").replace(qema_beta=beta)
    for model, k2 in TABLE8_K2.items():
        assert recipe(f"tuned/tetrajet_qramping_{model}").method_config("qramping").k2 == k2
    assert recipe("tetrajet_qema", "method.recipe.qema_beta=0.993").qema_beta == 0.993  # Table 9 sweep
    swept = recipe("tetrajet_qramping", "method.recipe.qramping.k1=8", "method.recipe.qramping.k2=3")
    config = swept.method_config("qramping")
    assert (config.k1, config.k2, config.calib_steps) == (8, 3, 30)  # Table 10 sweep
