"""Where runs write when the user names no directory: one per-user parent, old runs pruned.

    $TMPDIR/serverless-<uid>/              made once, mode 0700, owned by this user
        manager-<pid>-<random>/            a Manager's log_dir (its local workers inside)
        worker-<pid>-<random>/             a hand-started worker's --workdir

Each new run first removes the runs of processes that are no longer alive, except the
newest of them (the last run's logs stay for debugging); runs of live processes are never
touched. A parent that is not ours (another user made it first) is not used: the run gets a
private temporary directory of its own, as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psutil

__all__ = ["run_directory", "runs_parent", "prune_runs"]


def runs_parent() -> Path:
    return Path(tempfile.gettempdir()) / f"serverless-{os.getuid()}"


def run_directory(kind: str) -> Path:
    """A new directory for this process's run of ``kind`` ("manager", "worker")."""
    parent = runs_parent()
    try:
        parent.mkdir(mode=0o700, exist_ok=True)
        info = parent.lstat()
        if info.st_uid != os.getuid() or not parent.is_dir() or parent.is_symlink():
            raise PermissionError(f"{parent} is not this user's")
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"serverless-{kind}-"))
    prune_runs(parent)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=parent))


def prune_runs(parent: Path) -> list[Path]:
    """Remove the runs of dead processes but the newest of them; returns what was removed."""
    dead: list[tuple[float, Path]] = []
    for entry in parent.iterdir():
        parts = entry.name.split("-")
        if len(parts) < 3 or not parts[1].isdigit() or not entry.is_dir() or entry.is_symlink():
            continue
        if psutil.pid_exists(int(parts[1])):
            continue
        try:
            dead.append((entry.stat().st_mtime, entry))
        except OSError:
            continue
    dead.sort()
    removed = []
    for _, entry in dead[:-1]:
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
