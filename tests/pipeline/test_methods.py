"""The oscillation-reducing methods inside main.py: Q-EMA, Q-Ramping, Dampen and Freeze run, keep their state in the
checkpoint, and resume exactly."""
import pytest
import torch

import main
import training
from quantization import QRampingCalibrator
from training import read_log

from tests.helpers import assert_states_equal, tiny_config

STEPS_PER_EPOCH = 8  # 256 images, batch 32
QRAMPING_FAST = "method.recipe.qramping.calib_steps=3"
# The random parts of the data on (RandAugment, random erasing, Mixup/CutMix, repeated augmentation) and drop path.
AUGMENTED = ["aug.no_aug=false", "aug.reprob=0.25", "aug.mixup=0.8", "aug.cutmix=1.0", "aug.smoothing=0.1",
             "aug.repeated_aug=3", "model.drop_path=0.1"]


def _run(tmp_path, method, *overrides, **kwargs):
    config = tiny_config(tmp_path, *overrides, method=method)
    return config, main.run(config, **kwargs)


def test_qema_updates_after_every_optimizer_step(tmp_path):
    _run(tmp_path / "run", "tetrajet_qema", "train.epochs=2", "train.model_ema=true")
    state = training.load(tmp_path / "run" / "checkpoint_last.pth")
    updates = [v for k, v in state["model"].items() if k.endswith("qema_state.ema_updates")]
    assert len(updates) == 8 and all(int(u) == 2 * STEPS_PER_EPOCH for u in updates)
    ema = state["model"]["blocks.0.mlp.fc1.qema_state.weight_ema"]
    weight = state["model"]["blocks.0.mlp.fc1.weight"]
    assert not torch.equal(ema, weight) and (ema - weight).abs().max() < 0.05
    # timm's model EMA copies the counter (so its copy switches Q-EMA on too) and averages weight_ema like a weight.
    ema_state = {k.removeprefix("module."): v for k, v in state["model_ema"].items()}
    assert int(ema_state["blocks.0.mlp.fc1.qema_state.ema_updates"]) == 2 * STEPS_PER_EPOCH
    assert not torch.equal(ema_state["blocks.0.mlp.fc1.qema_state.weight_ema"], ema)


def test_qramping_calibrates_each_epoch_and_sets_periods(tmp_path):
    _run(tmp_path / "run", "tetrajet_qramping", "train.epochs=2", QRAMPING_FAST)
    records = read_log(tmp_path / "run", "qramping")
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (1, STEPS_PER_EPOCH)]
    assert all(1 <= r["max_period"] <= STEPS_PER_EPOCH and r["seconds"] > 0 for r in records)


def _record_inputs(monkeypatch, calibrate: bool) -> dict:
    """Every training-mode forward's input, filed under "train" or "calibration"; with ``calibrate`` false no
    calibration runs (the same run with Q-Ramping's calibrations removed)."""
    seen = {"train": [], "calibration": []}
    phase = ["train"]
    build_model, calibrate_fn = main.build_model, QRampingCalibrator.calibrate

    def recording_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: seen[phase[0]].append(inputs[0].clone()) if m.training
                                        else None)
        return model

    def calibrating(self, train_step, rewind):
        phase[0] = "calibration"
        try:
            return calibrate_fn(self, train_step, rewind)
        finally:
            phase[0] = "train"

    monkeypatch.setattr(main, "build_model", recording_model)
    monkeypatch.setattr(QRampingCalibrator, "calibrate", calibrating)
    if not calibrate:
        monkeypatch.setattr(QRampingCalibrator, "due", lambda self, step: False)
    return seen


def test_qramping_calibration_draws_fresh_batches_and_leaves_the_training_batches_alone(tmp_path, monkeypatch):
    overrides = ["train.epochs=2", QRAMPING_FAST, *AUGMENTED]
    with monkeypatch.context() as patch:
        calibrated = _record_inputs(patch, calibrate=True)
        _run(tmp_path / "calibrated", "tetrajet_qramping", *overrides)
    with monkeypatch.context() as patch:
        plain = _record_inputs(patch, calibrate=False)
        _run(tmp_path / "plain", "tetrajet_qramping", *overrides)
    assert len(calibrated["calibration"]) == 2 * 3 and not plain["calibration"]
    batches = calibrated["calibration"]
    assert all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1:])
    assert not any(torch.equal(a, b) for a in batches for b in calibrated["train"])
    assert len(calibrated["train"]) == len(plain["train"]) == 2 * STEPS_PER_EPOCH
    assert all(torch.equal(a, b) for a, b in zip(calibrated["train"], plain["train"]))


def test_dampen_and_freeze_runs_finish(tmp_path):
    _, dampened = _run(tmp_path / "dampen", "tetrajet_dampen")
    _, plain = _run(tmp_path / "plain", "tetrajet")
    assert dampened["train_loss"] != plain["train_loss"]  # the regularizer is in the loss
    _, frozen = _run(tmp_path / "freeze", "tetrajet_freeze")
    assert 0 <= frozen["test_acc1"] <= 100


@pytest.mark.parametrize("method,extra", [
    ("tetrajet_qema", []), ("tetrajet_qramping", [QRAMPING_FAST]), ("tetrajet_freeze", []),
    ("tetrajet_qramping", [QRAMPING_FAST, *AUGMENTED, "data.num_workers=2"]),
])
def test_resume_is_exact(tmp_path, method, extra):
    overrides = ["train.epochs=2", "train.model_ema=true", *extra]
    _run(tmp_path / "straight", method, *overrides)
    config = tiny_config(tmp_path / "resumed", *overrides, method=method)
    main.run(config, stop_after_epochs=1)
    main.run(config, resume="auto")
    straight = training.load(tmp_path / "straight" / "checkpoint_last.pth")
    resumed = training.load(tmp_path / "resumed" / "checkpoint_last.pth")
    for key in ("model", "model_ema", "optimizer", "rng"):
        assert_states_equal(straight[key], resumed[key], key)


def test_qramping_rejects_other_optimizers(tmp_path):
    with pytest.raises(ValueError, match="unknown optim.name 'sgd'"):
        _run(tmp_path / "run", "tetrajet_qramping", "optim.name=sgd")


def test_oscillation_monitor_logs_and_leaves_training_unchanged(tmp_path):
    monitored = ["train.osc_interval=4", "train.osc_window=3", "train.osc_block=blocks.1", "train.osc_probe=8"]
    _run(tmp_path / "watched", "tetrajet", "train.epochs=2", *monitored)
    _run(tmp_path / "plain", "tetrajet", "train.epochs=2")
    records = read_log(tmp_path / "watched", "oscillation")
    assert len(records) == 4  # windows starting at steps 0, 4, 8, 12
    assert [r["step"] for r in records] == [3, 7, 11, 15]  # each record closes a window
    assert all(0 <= r["osc_share"] <= 1 and r["r_w"] > 0 and r["r_y"] > 0 for r in records)
    watched = training.load(tmp_path / "watched" / "checkpoint_last.pth")
    plain = training.load(tmp_path / "plain" / "checkpoint_last.pth")
    assert_states_equal(watched["model"], plain["model"], "model")


def test_oscillation_monitor_rejects_unknown_block(tmp_path):
    with pytest.raises(ValueError, match=r"unknown block 'blocks.9'; valid choices include: blocks.0, blocks.1"):
        _run(tmp_path / "run", "tetrajet", "train.osc_interval=4", "train.osc_window=3")
