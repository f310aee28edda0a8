"""Checkpoints written atomically, and the random-number-generator states that make a resume exact."""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch


def save_atomic(state: dict, path: "str | Path") -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves a torn checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


# What torch.load raises for a truncated, empty or foreign file.
_UNREADABLE = (OSError, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError)


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the run: a user error (main.py exits with status 2).

    ``message`` says what is wrong; ``remains`` (optional) what the user can still do, appended as "; what remains:
    ..." (a caller with other advice re-raises with ``message`` alone)."""

    def __init__(self, message: str, remains: "str | None" = None) -> None:
        super().__init__(message if remains is None else f"{message}; what remains: {remains}")
        self.message, self.remains = message, remains


def checkpoint_error(path: "str | Path", problem: str) -> CheckpointError:
    """The error for checkpoint ``path``: what is wrong with it and what remains (left untouched by the attempt)."""
    path = Path(path)
    others = sorted(p.name for p in path.parent.glob("checkpoint_*.pth") if p.name != path.name)
    remains = (f"{', '.join(others)} in the same directory (--resume {path.parent / others[0]}), or " if others
               else "") + "a fresh start without --resume (in another --output to keep this run's files)"
    kept = " (the file is left as it was)" if path.exists() else ""
    return CheckpointError(f"checkpoint {path}: {problem}{kept}", remains)


def brief(error: BaseException, limit: int = 160) -> str:
    """``error`` as one short line: its type and the first sentence of its message."""
    text = " ".join(str(error).split()).split(". ")[0]
    return f"{type(error).__name__}: {text[:limit]}" if text else type(error).__name__


def load(path: "str | Path") -> dict:
    """The checkpoint at ``path`` on the CPU; CheckpointError if it is missing, unreadable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise checkpoint_error(path, "the file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        raise checkpoint_error(path, f"unreadable, truncated or not a checkpoint ({brief(error)})") from None
    if not isinstance(state, dict):
        raise checkpoint_error(path, f"holds a {type(state).__name__}, not a checkpoint mapping")
    return state


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generator states, as plain data (loadable with weights_only)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(words), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
