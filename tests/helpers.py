"""Helpers shared by the test directories (imported as ``tests.helpers``; ``tests`` is a package): a tiny, fast run
configuration and main.py's command line for it, exact state comparison, a tiny QLinear MLP and its training loop,
a logger that keeps its records. The bit-exact helpers of the quantizers are the library's own,
``quantization.mx.testing``."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from configs import RunConfig, load_config
from quantization import QLinear

REPO = Path(__file__).resolve().parents[1]

# A 2-block DeiT of width 32 at 28x28 px with 7x7 patches (16 patches + class token) on a few hundred Fashion-MNIST
# images: one CPU epoch takes a few seconds even with the reference quantizers.
TINY = ["model.patch_size=7", "model.timm_kwargs={depth: 2, embed_dim: 32, num_heads: 2}", "data.train_subset=256",
        "data.val_subset=128", "train.epochs=1", "train.log_interval=2"]
# Smaller still, for main.py's command line (cli_args) where a run fails early or lasts two epochs.
TINY_CLI = ["model.patch_size=7", "model.timm_kwargs={depth: 1, embed_dim: 32, num_heads: 1}", "data.train_subset=64",
            "data.val_subset=32", "train.epochs=2"]


def tiny_config(output_dir: "str | Path", *overrides: str, method: str = "tetrajet") -> RunConfig:
    """The quickstart configuration shrunk by TINY, with ``overrides`` applied last."""
    files = [REPO / "configs" / "quickstart.yaml", REPO / "configs" / "methods" / f"{method}.yaml"]
    return load_config(files, [*TINY, f"output_dir={json.dumps(str(output_dir))}", *overrides])


def assert_states_equal(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values equal exactly (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_states_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def cli_args(output_dir: "str | Path", *overrides: str, method: str = "bf16", extra: tuple = ()) -> list:
    """main.py's command line for configs/quickstart.yaml + configs/methods/METHOD.yaml writing to ``output_dir``:
    ``extra`` arguments, then one ``--set`` per override."""
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--config",
            str(REPO / "configs" / "methods" / f"{method}.yaml"), "--output", str(output_dir), *extra]
    for override in overrides:
        args += ["--set", override]
    return args


def error_line(capsys) -> str:
    """The one ``error:`` line main printed to stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


class RecordLog:
    """A stand-in for training's JSON-lines logger: keeps what is written in ``records``."""

    def __init__(self) -> None:
        self.records = []

    def write(self, record) -> None:
        self.records.append(record)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


def tiny_mlp(recipe="tetrajet_qema", seed: int = 0) -> nn.Sequential:
    """QLinear(64, 48) -> GELU -> QLinear(48, 32) under ``recipe``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(QLinear(64, 48, recipe=recipe), nn.GELU(), QLinear(48, 32, recipe=recipe))


def train_mlp(model, optimizer, steps: int, seed: int = 1, extra_loss=None, model_ema=None) -> None:
    """``steps`` optimizer steps of a tiny_mlp on mean-square outputs of random (40, 64) inputs drawn from ``seed``
    (``extra_loss(step)`` added to the loss; ``model_ema`` updated after each step)."""
    torch.manual_seed(seed)  # the backward's stochastic rounding draws from the global generator
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randn(40, 64, generator=g)
        optimizer.zero_grad()
        loss = model(x).square().mean()
        if extra_loss is not None:
            loss = loss + extra_loss(step)
        loss.backward()
        optimizer.step()
        if model_ema is not None:
            model_ema.update(model)
