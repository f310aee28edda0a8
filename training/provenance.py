"""Which code produced a result: the short commit of this project's own checkout, for run logs and benchmarks."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Set by whoever ships a copy whose .git is missing or older than its files (a GPU job sent a working tree).
COMMIT_ENV = "TETRAJET_SOURCE_COMMIT"


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def source_commit() -> str:
    """The project's short commit, "+modified" appended when tracked files differ from it; "unknown" when the
    project is not a git checkout of its own (a copy inside another repository reports that one's commit
    otherwise, so the top level must be the project root). ``$TETRAJET_SOURCE_COMMIT``, when set, is taken as it is:
    a copy shipped without its own history says which commit it holds."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    top = _git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != PROJECT_ROOT:
        return "unknown"
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+modified" if _git("status", "--porcelain", "--untracked-files=no") else "")
