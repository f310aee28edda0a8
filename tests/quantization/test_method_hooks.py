"""Method hooks (quantization.hooks): each recipe gets its methods' hooks, each hook attaches what the method's own
function does, and the training loop (engine.py) and main.py use them without naming a method."""
import ast
import contextlib
import dataclasses

import pytest
import torch
from torch import nn

import engine
from quantization import (DampenConfig, FreezeConfig, MethodHook, QRampingAdamW, QRampingCalibrator,
                          TrainingContext, attach_freeze, attach_qema, dampen_loss, get_recipe, hooks, hooks_optimizer,
                          method_hooks, register_method_hook)
from quantization.dampen import DampenHook
from quantization.ema import QEmaHook
from quantization.freeze import FreezeHook
from quantization.ramping import QRampingHook
from tests.helpers import REPO, RecordLog, tiny_mlp, train_mlp
from training import DistContext, rewound

STEPS_PER_EPOCH, TOTAL_STEPS = 5, 20


@pytest.mark.parametrize("name,expected", [
    ("tetrajet_qema", [QEmaHook]), ("tetrajet_freeze", [FreezeHook]), ("tetrajet_dampen", [DampenHook]),
    ("tetrajet_qramping", [QRampingHook]), ("tetrajet", []), ("bf16", []), ("tseng", []),
])
def test_each_recipe_gets_the_hooks_of_its_methods(name, expected):
    assert [type(hook) for hook in method_hooks(get_recipe(name))] == expected


def test_hooks_of_several_methods_come_in_registration_order():
    recipe = get_recipe("tetrajet_qema").replace(name="all", freeze=FreezeConfig(), dampen=DampenConfig(),
                                                 qramping=get_recipe("tetrajet_qramping").method_config("qramping"))
    assert [hook.name for hook in method_hooks(recipe)] == ["Dampen", "Q-EMA", "Freeze", "Q-Ramping"]
    assert hooks_optimizer(method_hooks(recipe)) is QRampingAdamW




def _attached(name, optimizer_cls=torch.optim.AdamW):
    """A model of recipe ``name``, its optimizer and its attached hooks."""
    model = tiny_mlp(name)
    optimizer = optimizer_cls(model.parameters(), lr=3e-2)
    found = method_hooks(get_recipe(name))
    for hook in found:
        hook.attach(TrainingContext(model, optimizer, STEPS_PER_EPOCH, TOTAL_STEPS, torch.bfloat16))
    return model, optimizer, found


def _assert_same_model(a, b):
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key


def test_qema_hook_attaches_the_ema_update():
    model, optimizer, _ = _attached("tetrajet_qema")
    reference = tiny_mlp("tetrajet_qema")
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=3e-2)
    attach_qema(reference, ref_opt)
    train_mlp(model, optimizer, 3)
    train_mlp(reference, ref_opt, 3)
    assert int(model[0].qema_state.ema_updates) == 3
    _assert_same_model(model, reference)


def test_freeze_hook_attaches_freezing_with_the_run_length_and_dtype():
    model, optimizer, _ = _attached("tetrajet_freeze")
    reference = tiny_mlp("tetrajet_freeze")
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=3e-2)
    attach_freeze(reference, ref_opt, total_steps=TOTAL_STEPS, dtype=torch.bfloat16)
    train_mlp(model, optimizer, 3)
    train_mlp(reference, ref_opt, 3)
    assert int(model[0].freeze_state.updates) == 3
    _assert_same_model(model, reference)


def test_dampen_hook_adds_the_scheduled_loss_term():
    model, optimizer, (hook,) = _attached("tetrajet_dampen")
    config = get_recipe("tetrajet_dampen").method_config("dampen")
    for step in (0, 6, 15):
        expected = dampen_loss(model, config.weight_at(step / TOTAL_STEPS), torch.bfloat16)
        assert torch.equal(hook.extra_loss(step), expected)
    assert hook.extra_loss(15) > 0 and not hook.calibration_due(0)


def test_qramping_hook_calibrates_as_the_calibrator_does():
    config = get_recipe("tetrajet_qramping").method_config("qramping")
    (hook,) = method_hooks(get_recipe("tetrajet_qramping"))
    assert hook.optimizer is QRampingAdamW and hook.calibration_steps == config.calib_steps
    hook.calibration_steps = 4  # as scripts/bench.py's --calib-steps does, before attach
    model = tiny_mlp("tetrajet_qramping")
    optimizer = QRampingAdamW(model.parameters(), lr=3e-2)
    hook.attach(TrainingContext(model, optimizer, STEPS_PER_EPOCH, TOTAL_STEPS, torch.bfloat16))
    assert [hook.calibration_due(s) for s in range(7)] == [s % STEPS_PER_EPOCH == 0 for s in range(7)]
    reference = tiny_mlp("tetrajet_qramping")
    ref_opt = QRampingAdamW(reference.parameters(), lr=3e-2)
    calibrator = QRampingCalibrator(reference, ref_opt, STEPS_PER_EPOCH, dataclasses.replace(config, calib_steps=4),
                                    amp_dtype=torch.bfloat16)
    records = []
    for m, opt, calibrate in ((model, optimizer, hook.calibrate), (reference, ref_opt, calibrator.calibrate)):
        train_mlp(m, opt, 2)
        g = torch.Generator().manual_seed(5)
        records.append(calibrate(lambda i: _train_step(m, opt, g), lambda: rewound([m, opt])))
        train_mlp(m, opt, 2)
    assert records[0]["type"] == "qramping" and records[0].keys() == records[1].keys()
    assert records[0]["mean_period"] == records[1]["mean_period"]
    _assert_same_model(model, reference)
    for a, b in zip(optimizer.update_periods().values(), ref_opt.update_periods().values()):
        assert torch.equal(a, b)


def _train_step(model, optimizer, g):
    optimizer.zero_grad()
    model(torch.randn(40, 64, generator=g)).square().mean().backward()
    optimizer.step()


class _Toy(MethodHook):
    """A made-up method: a constant loss term and a two-step calibration before step 1."""

    name = "Toy"
    calibration_steps = 2

    def __init__(self) -> None:
        self.loss_steps, self.calibrated = [], []

    def extra_loss(self, step):
        self.loss_steps.append(step)
        return torch.tensor(0.5)

    def calibration_due(self, step):
        return step == 1

    def calibrate(self, train_step, rewind):
        with rewind():
            self.calibrated.append([train_step(i) for i in range(self.calibration_steps)])
        return {"type": "toy", "losses": len(self.calibrated[-1])}


def _epoch(hooks_, calib_batches, logger):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return engine.train_one_epoch(model, batches, nn.CrossEntropyLoss(), optimizer, scaler,
                                   DistContext(0, 1, torch.device("cpu")), 0, amp_dtype=None, mixup=None,
                                   model_ema=None, clip_grad=None, logger=logger, log_interval=100, first_step=0,
                                   hooks=hooks_, calib_batches=calib_batches)


def test_the_training_loop_runs_any_method_through_its_hooks(monkeypatch):
    monkeypatch.setattr(hooks, "_FACTORIES", list(hooks._FACTORIES))
    toy = _Toy()
    register_method_hook(lambda recipe: toy if recipe.name == "toy_method" else None)
    found = method_hooks(get_recipe("tetrajet").replace(name="toy_method"))
    assert found == [toy] and method_hooks(get_recipe("tetrajet")) == []
    asked, logger = [], RecordLog()

    def calib_batches(step, count):
        asked.append((step, count))
        return iter([(torch.randn(6, 4), torch.randint(0, 3, (6,)))] * count)

    stats = _epoch(found, calib_batches, logger)
    assert asked == [(1, 2)] and logger.records == [{"type": "toy", "losses": 2, "step": 1, "epoch": 0}]
    assert toy.loss_steps == [0, 1, 1, 1, 2, 3]  # the calibration's two steps train at step 1
    assert len(toy.calibrated) == 1
    # the loop's rewind took the calibration's two SGD steps back: the epoch is the one without them (its loss + 0.5)
    assert stats["train_loss"] == pytest.approx(_epoch([], None, RecordLog())["train_loss"] + 0.5, rel=1e-6)
    with pytest.raises(ValueError, match="Toy calibrates: it needs calib_batches"):
        _epoch([_Toy()], None, RecordLog())


class _LossOnly(_Toy):
    calibration_steps = 0  # does not calibrate: calibration_due is never asked


def test_extra_loss_terms_are_added_to_the_training_loss():
    loss_only = _LossOnly()
    stats = _epoch([loss_only], None, RecordLog())
    plain = _epoch([], None, RecordLog())
    assert stats["train_loss"] == pytest.approx(plain["train_loss"] + 0.5, rel=1e-6)  # a constant: same gradients
    assert loss_only.loss_steps == [0, 1, 2, 3] and not loss_only.calibrated


def test_hook_defaults_and_errors():
    hook = MethodHook()
    assert hook.extra_loss(3) is None and not hook.calibration_due(0) and hook.calibration_steps == 0
    with pytest.raises(NotImplementedError, match="method does not calibrate"):
        hook.calibrate(lambda i: None, contextlib.nullcontext)

    class Other(MethodHook):
        name, optimizer = "Other", torch.optim.SGD

    with pytest.raises(ValueError, match=r"Q-Ramping and Other need different optimizers \(QRampingAdamW, SGD\)"):
        hooks_optimizer([*method_hooks(get_recipe("tetrajet_qramping")), Other()])


# What the generic training code must not name: the methods' own functions, classes and recipe fields.
METHOD_NAMES = {"attach_qema", "attach_freeze", "dampen_loss", "QRampingCalibrator", "QRampingAdamW", "qramping",
                "dampen", "freeze", "uses_qema", "calibrator"}


@pytest.mark.parametrize("path,allowed", [
    ("main.py", set()), ("engine.py", set()), ("training/optim.py", set()),
    ("scripts/bench.py", {"QRampingAdamW"}),  # steady_state: realistic periods for a QRampingAdamW
])
def test_generic_training_code_names_no_method(path, allowed):
    tree = ast.parse((REPO / path).read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not names & (METHOD_NAMES - allowed)
