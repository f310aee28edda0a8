"""scripts/: every table launcher's runs parse into valid configs; the run summary reads the JSON-lines logs."""
import json
import os
import shlex
import subprocess
import sys

import pytest

import main
from configs import method_label
from quantization import RECIPES

from pipeline_helpers import REPO

LAUNCHERS = sorted((REPO / "scripts").glob("table*.sh"))
EXPECTED_RUNS = {"table1": 16, "table2": 30, "table3": 4, "table4": 6, "table5": 8, "table6": 5, "table7": 4,
                 "table8": 5, "table9": 6, "table10": 9}


def _dry_run(script, **env):
    """(torchrun command, main.py arguments, RunConfig) of every run the launcher would start."""
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True, timeout=60,
                            env={**os.environ, "DRY_RUN": "1", "DATA_PATH": "/data/imagenet", **env})
    runs = []
    for line in result.stdout.splitlines():
        command = shlex.split(line)
        args = main.parse_args(command[command.index("main.py") + 1:])
        runs.append((command, args, main.config_from_args(args)))
    return runs


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.stem)
def test_launcher_runs_are_valid_configs(script):
    runs = _dry_run(script, NPROC="8", EPOCHS="30")
    assert len(runs) == EXPECTED_RUNS[script.stem]
    for command, args, config in runs:
        assert "--nproc_per_node=8" in command and args.resume == "auto"
        assert config.train.epochs == 30 and config.data.path == "/data/imagenet"
        assert config.output_dir.endswith(f"-30ep/{method_label(config)}")
    assert len({config.output_dir for _, _, config in runs}) == len(runs)


def test_launcher_needs_data_path():
    env = {k: v for k, v in os.environ.items() if k != "DATA_PATH"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "table1.sh")], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "set DATA_PATH" in result.stderr


def test_table1_covers_every_single_quantizer_recipe():
    labels = {method_label(config) for _, _, config in _dry_run(REPO / "scripts" / "table1.sh", MODELS="deit_tiny")}
    assert labels == {"bf16", "tetrajet"} | {name for name in RECIPES if name.startswith("tetrajet_only_")}


def test_summarize_runs_reads_the_last_record_of_each_epoch(tmp_path):
    records = [{"type": "run", "method": "tetrajet"}]
    for epoch, acc, speed in ((0, 10.0, 100.0), (1, 20.0, 300.0), (1, 25.0, 500.0), (2, 30.0, 700.0)):
        records.append({"type": "epoch", "epoch": epoch, "test_acc1": acc, "best_acc1": acc, "images_per_s": speed,
                        "peak_mem_mib": 1000.0 + epoch, "train_time_s": 60.0})
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize_runs.py"), str(tmp_path)],
                            capture_output=True, text=True, check=True)
    row = result.stdout.splitlines()[2]
    assert row.startswith("| tetrajet | 3 | 30.00 | 30.00 | - | 600 | 1002 | 3.0 |")


def test_sweeps_apply_their_values():
    from configs import resolve_recipe

    betas = [resolve_recipe(c.method).qema_beta for _, _, c in _dry_run(REPO / "scripts" / "table9.sh")]
    assert betas == [0.993, 0.995, 0.997, 0.998, 0.999, 0.9995]
    pairs = [(resolve_recipe(c.method).qramping.k1, resolve_recipe(c.method).qramping.k2)
             for _, _, c in _dry_run(REPO / "scripts" / "table10.sh")]
    assert pairs == [(16, 3), (16, 4), (16, 5), (16, 6), (16, 7), (16, 8), (8, 5), (12, 5), (20, 5)]
    tuned = {c.model.name: resolve_recipe(c.method).qema_beta for _, _, c in _dry_run(REPO / "scripts" / "table2.sh")
             if c.method.name == "tetrajet_qema"}
    assert tuned == {"deit_tiny_patch16_224": 0.9983, "deit_small_patch16_224": 0.9972,
                     "deit_base_patch16_224": 0.999, "swin_tiny_patch4_window7_224": 0.9975,
                     "swin_small_patch4_window7_224": 0.998}
    monitored = [c.train.osc_interval for _, _, c in _dry_run(REPO / "scripts" / "table3.sh")]
    assert monitored == [1000] * 4


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.stem)
def test_quick_option_runs_every_table_on_fashion_mnist(script):
    quick = _dry_run(script, QUICK="1", DATA_PATH="")
    methods = {method_label(config) for _, _, config in _dry_run(script)}
    assert sorted(method_label(config) for _, _, config in quick) == sorted(methods)
    for command, _, config in quick:
        assert "--nproc_per_node=1" in command
        assert config.data.dataset == "fashion_mnist" and config.model.img_size == 28 and config.train.epochs == 10
        assert config.data.path == "/usr/share/datasets/fashion-mnist"
        assert config.output_dir.startswith("output/quick/deit_tiny_fmnist-10ep/")
