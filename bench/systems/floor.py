"""The floors: the same calls through bare loops (see :mod:`bench.floor_worker`).

``floor-fork`` runs one floor process per core, each forking a child per call for its share
of the calls, all at once: what serverless fork mode (one instance per core, slots=1) could
reach with no manager, no worker agent and no messages. ``floor-direct`` runs the in-process
call loop (unpickle, call, pickle) the same way. Each floor process times its own loop; a
batch takes as long as the slowest of them. Latency uses one floor process. The CPU each
loop and its forked children used is recorded (``facts()["cpu_us_per_call"]``).
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.workloads import Workload

from .base import System, Timed, cores

__all__ = ["FloorSystem"]

_LENGTH = struct.Struct("!Q")
ROOT = Path(__file__).resolve().parents[2]


class _FloorProcess:
    def __init__(self, modules: tuple[str, ...]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_worker", ",".join(modules)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(ROOT),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        if self.stdout.read(1) != b"R":
            raise RuntimeError(f"floor process failed to start (exit {self.process.wait()})")

    def send(self, request: tuple) -> None:
        data = pickle.dumps(request, 5)
        self.stdin.write(_LENGTH.pack(len(data)) + data)
        self.stdin.flush()

    def receive(self) -> tuple[list[bytes], Any, dict[str, float]]:
        header = self.stdout.read(_LENGTH.size)
        if len(header) < _LENGTH.size:
            raise RuntimeError(f"floor process died (exit {self.process.wait()})")
        (length,) = _LENGTH.unpack(header)
        return pickle.loads(self.stdout.read(length))

    def close(self) -> None:
        self.stdin.close()  # EOF: it exits
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stdout.close()


class FloorSystem(System):
    peer = False

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"floor-{mode}"
        self.description = ("bare loop per core, fork per call, same imports" if mode == "fork"
                            else "bare in-process call loop per core (unpickle, call, pickle)")
        self._processes: list[_FloorProcess] = []
        self._function = ""
        self._cpu = {"process": 0.0, "children": 0.0}
        self._calls = 0

    def open(self, workload: Workload) -> None:
        self._function = workload.function
        self._cpu = {"process": 0.0, "children": 0.0}
        self._calls = 0
        count = 1 if workload.kind == "latency" else cores()
        self._processes = [_FloorProcess(workload.imports) for _ in range(count)]

    def run_all(self, arguments: list[tuple]) -> Timed:
        blobs = [pickle.dumps(a, 5) for a in arguments]
        count = len(self._processes)
        share = -(-len(blobs) // count)
        chunks = [blobs[i * share:(i + 1) * share] for i in range(count)]
        for process, chunk in zip(self._processes, chunks):
            process.send((self.mode, "throughput", self._function, chunk))
        results: list[Any] = []
        slowest = 0.0
        for process in self._processes:
            blobs_out, seconds, cpu = process.receive()
            self._count_cpu(cpu, len(blobs_out))
            results += [pickle.loads(b) for b in blobs_out]
            slowest = max(slowest, seconds)
        return Timed(results, slowest)

    def _count_cpu(self, cpu: dict[str, float], calls: int) -> None:
        for part in self._cpu:
            self._cpu[part] += cpu[part]
        self._calls += calls

    def latency(self, arguments: list[tuple]) -> tuple[list[Any], list[float]]:
        process = self._processes[0]
        process.send((self.mode, "latency", self._function, [pickle.dumps(a, 5) for a in arguments]))
        blobs_out, seconds, cpu = process.receive()
        self._count_cpu(cpu, len(blobs_out))
        return [pickle.loads(b) for b in blobs_out], seconds

    def facts(self) -> dict[str, Any]:
        """Processes used, and CPU microseconds per call of the loop and of forked children."""
        calls = max(1, self._calls)
        return {"processes": len(self._processes),
                "cpu_us_per_call": {part: used / calls * 1e6 for part, used in self._cpu.items()}}

    def close(self) -> None:
        for process in self._processes:
            process.close()
        self._processes = []
