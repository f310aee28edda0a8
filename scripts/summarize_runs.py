"""One table row per run directory, from its log.jsonl: method, epochs, final and best top-1 (and the model EMA's),
training images/s (median over the epochs after the first, which includes start-up and kernel compilation) and
peak GPU memory.

Usage: python scripts/summarize_runs.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from training.logger import read_log


def summarize(run_dir: Path) -> dict:
    """The row of one run; raises FileNotFoundError/ValueError for a directory without finished epochs."""
    epochs = read_log(run_dir, "epoch")
    if not epochs:
        raise ValueError(f"{run_dir}: log.jsonl has no finished epoch")
    runs = read_log(run_dir, "run")
    last = epochs[-1]
    speeds = [e["images_per_s"] for e in epochs[1:]] or [epochs[0]["images_per_s"]]
    peaks = [e["peak_mem_mib"] for e in epochs if e["peak_mem_mib"] is not None]
    return {"run": str(run_dir), "method": runs[-1]["method"] if runs else "?", "epochs": last["epoch"] + 1,
            "top1": last["test_acc1"], "best_top1": last["best_acc1"], "ema_top1": last.get("ema_acc1"),
            "images_per_s": statistics.median(speeds), "peak_mem_mib": max(peaks) if peaks else None,
            "train_minutes": sum(e["train_time_s"] for e in epochs) / 60}


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``summarize`` rows."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| method | epochs | top-1 | best top-1 | EMA top-1 | images/s | peak memory (MiB) | train min | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['epochs']} | {r['top1']:.2f} | {r['best_top1']:.2f} | "
                     f"{fmt(r['ema_top1'], '.2f')} | {r['images_per_s']:.0f} | {fmt(r['peak_mem_mib'], '.0f')} | "
                     f"{r['train_minutes']:.1f} | {r['run']} |")
    return "\n".join(lines)


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run output directories")
    args = parser.parse_args(argv)
    print(format_table([summarize(run) for run in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
