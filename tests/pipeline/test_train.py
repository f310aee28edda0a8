"""main.py end to end on the CPU: Fashion-MNIST through its IDX files and as an ImageFolder tree, exact resume,
NaN/Inf stop, and batch problems caught before training."""
import hashlib
import math
import subprocess
import sys

import pytest
import torch
import yaml

import engine
import training
import main
from training import read_log
from quantization import get_recipe

from tests.helpers import REPO, assert_states_equal, tiny_config

# DeiT's stochastic parts all on: RandAugment, random erasing, Mixup/CutMix, repeated augmentation, drop path, EMA.
FULL_RECIPE = ["aug.no_aug=false", "aug.auto_augment=rand-m9-mstd0.5-inc1", "aug.reprob=0.25", "aug.mixup=0.8",
               "aug.cutmix=1.0", "aug.smoothing=0.1", "aug.repeated_aug=3", "model.drop_path=0.1",
               "train.model_ema=true", "train.model_ema_decay=0.9", "optim.warmup_epochs=1"]


def _checkpoint(run_dir, name="checkpoint_last.pth"):
    return training.load(run_dir / name)


def test_tetrajet_run_on_fashion_mnist_idx_files(tmp_path):
    record = main.run(tiny_config(tmp_path / "run", *FULL_RECIPE, "train.amp=bf16"))
    run_dir = tmp_path / "run"
    assert record["epoch"] == 0 and 0 <= record["test_acc1"] <= record["test_acc5"] <= 100
    epochs, runs, steps = read_log(run_dir, "epoch"), read_log(run_dir, "run"), read_log(run_dir, "step")
    assert epochs == [record] and runs[0]["quantized_linears"] == 8 and runs[0]["recipe"] == "tetrajet"
    assert len(steps) == 4 and all(s["loss"] > 0 for s in steps)  # 8 steps of 32 images, logged every 2
    for key in ("train_loss", "lr", "images_per_s", "test_acc1", "test_acc5", "ema_acc1", "peak_mem_mib"):
        assert key in record
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"]["recipe"] == get_recipe("tetrajet").to_dict()
    state = _checkpoint(run_dir)
    assert state["epoch"] == 0 and state["model_ema"] is not None and len(state["rng"]) == 1
    assert_states_equal(state["model"], _checkpoint(run_dir, "checkpoint_best.pth")["model"])


def test_imagenet_code_path_on_an_imagefolder_tree(tmp_path):
    tree = tmp_path / "tree"
    subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_imagefolder.py"), "--out", str(tree),
                    "--train-per-class", "10", "--val-per-class", "5"], check=True, cwd=REPO)
    assert len(list((tree / "train").glob("*/*.png"))) == 100
    # RGB PNGs read as three channels, resized from 28 to 32 px; DeiT-style evaluation crop.
    record = main.run(tiny_config(tmp_path / "run", "data.dataset=imagenet", f"data.path={tree}",
                                  "data.train_subset=null", "data.val_subset=null", "model.in_chans=3",
                                  "model.img_size=32", "model.patch_size=8", "data.crop_pct=0.875",
                                  "data.batch_size=20"))
    runs = read_log(tmp_path / "run", "run")
    assert runs[0]["train_images"] == 100 and runs[0]["val_images"] == 50
    assert 0 <= record["test_acc1"] <= 100


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path, workers):
    overrides = [*FULL_RECIPE, "train.epochs=2", f"data.num_workers={workers}"]
    main.run(tiny_config(tmp_path / "straight", *overrides))
    interrupted = tiny_config(tmp_path / "resumed", *overrides)
    main.run(interrupted, stop_after_epochs=1)
    assert _checkpoint(tmp_path / "resumed")["epoch"] == 0
    main.run(interrupted, resume="auto")
    straight, resumed = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed")
    assert resumed["epoch"] == 1
    for key in ("model", "model_ema", "optimizer", "scheduler", "scaler", "rng", "best_acc1"):
        assert_states_equal(straight[key], resumed[key], key)
    timing = ("train_time_s", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_log(tmp_path / "straight")] == \
        [{k: v for k, v in r.items() if k not in timing} for r in read_log(tmp_path / "resumed")]


def test_per_iteration_schedule_moves_every_step_and_resumes_exactly(tmp_path):
    overrides = ["train.epochs=3", "optim.warmup_epochs=1", "optim.sched_interval=step", "optim.warmup_prefix=true",
                 "optim.scale_warmup_min_lr=true", "optim.warmup_lr=1e-4", "optim.min_lr=1e-5"]
    main.run(tiny_config(tmp_path / "straight", *overrides))
    interrupted = tiny_config(tmp_path / "resumed", *overrides)
    main.run(interrupted, stop_after_epochs=2)
    main.run(interrupted, resume="auto")
    straight, resumed = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed")
    for key in ("model", "optimizer", "scheduler", "rng"):
        assert_states_equal(straight[key], resumed[key], key)
    rates = [(r["step"], r["lr"]) for r in read_log(tmp_path / "resumed", "step")]
    assert rates == [(r["step"], r["lr"]) for r in read_log(tmp_path / "straight", "step")]
    # 8 steps an epoch at batch 32 (lr 1.6e-2 x 32/512 = 1e-3; warm-up 1e-4 and minimum 1e-5 scaled the same way).
    base, warmup, low = 1e-3, 1e-4 / 16, 1e-5 / 16
    expected = {1: warmup + (base - warmup) / 8, 7: warmup + 7 * (base - warmup) / 8, 9: low + 0.5 * (base - low) *
                (1 + math.cos(math.pi / 16)), 23: low + 0.5 * (base - low) * (1 + math.cos(math.pi * 15 / 16))}
    assert {step: lr for step, lr in rates if step in expected} == pytest.approx(expected, rel=1e-9)
    assert [r["lr"] for r in read_log(tmp_path / "resumed", "epoch")] == pytest.approx([warmup, base, low + 0.5 * (
        base - low) * (1 + math.cos(math.pi / 2))], rel=1e-9)  # each epoch's first step


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "run", "train.epochs=3")
    main.run(config, stop_after_epochs=1)
    checkpoint = tmp_path / "run" / "checkpoint_last.pth"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    def nan_loss(output, target):
        return output.sum() * float("nan")

    monkeypatch.setattr(training, "build_criterion", lambda aug, mixup_active: nan_loss)
    with pytest.raises(engine.NonFiniteLossError, match=r"training loss is nan at epoch 1, step 8.*last good "
                                                        r"checkpoint, .*checkpoint_last.pth \(after epoch 1\)"):
        main.run(config, resume="auto")
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
    assert [r["epoch"] for r in read_log(tmp_path / "run")] == [0]


def test_cli_reports_nan_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "build_criterion", lambda aug, mixup_active: lambda o, t: o.sum() / 0.0)
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--config",
            str(REPO / "configs" / "methods" / "bf16.yaml"), "--output", str(tmp_path / "run")]
    for override in ("model.patch_size=7", "model.timm_kwargs={depth: 1, embed_dim: 32, num_heads: 1}",
                     "data.train_subset=64", "data.val_subset=32", "train.epochs=1"):
        args += ["--set", override]
    assert main.main(args) == 1
    err = capsys.readouterr().err
    assert "training loss is -inf at epoch 0, step 0" in err and "no checkpoint had been written yet" in err
    assert not (tmp_path / "run" / "checkpoint_last.pth").exists()


@pytest.mark.parametrize("overrides,message", [
    (["data.batch_size=31", "aug.mixup=0.8"], "must be even, got 31"),
    (["data.train_subset=20"], r"the training set has 20 images, fewer than one global batch of 32"),
    (["model.timm_kwargs={img_size: 32}"], r"model.timm_kwargs sets \['img_size'\]"),
    (["optim.name=sgd"], "unknown optim.name 'sgd'; valid choices: adamw"),
])
def test_batch_and_setup_problems_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        main.run(tiny_config(tmp_path / "run", *overrides))
    assert not (tmp_path / "run" / "checkpoint_last.pth").exists()
    assert torch.get_default_dtype() == torch.float32
