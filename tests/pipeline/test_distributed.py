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
from pathlib import Path

import pytest
import torch

import training
import main
from training import read_log

from tests.helpers import REPO, TINY, assert_states_equal, tiny_config

DETERMINISTIC = ["aug.no_aug=true", "aug.mixup=0", "aug.cutmix=0", "aug.reprob=0", "model.drop_path=0",
                 "aug.repeated_aug=3", "train.model_ema=true", "train.model_ema_decay=0.9", "train.epochs=2",
                 "optim.warmup_epochs=1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, output, method: str, *overrides: str, resume: str = "",
             stop_after_epochs: int = 0) -> subprocess.CompletedProcess:
    """main.py on ``nproc`` gloo processes (TINY and ``overrides`` applied; ``resume``: main.py's --resume),
    asserting a zero exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "main.py", "--config", "configs/quickstart.yaml",
               "--config", f"configs/methods/{method}.yaml", "--output", str(output)]
    for override in [*TINY, *overrides, "train.device=cpu"]:
        command += ["--set", override]
    if resume:
        command += ["--resume", resume]
    if stop_after_epochs:
        command += ["--stop-after-epochs", str(stop_after_epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_close_runs(a_dir, b_dir, epochs=None) -> None:
    """Epoch records and final weights of two runs over the same global batch agree up to the reduction order (see
    the module docstring); ``epochs``: compare only these epoch indices."""
    a_epochs = [r for r in read_log(a_dir) if epochs is None or r["epoch"] in epochs]
    b_epochs = [r for r in read_log(b_dir) if epochs is None or r["epoch"] in epochs]
    assert [r["epoch"] for r in a_epochs] == [r["epoch"] for r in b_epochs] and a_epochs
    for a, b in zip(a_epochs, b_epochs):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * abs(b["train_loss"]), (a, b)
        assert abs(a["test_loss"] - b["test_loss"]) <= 1e-4 * abs(b["test_loss"]), (a, b)
        assert abs(a["test_acc1"] - b["test_acc1"]) <= 100 / 128 + 1e-9  # at most one of 128 images flips
        assert a["lr"] == b["lr"]
    one, other = training.load(a_dir / "checkpoint_last.pth"), training.load(b_dir / "checkpoint_last.pth")
    for key in ("model", "model_ema"):
        for name, value in one[key].items():
            torch.testing.assert_close(other[key][name], value, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory) -> dict:
    """The deterministic Microscaling run of two epochs at a global batch of 64: one process, and two of 32."""
    root = tmp_path_factory.mktemp("reference")
    main.run(tiny_config(root / "single", *DETERMINISTIC, "data.batch_size=64", method="microscaling"))
    torchrun(2, root / "ddp", "microscaling", *DETERMINISTIC, "data.batch_size=32")
    return {"single": root / "single", "ddp": root / "ddp"}


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(reference_runs):
    runs = read_log(reference_runs["ddp"], "run")
    assert runs[0]["world_size"] == 2 and runs[0]["global_batch"] == 64
    assert len(training.load(reference_runs["ddp"] / "checkpoint_last.pth")["rng"]) == 2
    assert_close_runs(reference_runs["single"], reference_runs["ddp"])


def test_a_checkpoint_moves_between_two_processes_and_one(tmp_path, reference_runs, caplog):
    """Resumed by another number of processes, a run continues with the checkpoint's model, model EMA, optimizer,
    schedule and best top-1; only the random streams start afresh (a warning says so). With the same global batch
    (data.batch_size set to keep it) the second epoch is the uninterrupted run's, up to the reduction order."""
    torchrun(2, tmp_path / "two_then_one", "microscaling", *DETERMINISTIC, "data.batch_size=32", stop_after_epochs=1)
    with caplog.at_level("WARNING"):
        main.run(tiny_config(tmp_path / "two_then_one", *DETERMINISTIC, "data.batch_size=64",
                             method="microscaling"), resume=str(tmp_path / "two_then_one" / "checkpoint_last.pth"))
    assert "written by 2 processes, resumed by 1" in caplog.text
    assert [r["world_size"] for r in read_log(tmp_path / "two_then_one", "run")] == [2, 1]
    assert_close_runs(reference_runs["single"], tmp_path / "two_then_one", epochs={1})

    main.run(tiny_config(tmp_path / "one_then_two", *DETERMINISTIC, "data.batch_size=64", method="microscaling"),
             stop_after_epochs=1)
    result = torchrun(2, tmp_path / "one_then_two", "microscaling", *DETERMINISTIC, "data.batch_size=32",
                      resume=str(tmp_path / "one_then_two" / "checkpoint_last.pth"))
    assert "written by 1 processes, resumed by 2" in result.stderr + result.stdout
    assert [r["world_size"] for r in read_log(tmp_path / "one_then_two", "run")] == [1, 2]
    assert_close_runs(reference_runs["ddp"], tmp_path / "one_then_two", epochs={1})


def _records(run_dir, kind: str) -> list:
    timing = ("train_time_s", "images_per_s", "seconds")
    return [{k: v for k, v in r.items() if k not in timing} for r in read_log(run_dir, kind)]


def test_qramping_calibrates_alike_on_two_processes_and_resumes_exactly(tmp_path):
    """Every epoch-end checkpoint checks that the ranks hold bit-identical models, model EMAs and optimizer states
    (Q-Ramping's periods and counters included) and fails the run if not; the calibration's restore must therefore
    be exact on every rank. An interrupted two-process run then resumes bit for bit."""
    overrides = ["train.epochs=2", "method.recipe.qramping.calib_steps=3", "data.batch_size=32"]
    torchrun(2, tmp_path / "straight", "tetrajet_qramping", *overrides)
    torchrun(2, tmp_path / "resumed", "tetrajet_qramping", *overrides, stop_after_epochs=1)
    torchrun(2, tmp_path / "resumed", "tetrajet_qramping", *overrides, resume="auto")
    assert len(read_log(tmp_path / "straight", "qramping")) == 2
    for kind in ("epoch", "qramping"):
        assert _records(tmp_path / "straight", kind) == _records(tmp_path / "resumed", kind), kind
    straight = training.load(tmp_path / "straight" / "checkpoint_last.pth")
    resumed = training.load(tmp_path / "resumed" / "checkpoint_last.pth")
    for key in ("model", "model_ema", "optimizer", "scheduler", "rng"):
        assert_states_equal(straight[key], resumed[key], key)


def test_qema_buffers_stay_identical_on_two_processes(tmp_path):
    torchrun(2, tmp_path / "run", "tetrajet_qema", "train.epochs=2", "data.batch_size=32")
    model = training.load(tmp_path / "run" / "checkpoint_last.pth")["model"]
    assert any("ema" in name for name in model)  # the buffers the epoch-end replica check compared


def _replica_check_worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    state = {"weight": torch.arange(6.0), "ema": torch.ones(3, dtype=torch.bfloat16), "step": 4}
    if rank == 1:
        state["ema"].view(torch.int16)[2] += 1  # one ulp: the last bit of one element
    training.check_replicas({"weight": state["weight"], "step": state["step"]}, "same")
    try:
        training.check_replicas(state, "after epoch 3")
        message = "no error"
    except training.ReplicaMismatchError as error:
        message = str(error)
    Path(result_dir, f"rank{rank}.txt").write_text(message)
    torch.distributed.destroy_process_group()


def test_replica_check_names_the_entry_that_differs_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(_replica_check_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("after epoch 3: rank(s) [1] differ from rank 0 in 1 entries, first ['ema']"), message
