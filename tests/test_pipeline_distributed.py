"""Two gloo processes through torchrun against one process with the same global batch.

The sampler hands rank r the r-th slice of every global batch, and the 17 tokens x 32 images of a slice fill whole
32-token blocks, so both runs quantize exactly the same blocks. They are still not bit-identical: each rank computes
its part of dW = Q5(dY)^T Q6(X) over its 544 tokens and the all-reduce then adds two partial sums, where one process
sums all 1088 tokens in one GEMM; float addition in another order rounds differently (the loss scale 1/32 vs 1/64
is a power of two and commutes with the MX scales exactly). The recipe is deterministic Microscaling because with
stochastic rounding each rank draws its own random numbers: same distribution, different draws.
"""
import os
import socket
import subprocess
import sys

import torch

import training
import main
from training import read_log

from pipeline_helpers import REPO, TINY, tiny_config

DETERMINISTIC = ["aug.no_aug=true", "aug.mixup=0", "aug.cutmix=0", "aug.reprob=0", "model.drop_path=0",
                 "aug.repeated_aug=3", "train.model_ema=true", "train.model_ema_decay=0.9", "train.epochs=2",
                 "optim.warmup_epochs=1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = tiny_config(tmp_path / "single", *DETERMINISTIC, "data.batch_size=64", method="microscaling")
    main.run(single)

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "main.py", "--config", "configs/quickstart.yaml",
               "--config", "configs/methods/microscaling.yaml", "--output", str(tmp_path / "ddp")]
    for override in [*TINY, *DETERMINISTIC, "data.batch_size=32", "train.device=cpu"]:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    runs = read_log(tmp_path / "ddp", "run")
    assert runs[0]["world_size"] == 2 and runs[0]["global_batch"] == 64
    ddp_epochs, single_epochs = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    for a, b in zip(ddp_epochs, single_epochs):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * abs(b["train_loss"]), (a, b)
        assert abs(a["test_loss"] - b["test_loss"]) <= 1e-4 * abs(b["test_loss"]), (a, b)
        assert abs(a["test_acc1"] - b["test_acc1"]) <= 100 / 128 + 1e-9  # at most one of 128 images flips
        assert a["lr"] == b["lr"]
    ddp, one = training.load(tmp_path / "ddp" / "checkpoint_last.pth"), training.load(tmp_path / "single" /
                                                                                  "checkpoint_last.pth")
    assert len(ddp["rng"]) == 2
    for key in ("model", "model_ema"):
        for name, value in one[key].items():
            torch.testing.assert_close(ddp[key][name], value, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
