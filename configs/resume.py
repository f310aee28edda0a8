"""Whether an output directory may be continued with a configuration: its saved config.yaml must define the same run.

``--resume auto`` continues whatever checkpoint the directory holds; without this check a changed method, seed or
schedule would silently continue (or skip) a run made with other settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from .loader import config_to_dict
from .schema import ConfigError, RunConfig

# Keys that change where a run reads and writes or how fast it loads and logs, never what it computes.
RESULT_NEUTRAL_KEYS = frozenset({"output_dir", "data.path", "data.num_workers", "data.pin_memory", "data.download",
                                 "train.log_interval"})
_MISSING = "<missing>"


class ConfigMismatchError(ConfigError):
    """The output directory holds a run of another configuration."""


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted.key: value}; other values (lists included) are leaves."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def config_differences(old: dict, new: dict, ignore: Iterable[str] = RESULT_NEUTRAL_KEYS) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two config mappings, sorted by key;
    keys in ``ignore`` (and keys below them) are left out."""
    ignored = tuple(ignore)
    flat_old, flat_new = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if any(key == skip or key.startswith(f"{skip}.") for skip in ignored):
            continue
        before, after = flat_old.get(key, _MISSING), flat_new.get(key, _MISSING)
        if before != after:
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines


def check_resume_config(config: RunConfig, saved: "str | Path") -> None:
    """Raise ConfigMismatchError naming the differing keys when the config.yaml at ``saved`` defines another run
    than ``config``; a missing file is fine (a fresh directory)."""
    path = Path(saved)
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    new = yaml.safe_load(yaml.safe_dump(config_to_dict(config), sort_keys=False))  # as save_config writes it
    differences = config_differences(old, new)
    if differences:
        raise ConfigMismatchError(
            f"{path.parent} holds a run of another configuration ({path}); refusing to resume it. Differing keys "
            f"(saved -> requested): {'; '.join(differences)}. Use another output directory, or remove this one "
            f"to start afresh")
