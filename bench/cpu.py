"""CPU seconds per part of a serverless deployment, read from the kernel (psutil).

    manager process   main thread (submitting, waiting), the manager loop thread
                      ("serverless-manager"), its other threads (zmq I/O)
    worker agent      the local worker process, all its threads
    library           the library instance processes themselves
    forked calls      their reaped children (fork mode): counted in the library's
                      ``children_user`` and ``children_system`` once waited for

Differences of two snapshots divided by the calls in between give CPU microseconds per
call for each part; nothing here needs the engine's cooperation beyond process ids.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

__all__ = ["CpuSnapshot", "snapshot", "per_call"]

PARTS = ("manager: submitting thread", "manager: loop thread", "manager: other threads",
         "worker agent", "library processes", "forked calls")


@dataclass
class CpuSnapshot:
    seconds: dict[str, float]


def _library_processes(worker_pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in worker_pids:
        try:
            for child in psutil.Process(pid).children():
                title = child.cmdline()[:1]
                if title and title[0].startswith("serverless library"):
                    found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def snapshot(worker_pids: list[int]) -> CpuSnapshot:
    """CPU seconds used so far by each part (see the module docstring)."""
    me = psutil.Process()
    loop_ids = {t.native_id for t in threading.enumerate() if t.name == "serverless-manager"}
    main_id = threading.get_native_id()
    seconds = dict.fromkeys(PARTS, 0.0)
    for thread in me.threads():
        used = thread.user_time + thread.system_time
        if thread.id == main_id:
            seconds["manager: submitting thread"] += used
        elif thread.id in loop_ids:
            seconds["manager: loop thread"] += used
        else:
            seconds["manager: other threads"] += used
    for pid in worker_pids:
        try:
            times = psutil.Process(pid).cpu_times()
            seconds["worker agent"] += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    for process in _library_processes(worker_pids):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds["library processes"] += times.user + times.system
        seconds["forked calls"] += times.children_user + times.children_system
    return CpuSnapshot(seconds)


def per_call(before: CpuSnapshot, after: CpuSnapshot, calls: int) -> dict[str, float]:
    """CPU microseconds per call for each part between two snapshots."""
    return {part: (after.seconds[part] - before.seconds[part]) / calls * 1e6 for part in PARTS}
