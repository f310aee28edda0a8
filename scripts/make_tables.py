"""The paper's tables (scripts/paper_tables.py) as Markdown, each cell our number beside the paper's:

    ours / paper (ours - paper), n=<runs>, range <max - min over the runs>

Runs are the directories holding a log.jsonl anywhere under OUTPUT_ROOT (the launchers write
$OUTPUT/<model>-<epochs>ep/<method>). A run's model and method come from its log's "run" record; the runs of one
(model, method) are its seeds (e.g. <method> and <method>_seed1 with other train.seed values): the cell shows their
mean, their count n and their range (max - min). Top-1 per run (--metric): "final" (default) the last epoch's
test_acc1, "best" the best test_acc1 so far, "ema" the model EMA's last test_acc1. Table 3: the last "oscillation"
record's r_q (r(W_Q)) and r_y. A run that has not reached its configured train.epochs (config.yaml) is marked
"(30/90 ep)". Only runs on --dataset (default imagenet) count. "–" stands for a run that does not exist yet,
"n/a" for runs without the number (no model EMA, no oscillation records).

Usage: python scripts/make_tables.py OUTPUT_ROOT [--tables 1 2 5] [--metric final|best|ema] [--dataset imagenet]
       [--epochs 90] [--figures DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from paper_tables import TABLES, Column, PaperTable  # noqa: E402
from summarize_runs import summarize  # noqa: E402
from training.logger import LOG_FILE, read_log  # noqa: E402

METRICS = {"final": "top1", "best": "best_top1", "ema": "ema_top1"}
DIGITS = {"top1": 2, "r_q": 4, "r_y": 4}
MISSING = "–"


@dataclass(frozen=True)
class Run:
    """One run directory's numbers: ``values`` maps a quantity ("top1", "r_q", "r_y") to its value or None."""
    path: Path
    model: str
    method: str
    dataset: str
    epochs_done: int
    epochs_total: int
    seed: int
    values: dict


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (itself included) that holds a log.jsonl."""
    return sorted(log.parent for log in root.rglob(LOG_FILE))


def read_config(run_dir: Path) -> tuple[str, int, int]:
    """(data.dataset, train.epochs, train.seed) from the config.yaml that main.py writes into every run directory;
    raises ValueError without one."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no config.yaml")
    config = yaml.safe_load(path.read_text())
    return config["data"]["dataset"], config["train"]["epochs"], config["train"]["seed"]


def last_oscillation(run_dir: Path) -> dict:
    """The run's last oscillation record, or {} when the monitor was off."""
    records = read_log(run_dir, "oscillation")
    return max(records, key=lambda r: r["step"]) if records else {}


def read_run(run_dir: Path, metric: str) -> Run:
    """A ``Run`` from one directory; raises ValueError when it has no run record or no finished epoch."""
    run_records = read_log(run_dir, "run")
    if not run_records:
        raise ValueError(f"{run_dir}: log.jsonl has no run record")
    summary = summarize(run_dir)
    oscillation = last_oscillation(run_dir)
    dataset, epochs_total, seed = read_config(run_dir)
    return Run(path=run_dir, model=run_records[-1]["model"], method=run_records[-1]["method"], dataset=dataset,
               epochs_done=summary["epochs"], epochs_total=epochs_total, seed=seed,
               values={"top1": summary[METRICS[metric]], "r_q": oscillation.get("r_q"),
                       "r_y": oscillation.get("r_y")})


def collect_runs(root: Path, metric: str, dataset: str, epochs: "int | None") -> list[Run]:
    """The runs on ``dataset`` under ``root`` (only those configured for ``epochs`` when given); unreadable ones
    are reported on stderr and left out."""
    runs = []
    for run_dir in find_run_dirs(root):
        try:
            run = read_run(run_dir, metric)
        except ValueError as error:
            print(f"skipped: {error}", file=sys.stderr)
            continue
        if run.dataset == dataset and (epochs is None or run.epochs_total == epochs):
            runs.append(run)
    return runs


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (model, method): the seeds of one table cell. Raises ValueError when a cell mixes runs configured
    for different epoch counts; warns on stderr when two of its runs share a seed."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.model, run.method)].append(run)
    for (model, method), members in groups.items():
        if len({run.epochs_total for run in members}) > 1:
            listing = ", ".join(f"{run.path} ({run.epochs_total} ep)" for run in members)
            raise ValueError(f"{model} / {method}: runs configured for different epochs: {listing}; "
                             f"choose one with --epochs")
        if len({run.seed for run in members}) < len(members):
            print(f"warning: {model} / {method}: several runs with the same seed: "
                  f"{', '.join(str(run.path) for run in members)}", file=sys.stderr)
    return dict(groups)


def progress_note(runs: list[Run]) -> str:
    """" (30/90 ep)" for the least advanced of unfinished runs, "" when all finished."""
    unfinished = [run for run in runs if run.epochs_done < run.epochs_total]
    if not unfinished:
        return ""
    least = min(unfinished, key=lambda run: run.epochs_done)
    return f" ({least.epochs_done}/{least.epochs_total} ep)"


def cell_values(runs: list[Run], quantity: str) -> list[float]:
    """The ``quantity`` of each run of a cell that has it."""
    return [run.values[quantity] for run in runs if run.values[quantity] is not None]


def format_cell(runs: list[Run], quantity: str, paper: float) -> str:
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


def format_table(table: PaperTable, groups: dict[tuple[str, str], list[Run]], metric: str) -> str:
    """One paper table in its layout as Markdown: a title line, the table, and how to read a cell."""
    top1 = all(column.quantity == "top1" for column in table.columns)
    quantity = f"top-1 %, ours: {metric}" if top1 else "rate of change, last oscillation record"
    lines = [f"### Table {table.number}: {table.title} ({quantity})", "",
             "| method | " + " | ".join(column.header for column in table.columns) + " |",
             "|---" * (len(table.columns) + 1) + "|"]
    for row in table.rows:
        cells = [format_cell(groups.get((column.model, row.label), []), column.quantity, paper)
                 for column, paper in zip(table.columns, row.paper)]
        lines.append(f"| {row.description} (`{row.label}`) | " + " | ".join(cells) + " |")
    lines += ["", f"Cell: ours / paper (ours - paper), n = runs (seeds), range = max - min over them; "
                  f"{MISSING} = no run yet."]
    return "\n".join(lines)


def plot_table(table: PaperTable, groups: dict[tuple[str, str], list[Run]], path: Path) -> None:
    """A PNG bar chart of ours (mean, range as error bar) against the paper, one panel per column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row.label for row in table.rows]
    fig, axes = plt.subplots(1, len(table.columns), squeeze=False,
                             figsize=(1.2 + 0.6 * len(labels) * len(table.columns), 4.5))
    for index, (ax, column) in enumerate(zip(axes[0], table.columns)):
        paper = [row.paper[index] for row in table.rows]
        ours, low, high = _bar_values(table, groups, column)
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


def _bar_values(table: PaperTable, groups: dict[tuple[str, str], list[Run]],
                column: Column) -> tuple[list[float], list[float], list[float]]:
    """Per row of one column: our mean (NaN when missing) and its distances to the min and max run."""
    means, low, high = [], [], []
    for row in table.rows:
        values = cell_values(groups.get((column.model, row.label), []), column.quantity)
        mean = statistics.fmean(values) if values else float("nan")
        means.append(mean)
        low.append(mean - min(values) if values else 0.0)
        high.append(max(values) - mean if values else 0.0)
    return means, low, high


def parse_args(argv: "list[str] | None") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="output root to search for run directories (holding log.jsonl)")
    parser.add_argument("--tables", type=int, nargs="+", choices=sorted(TABLES), default=sorted(TABLES),
                        metavar="N", help=f"tables to print, of {sorted(TABLES)} (default: all)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="final",
                        help="top-1 per run: final (last epoch's test_acc1, default), best, ema (model EMA's)")
    parser.add_argument("--dataset", default="imagenet", help="only runs on this data.dataset (default imagenet)")
    parser.add_argument("--epochs", type=int, help="only runs configured for this many epochs (config.yaml)")
    parser.add_argument("--figures", type=Path, metavar="DIR", help="also write DIR/table<N>.png bar charts")
    return parser.parse_args(argv)


def main(argv: "list[str] | None" = None) -> int:
    args = parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 1
    runs = collect_runs(args.root, args.metric, args.dataset, args.epochs)
    if not runs:
        print(f"error: no {args.dataset} runs (directories with {LOG_FILE}, config.yaml and a finished epoch) under "
              f"{args.root}" + (f" configured for {args.epochs} epochs" if args.epochs else ""), file=sys.stderr)
        return 1
    try:
        groups = group_runs(runs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n\n".join(format_table(TABLES[number], groups, args.metric) for number in args.tables))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for number in args.tables:
            plot_table(TABLES[number], groups, args.figures / f"table{number}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
