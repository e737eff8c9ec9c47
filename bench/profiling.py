"""Profilers for the breakdown: cProfile in the manager's loop thread, py-spy on processes.

:class:`LoopProfiler` wraps ``ManagerLoop._tick`` (which the loop thread calls every
tick) so that the loop thread itself turns a ``cProfile.Profile`` on and off when asked:
cProfile only sees the thread that enabled it. It relies on two private names of the
engine (``serverless.manager.loop.ManagerLoop`` and its ``_tick``); if they change, it
says so and the breakdown goes on without it.

:class:`PySpy` samples another process (``py-spy record --nonblocking --format raw``)
until stopped, then ranks functions by the samples in which they were running.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["LoopProfiler", "PySpy", "top_functions"]


class LoopProfiler:
    """cProfile for the manager loop thread, switched on and off from another thread."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.error: str | None = None
        self._want = False
        self._on = False
        self._changed = threading.Event()
        self._original: Any = None
        self._cls: Any = None

    def install(self) -> bool:
        """Hook the loop class (before the Manager is created); False if it cannot."""
        try:
            from serverless.manager.loop import ManagerLoop

            original = ManagerLoop._tick
        except (ImportError, AttributeError) as exc:
            self.error = f"cannot hook the manager loop: {exc}"
            return False
        profiler = self

        def _tick(loop: Any, now: float) -> None:
            profiler._apply()
            original(loop, now)

        self._cls, self._original = ManagerLoop, original
        ManagerLoop._tick = _tick
        return True

    def uninstall(self) -> None:
        if self._cls is not None:
            self._cls._tick = self._original
            self._cls = None

    def _apply(self) -> None:
        if self._want and not self._on:
            self.profile.enable()
            self._on = True
            self._changed.set()
        elif not self._want and self._on:
            self.profile.disable()
            self._on = False
            self._changed.set()

    def switch(self, on: bool, timeout: float = 10.0) -> bool:
        """Ask the loop thread to start (stop) profiling; wait until it has."""
        self._changed.clear()
        self._want = on
        if self._on == on:
            return True
        return self._changed.wait(timeout)


#: functions whose own time is mostly blocking in the kernel, not CPU
WAITING = ("(poll)", "(select)", "(wait)", "'acquire'", "(epoll")


def top_functions(profile: cProfile.Profile, calls: int, limit: int = 15) -> list[dict[str, Any]]:
    """The functions with the most own time, in microseconds per benchmark call.

    Rows of blocking calls (poll, select, lock waits) are flagged ``waiting``: their own
    time is mostly idle, not work."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({
            "function": f"{_short(filename)}:{line}({name})",
            "own_us_per_call": tottime / calls * 1e6,
            "cumulative_us_per_call": cumtime / calls * 1e6,
            "calls_per_call": ncalls / calls,
            "waiting": any(mark in name or mark in f"({name})" for mark in WAITING),
        })
    rows.sort(key=lambda r: r["own_us_per_call"], reverse=True)
    return rows[:limit]


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return os.path.basename(filename) if filename.startswith("/") else filename


class PySpy:
    """``py-spy record`` attached to one process until :meth:`stop`."""

    def __init__(self, pid: int, label: str, rate: int = 500) -> None:
        self.pid, self.label = pid, label
        self.path = Path(tempfile.mkdtemp(prefix="bench-pyspy-")) / f"{label}.txt"
        self.process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--nonblocking", "--rate", str(rate),
             "--format", "raw", "--output", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    @staticmethod
    def available() -> bool:
        return shutil.which("py-spy") is not None

    def stop(self, limit: int = 12) -> dict[str, Any]:
        """Stop sampling; the functions most often on CPU (own samples, share of all)."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        if not self.path.exists():
            return {"error": (err or b"").decode(errors="replace")[-500:]}
        own: Counter[str] = Counter()
        total = 0
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            own[_frame(frames[-1])] += int(count)
            total += int(count)
        shutil.rmtree(self.path.parent, ignore_errors=True)
        return {"samples": total,
                "top": [{"function": f, "share": n / total} for f, n in own.most_common(limit)]}


def _frame(frame: str) -> str:
    """``name (path/file.py:12)`` -> ``name (file.py:12)``, shortened like cProfile's."""
    name, _, where = frame.partition(" (")
    return f"{name} ({_short(where.rstrip(')'))})" if where else name
