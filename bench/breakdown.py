"""Where a call's time goes in serverless: ``python -m bench.breakdown``.

For each mode (fork, direct) it starts a ``serverless.Manager()``, installs the trivial
library (``--imports`` adds modules) and, after a warm-up:

1. runs N calls submit-all-then-wait and reads the CPU each part used (:mod:`bench.cpu`):
   microseconds of CPU per call for the manager's threads, the worker agent, the library
   processes and the forked calls, next to the wall time per call;
2. runs them again with cProfile on in the manager loop thread and in the submitting
   thread: their top functions by own time, per call (cProfile slows what it watches;
   the ranking is what counts);
3. runs them again with py-spy sampling the worker agent and a library process (when
   py-spy is installed): the functions they are most often running;
4. times ``--latency-n`` calls one in flight, split at the manager: submit, loop wake-up,
   sending, the remote part (worker agent + library), settling the future, waking the
   caller.

With ``--queued N`` it also queues N calls on a manager with no worker and reports the
memory each queued call holds (growth of the process's resident memory, including the
caller's list of futures) and the submitting CPU per call.

In fork mode it also runs the fork floor (:mod:`bench.floor_worker`) on the same calls,
for its wall and CPU per call. With a latency test it also times the bare round trips a
call crosses (:mod:`bench.transport_floor`). It prints a report and writes ``DIR/breakdown-<time>.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import funcs
from bench.cpu import per_call, snapshot
from bench.machine import ROOT, machine_facts
from bench.profiling import LoopProfiler, PySpy, top_functions

__all__ = ["main"]

PHASES = ("call() returns", "loop wakes", "Calls sent", "Results arrive (remote)",
          "future settled", "caller wakes", "total")


class _LatencyMarks:
    """Timestamps at the manager's edges, by wrapping private loop methods (bench only)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def install(self) -> bool:
        try:
            from serverless.manager import loop
        except ImportError:
            return False
        marks = self.marks
        now = time.perf_counter

        def wrap(owner: Any, name: str, mark: str, when: Any = None) -> None:
            original = getattr(owner, name)

            def wrapped(*args: Any) -> Any:
                if when is None or when(args):
                    marks.setdefault(mark, now())
                return original(*args)

            self._undo.append((owner, name, original))
            setattr(owner, name, wrapped)

        try:
            wrap(loop.ManagerLoop, "_run_commands", "woke")
            wrap(loop.ManagerLoop, "_send", "sent", lambda a: type(a[2]).__name__ == "Calls")
            wrap(loop.ManagerLoop, "_from_worker", "received",
                 lambda a: type(a[3]).__name__ == "Results")
            wrap(loop, "resolve", "settled")
        except AttributeError:
            self.uninstall()
            return False
        return True

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def _latency(manager: Any, library: str, count: int, marks: _LatencyMarks | None) -> dict[str, Any]:
    rows: list[tuple[float | None, ...]] = []
    for i in range(count):
        if marks is not None:
            marks.marks.clear()
        started = time.perf_counter()
        future = manager.call(library, "add", i, 1)
        returned = time.perf_counter()
        if future.result() != i + 1:
            raise AssertionError("wrong result")
        done = time.perf_counter()
        m = marks.marks if marks is not None else {}
        if {"woke", "sent", "received", "settled"} <= set(m):
            rows.append((returned - started, m["woke"] - started, m["sent"] - m["woke"],
                         m["received"] - m["sent"], m["settled"] - m["received"],
                         done - m["settled"], done - started))
        else:
            rows.append((returned - started, None, None, None, None, None, done - started))
    split = {}
    for index, phase in enumerate(PHASES):
        values = [v for r in rows if (v := r[index]) is not None]
        split[phase] = statistics.median(values) * 1e6 if values else None
    return {"calls": count, "median_us": split}


def _batch(manager: Any, library: str, n: int) -> float:
    started = time.perf_counter()
    futures = [manager.call(library, "add", i, 1) for i in range(n)]
    if [f.result() for f in futures] != [i + 1 for i in range(n)]:
        raise AssertionError("wrong results")
    return time.perf_counter() - started


def _floor(n: int, imports: tuple[str, ...]) -> dict[str, Any]:
    """The fork floor on the same calls, for comparison: wall and CPU per call."""
    from bench.systems.floor import FloorSystem
    from bench.workloads import Workload

    floor = FloorSystem("fork")
    workload = Workload("breakdown", "add", imports, "throughput", n, "floor for the breakdown")
    floor.open(workload)
    try:
        batch = floor.run_all(workload.arguments())
        facts = floor.facts()
    finally:
        floor.close()
    if batch.results != workload.expected(workload.arguments()):
        raise AssertionError("the floor returned wrong results")
    return {"wall_us_per_call": batch.seconds / n * 1e6, "calls_per_second": n / batch.seconds,
            "processes": facts["processes"], "cpu_us_per_call": facts["cpu_us_per_call"]}


def measure_mode(mode: str, n: int, imports: tuple[str, ...], latency_n: int,
                 use_py_spy: bool) -> dict[str, Any]:
    import serverless

    profiler = LoopProfiler()
    hooked = profiler.install()
    marks = _LatencyMarks()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    report: dict[str, Any] = {"mode": mode, "calls": n, "imports": list(imports)}
    try:
        with serverless.Manager(log_dir=log_dir) as manager:
            manager.install(serverless.Library("breakdown", {"add": funcs.add}, imports=imports,
                                               mode=mode, slots=1))
            _batch(manager, "breakdown", 100)
            workers = manager.local_worker_pids()

            before = snapshot(workers)
            wall = _batch(manager, "breakdown", n)
            after = snapshot(workers)
            cpu = per_call(before, after, n)
            report["wall_us_per_call"] = wall / n * 1e6
            report["calls_per_second"] = n / wall
            report["cpu_us_per_call"] = cpu
            report["cpu_us_per_call_total"] = sum(cpu.values())

            if hooked and profiler.switch(True):
                submitting = cProfile.Profile()
                submitting.enable()
                _batch(manager, "breakdown", n)
                submitting.disable()
                profiler.switch(False)
                report["manager_loop_profile"] = top_functions(profiler.profile, n)
                report["submitting_thread_profile"] = top_functions(submitting, n)
            else:
                report["manager_loop_profile_error"] = profiler.error or "the loop did not respond"

            if use_py_spy and PySpy.available():
                from bench.cpu import _library_processes

                spies = [PySpy(workers[0], "worker agent")]
                spies += [PySpy(p.pid, f"library {p.pid}") for p in _library_processes(workers)[:1]]
                _batch(manager, "breakdown", n)
                report["py_spy"] = {spy.label: spy.stop() for spy in spies}

            if mode == "fork":
                report["floor"] = _floor(n, imports)

            if latency_n:
                use_marks = marks.install()
                before = snapshot(workers)
                report["latency"] = _latency(manager, "breakdown", latency_n,
                                             marks if use_marks else None)
                after = snapshot(workers)
                report["latency"]["cpu_us_per_call"] = per_call(before, after, latency_n)
                marks.uninstall()
    finally:
        marks.uninstall()
        profiler.uninstall()
        shutil.rmtree(log_dir, ignore_errors=True)
    return report


def queued_memory(count: int) -> dict[str, Any]:
    """Bytes of resident memory per queued call: ``count`` calls, no worker to run them."""
    import gc

    import psutil
    import serverless

    log_dir = Path(tempfile.mkdtemp(prefix="bench-queued-"))
    me = psutil.Process()
    try:
        manager = serverless.Manager(local_workers=0, log_dir=log_dir)  # calls stay queued
        try:
            manager.install(serverless.Library("queued", {"add": funcs.add}))
            gc.collect()
            before = me.memory_info().rss
            started = time.perf_counter()
            futures = [manager.call("queued", "add", i, 1) for i in range(count)]
            submit = time.perf_counter() - started
            gc.collect()
            after = me.memory_info().rss
            pending = sum(1 for f in futures if not f.done())
        finally:
            manager.shutdown(cancel_futures=True)  # fails every queued call at once
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return {"calls": count, "still_pending": pending, "rss_growth_bytes": after - before,
            "bytes_per_call": (after - before) / count, "submit_us_per_call": submit / count * 1e6}


def render(report: dict[str, Any]) -> str:
    lines = [f"== {report['mode']} mode: {report['calls']:,} trivial calls, submit all then wait"
             f"{' (imports ' + ','.join(report['imports']) + ')' if report['imports'] else ''}",
             f"wall: {report['wall_us_per_call']:.1f} us per call "
             f"({report['calls_per_second']:,.0f} calls/s); CPU per call by part:"]
    for part, us in report["cpu_us_per_call"].items():
        lines.append(f"  {part:28s} {us:9.1f} us")
    lines.append(f"  {'total':28s} {report['cpu_us_per_call_total']:9.1f} us")
    floor = report.get("floor")
    if floor:
        cpu = floor["cpu_us_per_call"]
        lines.append(f"fork floor, same calls ({floor['processes']} bare loops): "
                     f"{floor['wall_us_per_call']:.1f} us per call ({floor['calls_per_second']:,.0f} "
                     f"calls/s); CPU per call: loop {cpu['process']:.1f} us, forked calls "
                     f"{cpu['children']:.1f} us, total {sum(cpu.values()):.1f} us")
    for key, what in (("manager_loop_profile", "manager loop thread"),
                      ("submitting_thread_profile", "submitting thread (call() and result())")):
        if key not in report:
            continue
        lines.append(f"{what}, cProfile, own time per call (top):")
        for row in report[key][:12]:
            waiting = "  (blocked: waiting, not CPU)" if row["waiting"] else ""
            lines.append(f"  {row['own_us_per_call']:7.2f} us  ({row['calls_per_call']:.2f}x)  "
                         f"{row['function']}{waiting}")
    for label, spy in report.get("py_spy", {}).items():
        if "top" not in spy:
            lines.append(f"py-spy {label}: {spy.get('error', 'no samples')}")
            continue
        lines.append(f"py-spy, {label}: share of on-CPU samples ({spy['samples']}):")
        for row in spy["top"][:10]:
            lines.append(f"  {row['share'] * 100:5.1f}%  {row['function']}")
    latency = report.get("latency")
    if latency:
        lines.append(f"one call in flight ({latency['calls']} calls), medians at the manager:")
        for phase, us in latency["median_us"].items():
            lines.append(f"  {phase:28s} {'-' if us is None else f'{us:9.1f} us'}")
        lines.append("  CPU per call: " + ", ".join(
            f"{k} {v:.0f} us" for k, v in latency["cpu_us_per_call"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="calls per fork-mode batch (default 5000)")
    parser.add_argument("--direct-n", type=int, default=50_000,
                        help="calls per direct-mode batch (default 50000: CPU times tick in 10 ms)")
    parser.add_argument("--modes", nargs="+", default=["fork", "direct"], choices=["fork", "direct"])
    parser.add_argument("--imports", default="", help="comma-separated modules the library imports")
    parser.add_argument("--latency-n", type=int, default=500, help="calls one in flight (0: none)")
    parser.add_argument("--no-py-spy", action="store_true", help="do not sample with py-spy")
    parser.add_argument("--queued", type=int, default=0,
                        help="also measure memory per queued call with this many calls (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    imports = tuple(m for m in args.imports.split(",") if m)
    document: dict[str, Any] = {"machine": machine_facts(), "reports": []}
    for mode in args.modes:
        n = args.n if mode == "fork" else args.direct_n
        report = measure_mode(mode, n, imports, args.latency_n, not args.no_py_spy)
        document["reports"].append(report)
        print(render(report), flush=True)
        print()
    if args.latency_n:
        from bench.transport_floor import measure as measure_floors, render as render_floors

        document["transport_floors"] = floors = measure_floors(max(args.latency_n, 1000))
        print(render_floors(floors))
        print()
    if args.queued:
        queued = queued_memory(args.queued)
        document["queued"] = queued
        print(f"== {queued['calls']:,} queued calls (no worker): {queued['bytes_per_call']:,.0f} bytes "
              f"each ({queued['rss_growth_bytes'] / 2**20:,.0f} MB in all, "
              f"{queued['still_pending']:,} pending), {queued['submit_us_per_call']:.1f} us to submit each")
        print()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"breakdown-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=1, default=str))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
