"""From table rows to runs: each (profile, model, run) resolves to model file, method file and overrides, and those
to one run directory per seed,

    <root>/<profile>/<model>/<label>-<hash>/seed<k>

where <hash> is a short hash of the canonical (model file, method file, sorted overrides): two configurations
never share a directory, and rows of several tables that are the same run share one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from .paper import TABLES, Run
from .profiles import Profile

REPO = Path(__file__).resolve().parents[2]
# Table 3's monitor: every OSC_INTERVAL steps follow OSC_WINDOW steps; r(Y) of the block at the paper's relative
# depth (block 9 of DeiT's 12).
OSC_INTERVAL, OSC_WINDOW = 1000, 30
PAPER_OSC_BLOCK, PAPER_DEPTH = 9, 12


@dataclass(frozen=True)
class RunConfigFiles:
    """What main.py is given for a run, seed aside: config files (relative to the repo root) and ``--set`` values."""
    model: str
    model_file: str
    method_file: str
    overrides: tuple[str, ...]
    label: str

    def digest(self) -> str:
        """Eight hex digits identifying the configuration: model file, method file and the sorted overrides."""
        canonical = json.dumps([self.model_file, self.method_file, sorted(canonical_override(o)
                                                                            for o in self.overrides)])
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def directory(self, root: Path, profile: Profile) -> Path:
        """The directory holding this configuration's seeds."""
        return Path(root) / profile.name / self.model / f"{self.label}-{self.digest()}"


@dataclass(frozen=True)
class PlannedRun:
    """One training run: its configuration, seed and directory, and the tables that need it."""
    config: RunConfigFiles
    seed: int
    directory: Path
    tables: tuple[int, ...]


def is_finished(directory: Path, epochs: int) -> bool:
    """Whether ``directory``'s log.jsonl records the last of ``epochs`` epochs. Such a run is skipped, even without
    the checkpoints (results/ keeps only the logs): --resume auto would otherwise train it afresh over its log."""
    log = Path(directory) / "log.jsonl"
    if not log.is_file():
        return False
    for line in log.read_text().splitlines():
        if line.strip() and (record := json.loads(line)).get("type") == "epoch" and record["epoch"] == epochs - 1:
            return True
    return False


def canonical_override(text: str) -> str:
    """``key=value`` with the key stripped and the value as sorted JSON of its YAML reading, so that spellings of
    one value hash alike."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    return f"{key.strip()}={json.dumps(yaml.safe_load(raw), sort_keys=True)}"


def osc_block(model_file: str) -> str:
    """The block at the paper's relative depth for a model file (its model.timm_kwargs.depth, else DeiT's 12)."""
    config = yaml.safe_load((REPO / model_file).read_text()) or {}
    depth = config.get("model", {}).get("timm_kwargs", {}).get("depth", PAPER_DEPTH)
    return f"blocks.{round(PAPER_OSC_BLOCK * depth / PAPER_DEPTH)}"


def method_file(run: Run, model: str) -> str:
    """The method file of ``run`` for ``model``: Table 8's tuned file when ``run.tuned``; a missing file is an
    error naming it."""
    stem = f"tuned/{run.method}_{model}" if run.tuned else run.method
    path = f"configs/methods/{stem}.yaml"
    if not (REPO / path).is_file():
        raise FileNotFoundError(f"run {run.label!r} for model {model!r} needs {path}, which does not exist")
    return path


def resolve(profile: Profile, model: str, run: Run, epochs: int, extra: Sequence[str] = ()) -> RunConfigFiles:
    """The configuration of ``run`` on ``model`` under ``profile`` for ``epochs`` epochs, with the ``extra``
    overrides last (they win, and enter the run's hash); the model must be one of the profile's."""
    if model not in profile.models:
        raise ValueError(f"profile {profile.name!r} has no model {model!r}; valid choices: "
                         f"{', '.join(profile.models)}")
    model_file = f"configs/models/{profile.models[model]}.yaml"
    overrides = [*profile.overrides, f"train.epochs={epochs}", *run.overrides]
    if run.monitor and not profile.monitored:
        overrides += [f"train.osc_interval={OSC_INTERVAL}", f"train.osc_window={OSC_WINDOW}",
                      f"train.osc_block={osc_block(model_file)}"]
    overrides += extra
    return RunConfigFiles(model, model_file, method_file(run, model), tuple(overrides), run.label)


def plan_runs(profile: Profile, tables: Iterable[int], models: Iterable[str], seeds: Iterable[int], root: Path,
              epochs: int, extra: Sequence[str] = ()) -> tuple[list[PlannedRun], list[str]]:
    """Every distinct run the ``tables`` need on ``models`` (a filter of the tables' columns), once per seed, in
    table order, seed by seed, each with the ``extra`` overrides; and a note per table for the models the profile
    has no file for (skipped)."""
    wanted, seeds = set(models), list(seeds)
    found: dict[Path, tuple[RunConfigFiles, list[int]]] = {}
    notes = []
    for number in tables:
        table = TABLES[number]
        table_models = list(dict.fromkeys(column.model for column in table.columns if column.model in wanted))
        missing = [model for model in table_models if model not in profile.models]
        if missing:
            notes.append(f"table {number}: profile {profile.name!r} has no {', '.join(missing)}; "
                         f"those runs are skipped")
        for row in table.rows:
            for model in table_models:
                if model not in profile.models:
                    continue
                config = resolve(profile, model, row.run, epochs, extra)
                entry = found.setdefault(config.directory(root, profile), (config, []))
                if number not in entry[1]:
                    entry[1].append(number)
    planned = [PlannedRun(config, seed, directory / f"seed{seed}", tuple(numbers))
               for seed in seeds for directory, (config, numbers) in found.items()]
    return planned, notes
