"""The paper's tables (scripts/table_runs/paper.py) as Markdown, each cell our number beside the paper's, then the
checklist of the paper's claims (scripts/table_runs/claims.py) with their verdicts:

    <mean> ± <sample std> (n=<runs>) / paper <paper's number> (<ours - paper>, ImageNet profile only)

A cell's runs are the seeds of its row's configuration on its column's model: the seed*/ directories holding a
log.jsonl under the directory scripts/run_tables.py trains that configuration in,
OUTPUT_ROOT/<profile>/<model>/<label>-<hash>/ (--profile, default imagenet; --epochs, default the profile's, as
given to run_tables.py). Another profile's data set is not the paper's, so its cells leave out the difference.
The checklist reads the finished seeds only, on DeiT-T. Top-1 per run
(--metric): "final" (default) the last epoch's test_acc1, "best" the best test_acc1 so far, "ema" the model EMA's
last test_acc1. Table 3: the last "oscillation" record's r_q (r(W_Q)) and r_y. A run that has not reached its
configured train.epochs (config.yaml) is marked "(30/90 ep)"; a run configured for other epochs than its directory
is an error. "–" stands for a run that does not exist yet (or a model the profile lacks), "n/a" for runs without
the number (no model EMA, no oscillation records).

--figures DIR writes PNGs named <profile>_*.png: a bar chart per table with more than half its rows run (mean and
sample std over the seeds, the seeds as dots, the paper's number as a marker in the ImageNet profile), and for the
runs with oscillation records (bf16, Microscaling, Table 3's rows) r(W_Q), r(Y) and the share of oscillating
weights over training (mean over the seeds, min-max band) and QuantConf histograms (last window, seeds summed).

Usage: python scripts/make_tables.py OUTPUT_ROOT [--profile imagenet|proxy] [--tables 1 2 5]
       [--metric final|best|ema] [--epochs 90] [--figures DIR] [--checklist-only]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from summarize_runs import summarize
from table_runs import (CLAIMS, MODEL_HEADERS, PROFILES, TABLES, PaperTable, Profile, Run, Verdict,
                        claim_model, evaluate, get_profile, resolve)
from table_runs.claims import Values
from table_runs.paper import BF16, MICROSCALING
from training.logger import LOG_FILE, read_log

METRICS = {"final": "top1", "best": "best_top1", "ema": "ema_top1"}
DIGITS = {"top1": 2, "r_q": 4, "r_y": 4}
MISSING = "–"
COMPARED_PROFILE = "imagenet"  # the paper's data set: only there is ours - paper meaningful


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
    """", 30/90 ep" for the least advanced of unfinished runs, "" when all finished."""
    unfinished = [run for run in runs if run.epochs_done < run.epochs_total]
    if not unfinished:
        return ""
    least = min(unfinished, key=lambda run: run.epochs_done)
    return f", {least.epochs_done}/{least.epochs_total} ep"


def cell_values(runs: list[RunResult], quantity: str) -> list[float]:
    """The ``quantity`` of each run of a cell that has it."""
    return [run.values[quantity] for run in runs if run.values[quantity] is not None]


def format_cell(runs: list[RunResult], quantity: str, paper: float, compare: bool) -> str:
    """``mean ± std (n=<runs>) / paper <number> (<ours - paper>)`` for one table cell; the difference only when
    ``compare``, the std only for two runs or more."""
    digits = DIGITS[quantity]
    reference = f"paper {paper:.{digits}f}"
    if not runs:
        return f"{MISSING} / {reference}"
    values = cell_values(runs, quantity)
    if not values:
        return f"n/a (n={len(runs)}) / {reference}"
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    cell = f"{mean:.{digits}f}{spread} (n={len(values)}{progress_note(runs)}) / {reference}"
    return cell + (f" ({mean - paper:+.{digits}f})" if compare else "")


def format_table(table: PaperTable, cells: Cells, metric: str, compare: bool) -> str:
    """One paper table in its layout as Markdown: a title line, the table, and how to read a cell."""
    top1 = all(column.quantity == "top1" for column in table.columns)
    quantity = f"top-1 %, ours: {metric}" if top1 else "rate of change, last oscillation record"
    lines = [f"### Table {table.number}: {table.title} ({quantity})", "",
             "| method | " + " | ".join(column.header for column in table.columns) + " |",
             "|---" * (len(table.columns) + 1) + "|"]
    for row in table.rows:
        texts = [format_cell(cells.get((column.model, row.run), []), column.quantity, paper, compare)
                 for column, paper in zip(table.columns, row.paper)]
        lines.append(f"| {row.description} (`{row.label}`) | " + " | ".join(texts) + " |")
    difference = "the paper's number (ours - paper)" if compare else \
        "the paper's number (another data set: no difference)"
    lines += ["", f"Cell: ours, mean ± sample std over the runs (n = runs, i.e. seeds; k/N ep = the least advanced "
                  f"unfinished one) / {difference}; {MISSING} = no run yet."]
    return "\n".join(lines)


def finished_values(cells: Cells, model: str) -> Values:
    """The claims' reader: (run, quantity) -> the values of the run's finished seeds on ``model``."""
    def values(run: Run, quantity: str) -> list[float]:
        runs = [result for result in cells.get((model, run), []) if result.epochs_done >= result.epochs_total]
        return cell_values(runs, quantity)
    return values


def _number(value: "float | None", quantity: str) -> str:
    return MISSING if value is None else f"{value:.{DIGITS[quantity]}f}"


def format_claim(verdict: Verdict) -> str:
    """One checklist row: claim | paper | ours | d ± se (d/se) | verdict; a claim of several comparisons shows
    the one closest to failing."""
    first = verdict.claim.comparisons[0]
    if not verdict.gaps:
        model_paper = f"{_number(first.paper(first.a, verdict.model), first.quantity)} vs " \
                      f"{_number(first.paper(first.b, verdict.model), first.quantity)}"
        short = ", ".join(f"`{label}` {count}" for label, count in verdict.missing)
        return f"| {verdict.claim.text} | {model_paper} | finished seeds: {short} | {MISSING} | {verdict.verdict} |"
    gap = verdict.deciding
    quantity = gap.comparison.quantity
    digits = DIGITS[quantity]
    paper = f"{_number(gap.paper_a, quantity)} vs {_number(gap.paper_b, quantity)}"
    ours = f"{gap.mean_a:.{digits}f} vs {gap.mean_b:.{digits}f} (n={gap.n_a}, {gap.n_b})"
    if len(verdict.gaps) > 1:
        ours += f"; closest of {len(verdict.gaps)}: `{gap.comparison.a}` vs `{gap.comparison.b}`"
    spread = f"{gap.d:+.{digits}f} ± {gap.se:.{digits}f} ({gap.ratio:+.1f})"
    return f"| {verdict.claim.text} | {paper} | {ours} | {spread} | {verdict.verdict} |"


def format_checklist(verdicts: list[Verdict]) -> str:
    """The claims checklist as Markdown: a title line, the table, and how to read it."""
    model = MODEL_HEADERS.get(verdicts[0].model, verdicts[0].model)
    lines = [f"### Claims of the paper, checked on {model}", "",
             "| claim | paper | ours (n = finished seeds) | d ± se (d/se) | verdict |", "|---|---|---|---|---|",
             *(format_claim(verdict) for verdict in verdicts),
             "", "d: ours, first minus second (second minus first for the rates and Table 1, where lower is the "
                 "claim), so d > 0 points the claim's way; se = sqrt(var_1/n_1 + var_2/n_2), sample variances. "
                 "Holds: d >= 2 se (and >= the claim's margin); does not hold: d <= margin - 2 se; Dampen's claim "
                 "fails only at d >= 2 se; not run: fewer than 2 finished seeds on a side."]
    return "\n".join(lines)


def drawn(table: PaperTable, cells: Cells) -> bool:
    """Whether a table gets a bar chart: more than half its rows have a number (the rest are in other charts or
    not run)."""
    run = [row for row in table.rows
           if any(cell_values(cells.get((column.model, row.run), []), column.quantity) for column in table.columns)]
    return 2 * len(run) > len(table.rows)


def plot_table(table: PaperTable, cells: Cells, profile: Profile, path: Path) -> None:
    """A PNG bar chart, one panel per column of the profile's models: our mean per row with the sample std as error
    bar and the seeds as dots; the paper's number as a marker in the ImageNet profile only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [column for column in table.columns if column.model in profile.models]
    labels = [row.label for row in table.rows]
    fig, axes = plt.subplots(1, len(columns), squeeze=False, figsize=(1.5 + 0.55 * len(labels) * len(columns), 4.2))
    for index, (ax, column) in enumerate(zip(axes[0], columns)):
        seeds = [cell_values(cells.get((column.model, row.run), []), column.quantity) for row in table.rows]
        means = [statistics.fmean(v) if v else float("nan") for v in seeds]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in seeds]
        positions = list(range(len(labels)))
        ax.bar(positions, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.75, label="ours (mean ± std)")
        for position, values in zip(positions, seeds):
            ax.plot([position] * len(values), values, "k.", markersize=4)
        found = [v for values in seeds for v in values]
        if profile.name == COMPARED_PROFILE:
            paper = [row.paper[table.columns.index(column)] for row in table.rows]
            ax.plot(positions, paper, "D", color="tab:red", label="paper")
            found += paper
        if column.quantity == "top1" and found:  # accuracies differ by points: start the axis near them
            spread = max(found) - min(found) or 1.0
            ax.set_ylim(min(found) - 0.6 * spread, max(found) + 0.3 * spread)
        ax.set_xticks(positions, [label if seeds[i] else f"{label} (no run)" for i, label in enumerate(labels)],
                      rotation=40, ha="right", fontsize=8)
        ax.set_title(column.header, fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{profile.name}: Table {table.number}, {table.title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def monitored_runs(cells: Cells, model: str) -> list[tuple[str, list[list[dict]]]]:
    """(label, the oscillation records of each seed) of bf16, Microscaling and Table 3's rows on ``model``, for
    those whose runs have oscillation records."""
    import plot_oscillation

    groups = []
    for run in (BF16, MICROSCALING, *(row.run for row in TABLES[3].rows)):
        seeds = []
        for result in cells.get((model, run), []):
            try:
                seeds.append(plot_oscillation.read_run(result.path)[1])
            except ValueError:  # the monitor was off for this run
                continue
        if seeds:
            groups.append((run.label, seeds))
    return groups


def write_figures(tables: list[PaperTable], cells: Cells, profile: Profile, directory: Path) -> list[Path]:
    """The module docstring's figures under ``directory``; returns their paths."""
    import plot_oscillation

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        if drawn(table, cells):
            written.append(directory / f"{profile.name}_table{table.number}.png")
            plot_table(table, cells, profile, written[-1])
    groups = monitored_runs(cells, claim_model(list(profile.models)))
    if groups:
        paths = [directory / f"{profile.name}_{name}.png" for name in ("r_wq", "r_y", "osc_share", "quantconf")]
        plot_oscillation.plot_rates(groups, paths[0], keys=("r_q",))
        plot_oscillation.plot_rates(groups, paths[1], keys=("r_y",))
        plot_oscillation.plot_oscillating_share(groups, paths[2])
        plot_oscillation.plot_quantconf([(label, [records[-1] for records in seeds]) for label, seeds in groups],
                                        paths[3])
        written += paths
    return written


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
    parser.add_argument("--figures", type=Path, metavar="DIR", help="also write the PNG figures (see above) into DIR")
    parser.add_argument("--checklist-only", action="store_true", help="print the claims checklist, not the tables")
    return parser.parse_args(argv)


def main(argv: "list[str] | None" = None) -> int:
    args = parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 1
    profile = get_profile(args.profile)
    epochs = args.epochs or profile.epochs
    tables = [TABLES[number] for number in args.tables]
    # the claims' tables, and Table 3 for the figures' monitored runs
    claimed = sorted({comparison.table for claim in CLAIMS for comparison in claim.comparisons} | {3})
    try:
        cells = collect_cells([*tables, *(TABLES[number] for number in claimed)], args.root, profile, epochs,
                              args.metric)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not any(cells.values()):
        print(f"error: no runs of these tables (seed directories with {LOG_FILE}, config.yaml and a finished epoch) "
              f"under {args.root / profile.name} for {epochs} epochs", file=sys.stderr)
        return 1
    model = claim_model(list(profile.models))
    verdicts = [evaluate(claim, finished_values(cells, model), model) for claim in CLAIMS]
    compare = profile.name == COMPARED_PROFILE
    blocks = [] if args.checklist_only else [format_table(table, cells, args.metric, compare) for table in tables]
    print("\n\n".join([*blocks, format_checklist(verdicts)]))
    if args.figures:
        write_figures(tables, cells, profile, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
