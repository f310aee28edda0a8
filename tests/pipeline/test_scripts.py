"""scripts/: every table launcher runs scripts/run_tables.py with its environment, into valid configs; the run summary
reads the JSON-lines logs."""
import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

import main
from configs import method_label
from quantization import RECIPES

from tests.helpers import REPO

LAUNCHERS = sorted((REPO / "scripts").glob("table*.sh"))
# Distinct runs per table (rows that are one run count once): ImageNet, and the DeiT-T rows of the proxy.
EXPECTED_RUNS = {"table1": 16, "table2": 30, "table3": 4, "table4": 6, "table5": 8, "table6": 5, "table7": 4,
                 "table8": 10, "table9": 6, "table10": 9}
EXPECTED_PROXY_RUNS = {"table1": 8, "table2": 6, "table3": 4, "table4": 3, "table5": 8, "table6": 0, "table7": 4,
                       "table8": 2, "table9": 0, "table10": 0}


def _dry_run(script, **env):
    """(command, main.py arguments, RunConfig) of every run the launcher would start."""
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True, timeout=60,
                            env={**os.environ, "DRY_RUN": "1", "DATA_PATH": "/data/imagenet",
                                 "PYTHON": sys.executable, **env})
    runs = []
    for line in result.stdout.splitlines():
        if line.startswith("# "):
            continue
        command = shlex.split(line.split("\t")[1])
        args = main.parse_args(command[command.index("main.py") + 1:])
        runs.append((command, args, main.config_from_args(args)))
    return runs


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.stem)
def test_launcher_runs_are_valid_configs(script, tmp_path):
    runs = _dry_run(script, NPROC="8", EPOCHS="30", OUTPUT=str(tmp_path))
    assert len(runs) == EXPECTED_RUNS[script.stem]
    for command, args, config in runs:
        assert "--nproc_per_node=8" in command and args.resume == "auto"
        assert config.train.epochs == 30 and config.data.path == "/data/imagenet"
        assert config.output_dir.startswith(f"{tmp_path}/imagenet/")
    assert len({config.output_dir for _, _, config in runs}) == len(runs)


def test_launcher_needs_data_path():
    env = {k: v for k, v in os.environ.items() if k != "DATA_PATH"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "table1.sh")], capture_output=True, text=True,
                            env={**env, "PYTHON": sys.executable})
    assert result.returncode == 2 and "needs --data-path" in result.stderr


def test_table1_covers_every_single_quantizer_recipe():
    labels = {method_label(config) for _, _, config in _dry_run(REPO / "scripts" / "table1.sh", MODELS="deit_tiny")}
    assert labels == {"bf16", "tetrajet"} | {name for name in RECIPES if name.startswith("tetrajet_only_")}


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.stem)
def test_quick_option_runs_the_deit_tiny_rows_on_fashion_mnist(script):
    quick = _dry_run(script, QUICK="1", DATA_PATH="")
    tiny = {method_label(config) for _, _, config in _dry_run(script, MODELS="deit_tiny")}
    assert len(quick) == EXPECTED_PROXY_RUNS[script.stem]
    assert {method_label(config) for _, _, config in quick} == (tiny if quick else set())
    for command, _, config in quick:
        assert "torch.distributed.run" not in command and command[1] == "main.py"
        assert config.data.dataset == "fashion_mnist" and config.model.img_size == 28 and config.train.epochs == 10
        assert config.data.path == "/usr/share/datasets/fashion-mnist"
        assert "/output/proxy/deit_tiny/" in config.output_dir


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


def test_the_imagenet_launcher_trains_for_real_on_two_processes(tmp_path):
    """scripts/table2.sh's multi-process path run for real: NPROC, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT
    reach torchrun, two gloo processes train one epoch of a tiny DeiT on an ImageFolder tree (data.dataset=imagenet),
    run_tables.py's --set values reach main.py, and a second launch skips the finished run."""
    tree = tmp_path / "tree"
    subprocess.run([sys.executable, "scripts/prepare_imagefolder.py", "--out", str(tree), "--train-per-class", "13",
                    "--val-per-class", "7"], cwd=REPO, check=True, capture_output=True, timeout=120)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHON": sys.executable, "DATA_PATH": str(tree), "OUTPUT": str(tmp_path / "out"),
           "NPROC": "2", "NNODES": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "EPOCHS": "1", "MODELS": "deit_tiny", "OMP_NUM_THREADS": "1"}
    tiny = ["model.img_size=28", "model.patch_size=7", "model.timm_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            "model.in_chans=1", "data.batch_size=32", "data.num_workers=0", "train.device=cpu",
            "train.model_ema=false", "aug.repeated_aug=1"]
    launch = ["bash", "scripts/table2.sh", "--labels", "tetrajet"] + [a for o in tiny for a in ("--set", o)]
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "imagenet" / "deit_tiny").glob("tetrajet-*/seed0")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    (run,) = [r for r in records if r["type"] == "run"]
    assert run["world_size"] == 2 and run["global_batch"] == 64
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0]
    config = (run_dir / "config.yaml").read_text()
    assert "dataset: imagenet" in config and "embed_dim: 32" in config

    again = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"finished, skipped: {run_dir}" in again.stderr, again.stderr[-2000:]
