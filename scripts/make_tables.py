"""The paper's tables (scripts/table_runs/paper.py) as Markdown, each cell our number beside the paper's:

    ours / paper (ours - paper), n=<runs>, range <max - min over the runs>

A cell's runs are the seeds of its row's configuration on its column's model: the seed*/ directories holding a
log.jsonl under the directory scripts/run_tables.py trains that configuration in,
OUTPUT_ROOT/<profile>/<model>/<label>-<hash>/ (--profile, default imagenet; --epochs, default the profile's, as
given to run_tables.py). The cell shows their mean, their count n and their range (max - min). Top-1 per run
(--metric): "final" (default) the last epoch's test_acc1, "best" the best test_acc1 so far, "ema" the model EMA's
last test_acc1. Table 3: the last "oscillation" record's r_q (r(W_Q)) and r_y. A run that has not reached its
configured train.epochs (config.yaml) is marked "(30/90 ep)"; a run configured for other epochs than its directory
is an error. "–" stands for a run that does not exist yet (or a model the profile lacks), "n/a" for runs without
the number (no model EMA, no oscillation records).

Usage: python scripts/make_tables.py OUTPUT_ROOT [--profile imagenet|proxy] [--tables 1 2 5]
       [--metric final|best|ema] [--epochs 90] [--figures DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from summarize_runs import summarize  # noqa: E402
from table_runs import PROFILES, TABLES, Column, PaperTable, Profile, Run, get_profile, resolve  # noqa: E402
from training.logger import LOG_FILE, read_log  # noqa: E402

METRICS = {"final": "top1", "best": "best_top1", "ema": "ema_top1"}
DIGITS = {"top1": 2, "r_q": 4, "r_y": 4}
MISSING = "–"


@dataclass(frozen=True)
class RunResult:
    """One run directory's numbers: ``values`` maps a quantity ("top1", "r_q", "r_y") to its value or None."""
    path: Path
    epochs_done: int
    epochs_total: int
    seed: int
    values: dict


Cells = dict[tuple[str, Run], list[RunResult]]  # (model, run) -> the results of its seeds


def read_config(run_dir: Path) -> tuple[int, int]:
    """(train.epochs, train.seed) from the config.yaml that main.py writes into every run directory; raises
    ValueError without one."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no config.yaml")
    config = yaml.safe_load(path.read_text())
    return config["train"]["epochs"], config["train"]["seed"]


def last_oscillation(run_dir: Path) -> dict:
    """The run's last oscillation record, or {} when the monitor was off."""
    records = read_log(run_dir, "oscillation")
    return max(records, key=lambda r: r["step"]) if records else {}


def read_run(run_dir: Path, metric: str) -> RunResult:
    """A ``RunResult`` from one directory; raises ValueError when it has no run record or no finished epoch."""
    if not read_log(run_dir, "run"):
        raise ValueError(f"{run_dir}: log.jsonl has no run record")
    summary = summarize(run_dir)
    oscillation = last_oscillation(run_dir)
    epochs_total, seed = read_config(run_dir)
    return RunResult(path=run_dir, epochs_done=summary["epochs"], epochs_total=epochs_total, seed=seed,
                     values={"top1": summary[METRICS[metric]], "r_q": oscillation.get("r_q"),
                             "r_y": oscillation.get("r_y")})


def seed_runs(directory: Path, metric: str) -> list[RunResult]:
    """The finished-epoch runs among ``directory``'s seed*/ subdirectories; unreadable ones are reported on stderr
    and left out."""
    runs = []
    for run_dir in sorted(path.parent for path in directory.glob(f"seed*/{LOG_FILE}")):
        try:
            runs.append(read_run(run_dir, metric))
        except ValueError as error:
            print(f"skipped: {error}", file=sys.stderr)
    return runs


def collect_cells(tables: Iterable[PaperTable], root: Path, profile: Profile, epochs: int, metric: str) -> Cells:
    """The runs of every cell of ``tables`` whose model the profile has, found where run_tables.py puts them.
    Raises ValueError when a run's config.yaml is for other epochs than its directory."""
    cells: Cells = {}
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                key = (column.model, row.run)
                if column.model in profile.models and key not in cells:
                    directory = resolve(profile, column.model, row.run, epochs).directory(root, profile)
                    cells[key] = seed_runs(directory, metric)
    wrong = [run for runs in cells.values() for run in runs if run.epochs_total != epochs]
    if wrong:
        listing = ", ".join(f"{run.path} ({run.epochs_total} ep)" for run in wrong)
        raise ValueError(f"runs configured for other epochs than the {epochs} of their directory: {listing}")
    return cells


def progress_note(runs: list[RunResult]) -> str:
    """" (30/90 ep)" for the least advanced of unfinished runs, "" when all finished."""
    unfinished = [run for run in runs if run.epochs_done < run.epochs_total]
    if not unfinished:
        return ""
    least = min(unfinished, key=lambda run: run.epochs_done)
    return f" ({least.epochs_done}/{least.epochs_total} ep)"


def cell_values(runs: list[RunResult], quantity: str) -> list[float]:
    """The ``quantity`` of each run of a cell that has it."""
    return [run.values[quantity] for run in runs if run.values[quantity] is not None]


def format_cell(runs: list[RunResult], quantity: str, paper: float) -> str:
    """``ours / paper (difference), n=<runs>, range <max - min>`` for one table cell."""
    digits = DIGITS[quantity]
    if not runs:
        return f"{MISSING} / {paper:.{digits}f}"
    values = cell_values(runs, quantity)
    if not values:
        return f"n/a / {paper:.{digits}f}, n={len(runs)}"
    mean = statistics.fmean(values)
    cell = f"{mean:.{digits}f}{progress_note(runs)} / {paper:.{digits}f} ({mean - paper:+.{digits}f}), n={len(values)}"
    if len(values) > 1:
        cell += f", range {max(values) - min(values):.{digits}f}"
    return cell


def format_table(table: PaperTable, cells: Cells, metric: str) -> str:
    """One paper table in its layout as Markdown: a title line, the table, and how to read a cell."""
    top1 = all(column.quantity == "top1" for column in table.columns)
    quantity = f"top-1 %, ours: {metric}" if top1 else "rate of change, last oscillation record"
    lines = [f"### Table {table.number}: {table.title} ({quantity})", "",
             "| method | " + " | ".join(column.header for column in table.columns) + " |",
             "|---" * (len(table.columns) + 1) + "|"]
    for row in table.rows:
        texts = [format_cell(cells.get((column.model, row.run), []), column.quantity, paper)
                 for column, paper in zip(table.columns, row.paper)]
        lines.append(f"| {row.description} (`{row.label}`) | " + " | ".join(texts) + " |")
    lines += ["", f"Cell: ours / paper (ours - paper), n = runs (seeds), range = max - min over them; "
                  f"{MISSING} = no run yet."]
    return "\n".join(lines)


def plot_table(table: PaperTable, cells: Cells, path: Path) -> None:
    """A PNG bar chart of ours (mean, range as error bar) against the paper, one panel per column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row.label for row in table.rows]
    fig, axes = plt.subplots(1, len(table.columns), squeeze=False,
                             figsize=(1.2 + 0.6 * len(labels) * len(table.columns), 4.5))
    for index, (ax, column) in enumerate(zip(axes[0], table.columns)):
        paper = [row.paper[index] for row in table.rows]
        ours, low, high = _bar_values(table, cells, column)
        positions = range(len(labels))
        ax.bar([p - 0.2 for p in positions], paper, width=0.4, color="0.7", label="paper")
        ax.bar([p + 0.2 for p in positions], ours, width=0.4, color="tab:blue", label="ours",
               yerr=[low, high], capsize=3)
        ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(column.header)
    axes[0][0].legend()
    fig.suptitle(f"Table {table.number}: {table.title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bar_values(table: PaperTable, cells: Cells,
                column: Column) -> tuple[list[float], list[float], list[float]]:
    """Per row of one column: our mean (NaN when missing) and its distances to the min and max run."""
    means, low, high = [], [], []
    for row in table.rows:
        values = cell_values(cells.get((column.model, row.run), []), column.quantity)
        mean = statistics.fmean(values) if values else float("nan")
        means.append(mean)
        low.append(mean - min(values) if values else 0.0)
        high.append(max(values) - mean if values else 0.0)
    return means, low, high


def parse_args(argv: "list[str] | None") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the output root of scripts/run_tables.py (its --output)")
    parser.add_argument("--tables", type=int, nargs="+", choices=sorted(TABLES), default=sorted(TABLES),
                        metavar="N", help=f"tables to print, of {sorted(TABLES)} (default: all)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="final",
                        help="top-1 per run: final (last epoch's test_acc1, default), best, ema (model EMA's)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="imagenet",
                        help="the run_tables.py profile whose runs to read (default imagenet)")
    parser.add_argument("--epochs", type=int, help="the runs made with run_tables.py --epochs N (default: the "
                                                   "profile's epochs)")
    parser.add_argument("--figures", type=Path, metavar="DIR", help="also write DIR/table<N>.png bar charts")
    return parser.parse_args(argv)


def main(argv: "list[str] | None" = None) -> int:
    args = parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 1
    profile = get_profile(args.profile)
    epochs = args.epochs or profile.epochs
    tables = [TABLES[number] for number in args.tables]
    try:
        cells = collect_cells(tables, args.root, profile, epochs, args.metric)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not any(cells.values()):
        print(f"error: no runs of these tables (seed directories with {LOG_FILE}, config.yaml and a finished epoch) "
              f"under {args.root / profile.name} for {epochs} epochs", file=sys.stderr)
        return 1
    print("\n\n".join(format_table(table, cells, args.metric) for table in tables))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for table in tables:
            plot_table(table, cells, args.figures / f"table{table.number}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
