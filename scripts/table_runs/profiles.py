"""Where and how the tables' runs train: a profile maps the tables' models to model files and picks the launcher."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .paper import DEIT_B, DEIT_S, DEIT_T, SWIN_S, SWIN_T

LAUNCHERS = ("torchrun", "python")


@dataclass(frozen=True)
class Profile:
    """``models``: table model -> file under configs/models (no .yaml); models missing here are skipped.
    ``launcher``: "torchrun" (several processes and nodes) or "python" (one process). ``epochs``: train.epochs of
    every run unless the command line sets it. ``overrides``: main.py ``--set`` values for every run.
    ``data_path``: the default --data-path (None: it must be given). ``monitored``: the profile's model files turn
    the oscillation monitor on for every run, so Table 3's rows add no monitor overrides and share Table 2's runs
    (the monitor leaves training unchanged)."""
    name: str
    models: dict[str, str]
    launcher: str
    epochs: int
    overrides: tuple[str, ...] = ()
    data_path: Optional[str] = None
    monitored: bool = False


PROFILES: dict[str, Profile] = {profile.name: profile for profile in (
    # The paper: ImageNet-1K, 90 epochs, 4 GPUs per run by default.
    Profile("imagenet", {model: model for model in (DEIT_T, DEIT_S, DEIT_B, SWIN_T, SWIN_S)}, "torchrun", 90),
    # A one-GPU look at the DeiT-T rows on Fashion-MNIST; small, host-bound runs that can share the GPU (--jobs).
    # docs/proxy-study.md says why this model, data and schedule.
    Profile("proxy", {DEIT_T: "deit_tiny_proxy"}, "python", 10, data_path="/usr/share/datasets/fashion-mnist",
            monitored=True),
)}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name is an error listing the valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid choices: {', '.join(PROFILES)}")
    return PROFILES[name]
