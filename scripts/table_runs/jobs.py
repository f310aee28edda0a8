"""Run commands as subprocesses, several at once, each with its output in a file, reporting as they finish."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

POLL_S = 0.2


@dataclass(frozen=True)
class Job:
    """One command; its stdout and stderr go to ``log`` (appended, so a continued run keeps its history)."""
    name: str
    command: Sequence[str]
    log: Path


def child_env(jobs: int, base: Optional[dict] = None) -> dict:
    """The children's environment: ``base`` (default os.environ) with OMP_NUM_THREADS=1 when several run at once
    and it is not set, so that they do not oversubscribe the CPU cores."""
    env = dict(os.environ if base is None else base)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_jobs(jobs: Sequence[Job], parallel: int, cwd: Path, env: dict, out: Optional[TextIO] = None) -> list[Job]:
    """Run every job once, at most ``parallel`` at a time, from ``cwd``; print to ``out`` (default stdout) a line
    as each starts and one (done/failed/total, elapsed) as each finishes. Returns the failed jobs (nonzero exit)."""
    out = out or sys.stdout
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    pending, running = list(jobs), []
    failed: list[Job] = []
    done, start = 0, time.monotonic()
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with job.log.open("a") as handle:
                process = subprocess.Popen(list(job.command), cwd=cwd, env=env, stdout=handle,
                                           stderr=subprocess.STDOUT)
            running.append((job, process))
            print(f"started {job.name} (output: {job.log})", file=out, flush=True)
        time.sleep(POLL_S)
        for job, process in [entry for entry in running if entry[1].poll() is not None]:
            running.remove((job, process))
            done += 1
            if process.returncode:
                failed.append(job)
            status = "ok" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            print(f"[{done - len(failed)} done, {len(failed)} failed, {len(jobs)} total, "
                  f"{_elapsed(time.monotonic() - start)}] {status}: {job.name}", file=out, flush=True)
    return failed
