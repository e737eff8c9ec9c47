"""The unit costs behind the breakdown, measured here: ``python -m bench.costs``.

    fork loops   CPU and minor page faults per call, parent and child, of
                 - the bare floor loop (:func:`bench.floor_worker.fork_call`),
                 - the same loop in a process with the library runtime's imports,
                 - the engine's own ForkExecutor (one slot), as a library runs it,
                 - the same ForkExecutor with the child's set-up (``_become_child``) skipped

    fork alone   by what the forking process has imported (nothing, logging, setproctitle,
                 cloudpickle, the protocol, the whole library runtime): the time ``fork()``
                 takes in the parent, the whole fork + ``_exit`` + wait, and the process's
                 memory mappings; page tables and at-fork hooks grow with the imports

The round trips of the transports a call crosses are :mod:`bench.transport_floor`'s.

Each measurement runs in a fresh interpreter (``python -m bench.costs --one NAME``) so that
imports do not leak between them. The ForkExecutor ones use the engine's private classes
(``serverless.worker.fork_executor``); if those change, they report an error instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
FORK_LOOPS = ("floor", "floor+runtime-imports", "fork-executor", "fork-executor-bare-child")
FORK_IMPORTS = ("", "logging", "setproctitle", "cloudpickle", "serverless.protocol",
                "serverless.worker.library_runtime")


def _usage() -> tuple[resource.struct_rusage, resource.struct_rusage]:
    return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)


def _per_call(before: Any, after: Any, calls: int, seconds: float) -> dict[str, float]:
    (s0, c0), (s1, c1) = before, after

    def cpu(a: Any, b: Any) -> float:
        return ((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)) / calls * 1e6

    return {"wall_us": seconds / calls * 1e6, "parent_cpu_us": cpu(s0, s1),
            "child_cpu_us": cpu(c0, c1), "parent_faults": (s1.ru_minflt - s0.ru_minflt) / calls,
            "child_faults": (c1.ru_minflt - c0.ru_minflt) / calls}


def _floor_loop(calls: int, runtime_imports: bool) -> dict[str, float]:
    if runtime_imports:
        import serverless.worker.library_runtime  # noqa: F401
    from bench import funcs
    from bench.floor_worker import _reap, fork_call

    gc.collect()
    gc.freeze()
    blob = pickle.dumps((1, 2), 5)
    before, started = _usage(), time.perf_counter()
    for _ in range(calls):
        fork_call(funcs.add, blob)
    _reap(block=True)
    return _per_call(before, _usage(), calls, time.perf_counter() - started)


def _fork_executor(calls: int, bare_child: bool) -> dict[str, float]:
    from serverless.serialization import dumps_args
    from serverless.worker.fork_executor import ForkExecutor
    from serverless.worker.processes import die_with_parent

    from bench import funcs

    die_with_parent(os.getppid())  # as the library's main() does
    poller = select.epoll()
    results: list[tuple] = []
    executor = ForkExecutor({"add": funcs.add}, 1, poller, results.append, (poller.fileno(),))
    if bare_child:
        executor._become_child = lambda: None  # type: ignore[method-assign]
    gc.collect()
    gc.freeze()
    blob = dumps_args((1, 2), {})
    before, started = _usage(), time.perf_counter()
    executor.submit([(i, "add", blob, None) for i in range(calls)])
    while len(results) < calls or executor.busy():
        wakeup = executor.next_wakeup()
        for fd, _ in poller.poll(5.0 if wakeup is None else max(0.0, wakeup - time.monotonic())):
            executor.on_readable(fd)
        executor.reap()
    executor.kill_all()  # reaps the last children (their CPU counts)
    measured = _per_call(before, _usage(), calls, time.perf_counter() - started)
    if any(entry[1] != 0 for entry in results):
        raise AssertionError("a call failed")
    return measured


def _fork_alone(calls: int, modules: list[str]) -> dict[str, float]:
    import importlib

    for module in modules:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()
    in_parent, whole = [], []
    for i in range(calls + 50):  # the first 50 warm up
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forked = time.perf_counter()
        os.waitpid(pid, 0)
        if i >= 50:
            in_parent.append(forked - started)
            whole.append(time.perf_counter() - started)
    with open("/proc/self/maps") as maps:
        mappings = sum(1 for _ in maps)
    return {"fork_in_parent_us": statistics.median(in_parent) * 1e6,
            "fork_exit_wait_us": statistics.median(whole) * 1e6, "mappings": mappings}


def measure_one(name: str, calls: int) -> dict[str, float]:
    if name.startswith("fork:"):
        return _fork_alone(calls, [m for m in name[5:].split(",") if m])
    if name == "floor":
        return _floor_loop(calls, runtime_imports=False)
    if name == "floor+runtime-imports":
        return _floor_loop(calls, runtime_imports=True)
    if name == "fork-executor":
        return _fork_executor(calls, bare_child=False)
    if name == "fork-executor-bare-child":
        return _fork_executor(calls, bare_child=True)
    raise ValueError(f"unknown measurement {name!r}")


def _in_fresh_interpreter(name: str, calls: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "bench.costs", "--one", name, "-n", str(calls)],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=600)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1500, help="forks per fork loop (default 1500)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.n)))
        return 0
    print(f"fork loops, {args.n} calls each, one at a time (per call):")
    print(f"  {'':26s} {'wall':>8s} {'parent CPU':>11s} {'child CPU':>10s} "
          f"{'parent faults':>14s} {'child faults':>13s}")
    for name in FORK_LOOPS:
        row = _in_fresh_interpreter(name, args.n)
        if "error" in row:
            print(f"  {name:26s} error: {row['error']}")
            continue
        print(f"  {name:26s} {row['wall_us']:6.0f}us {row['parent_cpu_us']:9.0f}us "
              f"{row['child_cpu_us']:8.0f}us {row['parent_faults']:14.0f} {row['child_faults']:13.0f}")
    print(f"fork() alone, by what the process imported ({args.n} forks each, medians):")
    print(f"  {'':34s} {'fork() in parent':>17s} {'fork+_exit+wait':>16s} {'mappings':>9s}")
    for modules in FORK_IMPORTS:
        row = _in_fresh_interpreter(f"fork:{modules}", args.n)
        label = modules or "(nothing)"
        if "error" in row:
            print(f"  {label:34s} error: {row['error']}")
            continue
        print(f"  {label:34s} {row['fork_in_parent_us']:15.0f}us {row['fork_exit_wait_us']:14.0f}us "
              f"{row['mappings']:9d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
