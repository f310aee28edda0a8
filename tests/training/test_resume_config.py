"""--resume auto refuses an output directory whose config.yaml defines another run, before writing anything."""
import hashlib

import pytest

import main
from configs import config_differences, save_config

from tests.helpers import cli_args, tiny_config


def test_config_differences_names_dotted_keys():
    old = {"train": {"epochs": 90, "seed": 0}, "data": {"path": "/a", "num_workers": 8}, "output_dir": "x",
           "method": {"recipe": {"q2": {"fmt": "e2m1"}}}}
    new = {"train": {"epochs": 30, "seed": 0}, "data": {"path": "/b", "num_workers": 2}, "output_dir": "y",
           "method": {"recipe": {"q2": {"fmt": "e3m0"}, "extra": 1}}}
    assert config_differences(old, new) == ["method.recipe.extra: '<missing>' -> 1",
                                            "method.recipe.q2.fmt: 'e2m1' -> 'e3m0'", "train.epochs: 90 -> 30"]
    assert config_differences(old, old) == []


def _cli_args(output_dir, *overrides):
    return cli_args(output_dir, *overrides, method="tetrajet", extra=("--resume", "auto"))


def test_resume_auto_refuses_a_changed_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(tiny_config(run_dir, "train.epochs=3"), run_dir / "config.yaml")
    saved = hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    args = _cli_args(run_dir, "model.patch_size=7", "model.timm_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
                     "data.train_subset=256", "data.val_subset=128", "train.epochs=1", "train.log_interval=2")
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert "train.epochs: 3 -> 1" in err and "refusing to resume" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest() == saved


def test_resume_auto_accepts_the_same_config_and_neutral_keys(tmp_path):
    config = tiny_config(tmp_path / "run", "train.epochs=1")
    main.run(config)
    moved = tiny_config(tmp_path / "run", "train.epochs=1", "data.num_workers=0",
                        "data.path=/usr/share/datasets/fashion-mnist")
    assert main.run(moved, resume="auto") == {}  # finished: nothing left to train


@pytest.mark.parametrize("fresh", ["missing", "empty"])
def test_resume_auto_starts_a_fresh_directory(tmp_path, fresh):
    if fresh == "empty":
        (tmp_path / "run").mkdir()
    record = main.run(tiny_config(tmp_path / "run", "train.epochs=1"), resume="auto")
    assert record["epoch"] == 0
