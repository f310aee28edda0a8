"""Train the runs that the paper's tables need (table_runs/paper.py), each once, with --resume auto.

    python scripts/run_tables.py --profile imagenet --tables 2 3 --data-path /data/imagenet [--nproc 4]
    python scripts/run_tables.py --profile proxy --tables 1 2 3 4 5 7 8 --seeds 0 1 2 --jobs 4

A run lives in <output>/<profile>/<model>/<label>-<hash of model file, method file, overrides>/seed<k>; rows of
several tables that are the same run share it. Re-running continues unfinished runs and skips finished ones (a log
that records the last epoch is enough, so results/, which keeps no checkpoints, can be the output root); a
directory holding another configuration is refused by main.py. Each run's output goes to console.log in its
directory. --dry-run prints one line per run (directory, tab, command) and "# " notes for skipped models and runs.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from table_runs import (MODEL_HEADERS, PROFILES, REPO, TABLES, Job, Launch, child_env, command, get_profile,
                        is_finished, plan_runs, run_jobs)

LOG_NAME = "console.log"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="imagenet", help="default imagenet")
    parser.add_argument("--tables", type=int, nargs="+", choices=sorted(TABLES), default=sorted(TABLES),
                        metavar="N", help=f"tables to run, of {sorted(TABLES)} (default: all)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODEL_HEADERS), default=sorted(MODEL_HEADERS),
                        metavar="MODEL", help=f"only these of the tables' models, of {sorted(MODEL_HEADERS)}")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="only the runs with these labels (the directory name before the hash, e.g. "
                             "tetrajet_dampen; --dry-run lists them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values (default 0)")
    parser.add_argument("--epochs", type=int, help="train.epochs (default: the profile's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="main.py override for every run, after the table's own (repeatable); part of the "
                             "runs' configuration, so of their directory names")
    parser.add_argument("--output", type=Path, default=Path("output"),
                        help="output root, relative to the repo root unless absolute (default output)")
    parser.add_argument("--data-path", help="dataset root (default: the profile's; required for imagenet)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (single-process profiles only)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and do nothing else")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the runs (default this one)")
    parser.add_argument("--nproc", type=int, default=4, help="torchrun processes (GPUs) per node (default 4)")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=29500)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    profile = get_profile(args.profile)
    data_path = args.data_path or profile.data_path
    if not data_path:
        print(f"error: profile {profile.name!r} needs --data-path (DATA_PATH for the table launchers): the "
              f"ImageFolder root holding train/ and val/", file=sys.stderr)
        return 2
    if args.jobs < 1 or (args.jobs > 1 and profile.launcher != "python"):
        print(f"error: --jobs {args.jobs}: must be 1, or more only for a single-process profile "
              f"({', '.join(p.name for p in PROFILES.values() if p.launcher == 'python')})", file=sys.stderr)
        return 2
    root = args.output if args.output.is_absolute() else REPO / args.output
    epochs = args.epochs or profile.epochs
    try:
        runs, notes = plan_runs(profile, args.tables, args.models, args.seeds, root, epochs, args.set)
    except ValueError as error:  # a malformed --set
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.labels:
        known = {run.config.label for run in runs}
        unknown = sorted(set(args.labels) - known)
        if unknown:
            print(f"error: --labels {' '.join(unknown)}: not a run of these tables; valid choices: "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
        runs = [run for run in runs if run.config.label in args.labels]
    finished = [run for run in runs if is_finished(run.directory, epochs)]
    notes += [f"finished, skipped: {run.directory}" for run in finished]
    runs = [run for run in runs if run not in finished]
    launch = Launch(python=args.python, data_path=data_path, nproc=args.nproc, nnodes=args.nnodes,
                    node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port)
    if args.dry_run:
        for note in notes:
            print(f"# {note}")
        for run in runs:
            print(f"{run.directory}\t{shlex.join(command(profile, launch, run))}")
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    jobs = [Job(str(run.directory.relative_to(root)), command(profile, launch, run), run.directory / LOG_NAME)
            for run in runs]
    failed = run_jobs(jobs, args.jobs, cwd=REPO, env=child_env(args.jobs))
    if failed:
        print(f"{len(failed)} of {len(jobs)} runs failed: {', '.join(job.name for job in failed)} "
              f"(see their {LOG_NAME})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
