"""Memory under a burst of calls with large arguments: ``python -m bench.memory``.

For each mode and call duration: one ``serverless.Manager`` (one local worker, 2 cores, a
library with ``slots=1``: two instances) gets N calls, each with a 1 MB argument (its own
pickled copy), as fast as ``Manager.call`` takes them, then every result is checked. It
reports the peak resident memory of each process:

    manager      sampled every 10 ms in this process, minus its RSS before the burst;
                 compared with what its queued calls may hold (max_queued x argument size)
    agent        the worker agent's VmHWM (the kernel's own peak, exact)
    library      the largest VmHWM of the library processes

It prints one JSON line per run and a summary. The targets (issue 10): the agent and each
library stay under 200 MB; the manager under its queued arguments plus 100 MB.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import psutil

import serverless

MB = 1 << 20


def work(blob: bytes, ms: float) -> int:
    if ms:
        time.sleep(ms / 1000)
    return len(blob)


def _hwm(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class _Sampler(threading.Thread):
    """The peak RSS of this process, sampled."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._done = threading.Event()
        self._me = psutil.Process()

    def run(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self._me.memory_info().rss)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def run_once(mode: str, ms: float, n: int, size_mb: float, max_queued: int | None) -> dict[str, Any]:
    blob = b"\x01" * int(size_mb * MB)
    options: dict[str, Any] = {"local_cores": 2}
    if max_queued is not None:
        options["max_queued"] = max_queued
    with serverless.Manager(**options) as m:
        m.install(serverless.Library("mem", [work], mode=mode, slots=1, discover=False))
        assert [m.call("mem", "work", b"x", 0).result(timeout=120) for _ in range(4)] == [1] * 4
        agent = m.local_worker_pids()[0]
        baseline = psutil.Process().memory_info().rss
        sampler = _Sampler()
        sampler.start()
        started = time.perf_counter()
        futures = [m.call("mem", "work", blob, ms) for _ in range(n)]
        wrong = sum(f.result(timeout=600) != len(blob) for f in futures)
        seconds = time.perf_counter() - started
        manager_peak = sampler.stop()
        libraries = [p.pid for p in psutil.Process(agent).children()
                     if "library" in " ".join(p.cmdline())]
        result = {
            "mode": mode, "ms": ms, "n": n, "size_mb": size_mb, "max_queued": max_queued,
            "seconds": round(seconds, 2), "calls_per_s": round(n / seconds, 1), "wrong": wrong,
            "manager_growth_mb": round((manager_peak - baseline) / MB, 1),
            "manager_allowed_mb": (round(max_queued * size_mb + 100, 1)
                                   if max_queued is not None else None),
            "agent_peak_mb": round(_hwm(agent) / MB, 1),
            "library_peak_mb": round(max(map(_hwm, libraries), default=0) / MB, 1),
            "libraries": len(libraries),
            "load": [round(x, 2) for x in psutil.getloadavg()],
        }
        del futures
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="calls per run (default 5000)")
    parser.add_argument("--size-mb", type=float, default=1.0, help="argument size (default 1)")
    parser.add_argument("--ms", type=float, nargs="+", default=[10.0, 0.0],
                        help="call durations to run, milliseconds (default 10 0)")
    parser.add_argument("--modes", nargs="+", default=["fork", "direct"])
    parser.add_argument("--max-queued", type=int, default=100,
                        help="ManagerConfig.max_queued (0: none; default 100)")
    args = parser.parse_args(argv)
    max_queued = args.max_queued or None
    ok = True
    for ms in args.ms:
        for mode in args.modes:
            result = run_once(mode, ms, args.n, args.size_mb, max_queued)
            result["met"] = (result["wrong"] == 0 and result["agent_peak_mb"] < 200
                             and result["library_peak_mb"] < 200
                             and (max_queued is None
                                  or result["manager_growth_mb"] < result["manager_allowed_mb"]))
            ok = ok and result["met"]
            print(json.dumps(result), flush=True)
    print("targets met" if ok else "targets MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
