"""Facts about the machine and the software a run was measured on (saved in the JSON)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["machine_facts", "load_average", "versions"]

PACKAGES = ("serverless", "pyzmq", "cloudpickle", "numpy", "pandas", "matplotlib", "tqdm",
            "psutil", "parsl", "ray", "dask", "distributed")
ROOT = Path(__file__).resolve().parents[1]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(),
                "dirty_files": [line[3:] for line in git("status", "--porcelain").splitlines()]}
    except (OSError, subprocess.SubprocessError):
        return {}


def machine_facts() -> dict[str, Any]:
    from bench.systems.base import cores

    try:
        import psutil

        memory_mb = psutil.virtual_memory().total // 2**20
    except ImportError:
        memory_mb = None
    return {
        "cores_usable": cores(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": memory_mb,
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "versions": versions(),
        "git": _git(),
    }
