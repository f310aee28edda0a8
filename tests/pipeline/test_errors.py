"""main.main on user errors: a bad setting, a missing dataset, a corrupt, foreign or missing checkpoint each end with
one ``error:`` line and exit status 2, no traceback, and leave every file already written as it was."""
import shutil

import pytest
import torch

import main

from tests.helpers import TINY_CLI, cli_args, error_line

def _args(output, *overrides: str, extra: tuple = ()) -> list:
    return cli_args(output, *TINY_CLI, *overrides, extra=extra)


def _contents(directory) -> dict:
    return {path.relative_to(directory): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory after one of two epochs: config.yaml, log.jsonl and both checkpoints."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main.main(_args(run_dir, extra=("--stop-after-epochs", "1"))) == 0
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


@pytest.mark.parametrize("override,message", [
    ("train.amp=fp8", "unknown train.amp 'fp8'; valid choices: bf16, fp16, fp32"),
    ("train.epoch=3", "unknown key 'train.epoch'"),
    ("model.timm_kwargs={depth:6}", r"'depth:6' with no value: YAML needs a space after the colon, {depth: 6}"),
    ("model.timm_kwargs={dept: 2}", "model.timm_kwargs: timm model 'deit_tiny_patch16_224' rejects its arguments"),
    ("data.batch_size=128", "fewer than one global batch of 128"),
])
def test_bad_setting_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, override, message):
    assert main.main(_args(tmp_path / "run", override)) == 2
    line = error_line(capsys)
    assert "error: " in line and message in line
    assert not (tmp_path / "run").exists()


def test_missing_dataset_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main.main(_args(tmp_path / "run", extra=("--data-path", str(tmp_path / "nowhere")))) == 2
    line = error_line(capsys)
    assert "Fashion-MNIST not found" in line and str(tmp_path / "nowhere") in line
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoint_is_named_and_left_as_it_was(run_dir, capsys):
    last = run_dir / "checkpoint_last.pth"
    last.write_bytes(last.read_bytes()[:1000])
    before = _contents(run_dir)
    assert main.main(_args(run_dir, extra=("--resume", "auto"))) == 2
    line = error_line(capsys)
    assert f"checkpoint {last}: unreadable, truncated or not a checkpoint" in line
    assert "what remains: checkpoint_best.pth in the same directory" in line and "without --resume" in line
    assert _contents(run_dir) == before  # checkpoints, log.jsonl and config.yaml byte for byte


def test_checkpoint_of_another_model_is_a_clear_error(run_dir, tmp_path, capsys):
    before = _contents(run_dir)
    other = tmp_path / "other"
    resume = ("--resume", str(run_dir / "checkpoint_last.pth"))
    assert main.main(_args(other, "model.timm_kwargs={depth: 2, embed_dim: 32, num_heads: 1}", extra=resume)) == 2
    assert "checkpoint_last.pth: does not fit this run, written by another configuration?" in error_line(capsys)
    assert _contents(run_dir) == before
    assert not other.exists()  # no config.yaml or log.jsonl for a run that never started


def test_checkpoint_without_the_resume_keys(run_dir, capsys):
    path = run_dir / "checkpoint_best.pth"
    torch.save({"model": {}}, path)
    assert main.main(_args(run_dir, extra=("--resume", str(path)))) == 2
    line = error_line(capsys)
    assert f"checkpoint {path}: missing keys ['epoch', 'best_acc1'" in line and "checkpoint_last.pth" in line


def test_resume_from_a_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.pth"
    assert main.main(_args(tmp_path / "run", extra=("--resume", str(path)))) == 2
    assert f"checkpoint {path}: the file does not exist; what remains: a fresh start" in error_line(capsys)
    assert not (tmp_path / "run").exists()
