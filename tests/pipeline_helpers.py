"""Shared pieces of the training-pipeline tests: a tiny, fast run configuration and exact state comparison."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from configs import RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]

# A 2-block DeiT of width 32 at 28x28 px with 7x7 patches (16 patches + class token) on a few hundred Fashion-MNIST
# images: one CPU epoch takes a few seconds even with the reference quantizers.
TINY = ["model.patch_size=7", "model.timm_kwargs={depth: 2, embed_dim: 32, num_heads: 2}", "data.train_subset=256",
        "data.val_subset=128", "train.epochs=1", "train.log_interval=2"]


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
