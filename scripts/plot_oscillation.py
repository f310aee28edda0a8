"""PNG figures from the oscillation records (``"type": "oscillation"``) of one or more runs' log.jsonl files.

Each run directory holds a log.jsonl written while quantization.OscillationMonitor was on. Figures, in the spirit of
the paper's:

* fig2_rate_of_change.png: rate of change of W, Q(W) and the probed block output over training, one line per run
  (e.g. full precision vs MXFP4; Fig. 2);
* fig3_oscillating_weights.png: the followed latent weights of the first run (w / S against the iterations of one
  window) with their forward quantization and the rounding thresholds in view (Fig. 3);
* fig5_quantconf.png: QuantConf histograms, one per run, from the chosen window (Fig. 5);
* fig6_oscillating_share.png: share of weights with R_w > 16 over training, per run (Fig. 6).

The plots take each method's runs as seeds (one line per method: the mean, with a min-max band for several seeds;
QuantConf summed over them); make_tables.py --figures draws them for the tables' runs.

Usage: python scripts/plot_oscillation.py RUN_DIR [RUN_DIR ...] [--out DIR] [--step STEP] [--labels A B ...]
(``--step``: the window for Figs. 3 and 5, default each run's last; labels default to the runs' method names.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RATES = (("r_w", "W (latent weights)"), ("r_q", "Q(W) (forward weights)"), ("r_y", "Y (probed block output)"))
DPI = 100

Seeds = list[list[dict]]  # one method's runs (seeds), each its oscillation records in step order


def read_run(run_dir: Path) -> tuple[str, list[dict]]:
    """The run's method label (from its "run" record, else the directory name) and its oscillation records."""
    path = run_dir / "log.jsonl" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {str(run_dir)!r}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    label = next((r.get("method") for r in records if r.get("type") == "run" and r.get("method")), run_dir.name)
    windows = sorted({r["step"]: r for r in records if r.get("type") == "oscillation"}.values(),
                     key=lambda r: r["step"])  # a resumed run may repeat a window: keep the last
    if not windows:
        raise ValueError(f"{path} has no oscillation records: train with the OscillationMonitor on")
    return label, windows


def _x(record: dict) -> float:
    return record["epoch"] if "epoch" in record else record["step"]


def _xlabel(records: list[dict]) -> str:
    return "epoch" if all("epoch" in r for r in records) else "step"


def _pick(records: list[dict], step: int | None) -> dict:
    if step is None:
        return records[-1]
    for record in records:
        if record["step"] == step:
            return record
    raise ValueError(f"no oscillation window ends at step {step}; windows end at {[r['step'] for r in records]}")


def band(seeds: Seeds, key: str, scale: float = 1.0) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per window (step) that any seed has ``key`` at: x (epoch, else step), and the mean, min and max over the
    seeds, times ``scale``."""
    by_step: dict[int, list[dict]] = {}
    for records in seeds:
        for record in records:
            if key in record:
                by_step.setdefault(record["step"], []).append(record)
    xs, means, lows, highs = [], [], [], []
    for step in sorted(by_step):
        values = [scale * r[key] for r in by_step[step]]
        xs.append(_x(by_step[step][0]))
        means.append(sum(values) / len(values))
        lows.append(min(values))
        highs.append(max(values))
    return xs, means, lows, highs


def draw_band(ax, label: str, seeds: Seeds, key: str, scale: float = 1.0) -> None:
    """The mean over seeds as a line with markers and, for several seeds, their min-max as a shaded band."""
    xs, means, lows, highs = band(seeds, key, scale)
    name = f"{label} (n={len(seeds)})" if len(seeds) > 1 else label
    line, = ax.plot(xs, means, marker="o", markersize=3, label=name)
    if len(seeds) > 1:
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_rates(runs: list[tuple[str, Seeds]], path: Path, keys: tuple[str, ...] = ("r_w", "r_q", "r_y")) -> None:
    """Rate of change over training, one panel per rate of ``keys`` that the records have, one line per method
    (Fig. 2)."""
    present = [(key, title) for key, title in RATES
               if key in keys and any(key in r for _, seeds in runs for rs in seeds for r in rs)]
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], present):
        for label, seeds in runs:
            draw_band(ax, label, seeds, key)
        ax.set(title=f"rate of change of {title}", xlabel=_xlabel(runs[0][1][0]), yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_traces(label: str, record: dict, out: Path) -> None:
    traces = record["traces"]
    fig, axes = plt.subplots(1, len(traces), figsize=(3.6 * len(traces), 3.2), squeeze=False)
    for ax, trace in zip(axes[0], traces):
        steps = range(record["step"] - len(trace["v"]) + 1, record["step"] + 1)
        ax.plot(steps, trace["v"], marker=".", label="w / S (latent)")
        ax.step(steps, trace["q"], where="post", label="Q(w) / S")
        ax.plot([], [], color="gray", linestyle="--", linewidth=0.8, label="rounding threshold")
        signed = sorted({t for threshold in record["thresholds"] for t in (threshold, -threshold)})
        below = [t for t in signed if t <= min(trace["v"])][-1:]  # the thresholds bounding the latent path
        above = [t for t in signed if t >= max(trace["v"])][:1]
        low, high = min(trace["v"] + trace["q"] + below), max(trace["v"] + trace["q"] + above)
        for threshold in signed:
            if low <= threshold <= high:
                ax.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
        pad = 0.05 * ((high - low) or 1.0)
        ax.set_ylim(low - pad, high + pad)
        ax.set(title=f"{trace['layer']}[{trace['index']}]", xlabel="iteration")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{label}: followed weights, window ending at step {record['step']}")
    fig.tight_layout()
    fig.savefig(out / "fig3_oscillating_weights.png", dpi=DPI)
    plt.close(fig)


def plot_quantconf(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """QuantConf histograms, one panel per method: the counts of its records (one window per seed) summed and
    normalised to shares (Fig. 5)."""
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, (label, records) in zip(axes.flat, runs):
        edges = records[0]["quantconf_hist"]["edges"]
        counts = [sum(column) for column in zip(*(r["quantconf_hist"]["counts"] for r in records))]
        total = sum(counts) or 1
        mean = sum(r["quantconf_mean"] for r in records) / len(records)
        ax.bar(edges[:-1], [c / total for c in counts], width=[b - a for a, b in zip(edges, edges[1:])],
               align="edge")
        seeds = f", {len(records)} seeds" if len(records) > 1 else ""
        ax.set_title(f"{label}\n(mean {mean:.3f}{seeds})", fontsize=9)
        ax.set_xlabel("QuantConf")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of weights")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_oscillating_share(runs: list[tuple[str, Seeds]], path: Path) -> None:
    """Share of weights with R_w > 16 over training, one line (and seed band) per method (Fig. 6)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, seeds in runs:
        draw_band(ax, label, seeds, "osc_share", scale=100)
    ax.set(xlabel=_xlabel(runs[0][1][0]), ylabel="weights with R_w > 16 (%)", title="oscillating weights")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or log.jsonl files)")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="where the PNGs go (default: figures/)")
    parser.add_argument("--step", type=int, help="window (its last step) for Figs. 3 and 5; default: the last")
    parser.add_argument("--labels", nargs="+", help="one label per run instead of the method names")
    args = parser.parse_args(argv)
    runs = [read_run(path) for path in args.runs]
    if args.labels:
        if len(args.labels) != len(runs):
            parser.error(f"--labels needs one label per run: {len(runs)} runs, {len(args.labels)} labels")
        runs = [(label, records) for label, (_, records) in zip(args.labels, runs)]
    args.out.mkdir(parents=True, exist_ok=True)
    plot_rates([(label, [records]) for label, records in runs], args.out / "fig2_rate_of_change.png")
    plot_traces(runs[0][0], _pick(runs[0][1], args.step), args.out)
    plot_quantconf([(label, [_pick(records, args.step)]) for label, records in runs], args.out / "fig5_quantconf.png")
    plot_oscillating_share([(label, [records]) for label, records in runs], args.out / "fig6_oscillating_share.png")
    written = sorted(args.out.glob("fig*.png"))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
