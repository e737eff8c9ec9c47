"""A quick side-by-side probe of the engine: ``python -m bench.probe``.

One ``serverless.Manager()`` per measurement, a bare library with ``add``, then:

    direct, fork   N calls with ``Manager.call`` then ``result()`` on each, 3 times:
                   the median calls/s and the manager process's CPU per call (all its threads)
    latd, latf     calls one in flight: p50 and p90 in microseconds (``--gap-ms``: a pause
                   before each call, so that it finds an idle instance)
    bigd, bigf     20 calls each given a 20 MB numpy array, 3 times: the median MB/s
    bigpool        the same through multiprocessing.Pool(2).map, for comparison
    outd, outf     20 calls each returning a 20 MB numpy array, 3 times: the median MB/s

It prints one JSON line. To compare two versions of the engine at the same moment (the only
comparison that means anything on a shared machine), run it alternately against each, e.g.
with an older commit exported to a directory laid out as the installed package
(``serverless/``, ``serverless/manager/``, ``serverless/worker/``) and put first on
``PYTHONPATH``, from a directory other than the repository's root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import serverless


def add(x: int, y: int) -> int:
    return x + y


def _throughput(manager: Any, n: int) -> dict[str, float]:
    rates, cpu = [], []
    for _ in range(3):
        cpu_before, started = time.process_time(), time.perf_counter()
        futures = [manager.call("lib", "add", i, 1) for i in range(n)]
        results = [f.result() for f in futures]
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu_before
        if results != [i + 1 for i in range(n)]:
            raise AssertionError("wrong results")
        rates.append(n / elapsed)
        cpu.append(used / n * 1e6)
    return {"rate": statistics.median(rates), "mgr_cpu_us": statistics.median(cpu)}


def total(array: Any) -> float:
    return float(array[0]) + array.nbytes


def _arrays(megabytes: int = 20, count: int = 20) -> list[Any]:
    import numpy

    return [numpy.full(megabytes * 2**20 // 8, float(i)) for i in range(count)]


def _big(submit_all: Any) -> dict[str, float]:
    arrays = _arrays()
    expected = [i + a.nbytes for i, a in enumerate(arrays)]
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        if submit_all(arrays) != expected:
            raise AssertionError("wrong results")
        rates.append(sum(a.nbytes for a in arrays) / 2**20 / (time.perf_counter() - started))
    return {"mb_per_s": statistics.median(rates)}


def make(i: int) -> Any:
    import numpy

    return numpy.full(20 * 2**20 // 8, float(i))


def _big_results(manager: Any) -> dict[str, float]:
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        results = [f.result() for f in [manager.call("lib", "make", i) for i in range(20)]]
        if [float(r[0]) for r in results] != [float(i) for i in range(20)]:
            raise AssertionError("wrong results")
        rates.append(sum(r.nbytes for r in results) / 2**20 / (time.perf_counter() - started))
    return {"mb_per_s": statistics.median(rates)}


def _big_pool() -> dict[str, float]:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(total, _arrays(count=2))  # warm-up
        return _big(lambda arrays: pool.map(total, arrays, chunksize=1))


def _latency(manager: Any, n: int, gap: float = 0.0) -> dict[str, float]:
    seconds = []
    for i in range(n):
        if gap:
            time.sleep(gap)  # the instance idles before each call, as between a user's requests
        started = time.perf_counter()
        if manager.call("lib", "add", i, 1).result() != i + 1:
            raise AssertionError("wrong result")
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"p50_us": seconds[len(seconds) // 2] * 1e6, "p90_us": seconds[int(len(seconds) * 0.9)] * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="direct,fork,latd,latf")
    parser.add_argument("-n", type=int, default=20000, help="direct-mode calls per run")
    parser.add_argument("--nf", type=int, default=2000, help="fork-mode calls per run")
    parser.add_argument("--imports", default="", help="comma-separated modules the library imports")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="latency: pause this long before each call (default 0: back to back)")
    args = parser.parse_args(argv)
    imports = [m for m in args.imports.split(",") if m]
    out: dict[str, Any] = {"src": serverless.__file__}
    for what in args.what.split(","):
        if what == "bigpool":
            out[what] = _big_pool()
            continue
        mode = "direct" if what in ("direct", "latd", "bigd", "outd") else "fork"
        modules = [*imports, "numpy"] if what[:3] in ("big", "out") else imports
        with serverless.Manager() as manager:
            manager.install(serverless.Library("lib", {"add": add, "total": total, "make": make},
                                               imports=modules, mode=mode, slots=1))
            list(manager.map("lib", "add", range(200), range(200)))  # warm-up: instances up
            if what.startswith("out"):
                out[what] = _big_results(manager)
            elif what.startswith("big"):
                out[what] = _big(lambda arrays: [f.result() for f in
                                                 [manager.call("lib", "total", a) for a in arrays]])
            elif what in ("direct", "fork"):
                out[what] = _throughput(manager, args.n if what == "direct" else args.nf)
            else:
                out[what] = _latency(manager, 1000 if what == "latd" else 200, args.gap_ms / 1000)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
