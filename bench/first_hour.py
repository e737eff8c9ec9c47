"""``python -m bench.first_hour``: the figures behind docs/performance.md's "first hour"
section, measured side by side in one run.

1. Learned imports: a Monte-Carlo estimate of pi in numpy (``np.random.default_rng()``
   inside the function), fork mode, ``imports=["numpy"]`` with import learning on and off,
   against the right list written by hand (``["numpy", "numpy.random"]``). The three
   libraries live in one manager and are measured in alternating rounds (median of the
   rounds), after a few warm-up calls each: the first calls may pay, later ones must not.
2. ``serverless.Executor`` against ``ProcessPoolExecutor(2)`` on the same workload, with
   and without chunking.
3. Which mode, which settings: a trivial function in direct and fork mode, one and two
   slots, with and without chunking.

Each figure is calls per second (wall time of a ``map`` over N calls). The load average
before and after is printed: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import serverless

from .machine import load_average

__all__ = ["main"]


def estimate(seed: int, n: int = 2000) -> int:
    import numpy as np

    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    return int(((xy * xy).sum(axis=1) <= 1.0).sum())


def square(x: int) -> int:
    return x * x


def _rate(run, n: int) -> float:
    started = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - started)


def learned_imports(n: int, rounds: int) -> dict[str, float]:
    variants = {
        "imports=['numpy'], learning on (default)": dict(imports=["numpy"]),
        "imports=['numpy', 'numpy.random'] by hand": dict(imports=["numpy", "numpy.random"]),
        "imports=['numpy'], learn_imports=False": dict(imports=["numpy"], learn_imports=False),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with serverless.Manager(local_cores=2) as m:
        for i, (name, options) in enumerate(variants.items()):
            # 0.6 cores each: all three stay deployed (the runs are one at a time)
            m.install(serverless.Library(f"pi{i}", [estimate], slots=2, cores=0.6, **options))
            list(m.map(f"pi{i}", "estimate", range(20)))  # warm-up: the first calls pay
        for _ in range(rounds):
            for i, name in enumerate(variants):
                rates[name].append(_rate(lambda k: list(m.map(f"pi{i}", "estimate", range(k))), n))
        learned = m.learned_imports("pi0")["learned"]
    result = {name: statistics.median(values) for name, values in rates.items()}
    result["learned"] = learned  # type: ignore[assignment]
    return result


def executor_vs_pool(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(estimate, range(20)))
        for chunk in (1, 50):
            out[f"ProcessPoolExecutor(2), chunksize={chunk}"] = _rate(
                lambda k: list(pool.map(estimate, range(k), chunksize=chunk)), n)
    for mode, slots in (("fork", 2), ("direct", 2)):
        with serverless.Executor(mode=mode, slots=slots, imports=["numpy"], local_cores=2) as ex:
            list(ex.map(estimate, range(20)))
            for chunk in (1, 50):
                out[f"serverless.Executor(mode={mode!r}, slots={slots}), chunksize={chunk}"] = _rate(
                    lambda k: list(ex.map(estimate, range(k), chunksize=chunk)), n)
    return out


def modes(n_fork: int, n_direct: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with serverless.Manager(local_cores=2) as m:
        setups = [("fork, slots=1", "fork", 1, n_fork, 1), ("fork, slots=2", "fork", 2, n_fork, 1),
                  ("fork, slots=2, chunksize=50", "fork", 2, n_direct, 50),
                  ("direct, slots=1", "direct", 1, n_direct, 1),
                  ("direct, slots=2 (two instances)", "direct", 2, n_direct, 1),
                  ("direct, slots=2, chunksize=50", "direct", 2, n_direct, 50)]
        for i, (name, mode, slots, n, chunk) in enumerate(setups):
            lib = f"sq{i}"
            m.install(serverless.Library(lib, [square], mode=mode, slots=slots))
            list(m.map(lib, "square", range(50)))
            out[name] = _rate(lambda k: list(m.map(lib, "square", range(k), chunksize=chunk)), n)
            m.remove(lib)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_hour")
    parser.add_argument("-n", type=int, default=600, help="calls per pi measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures: dict[str, object] = {"load_before": load_average(), "cpus": os.cpu_count()}
    figures["learned_imports"] = learned_imports(args.n, args.rounds)
    figures["executor"] = executor_vs_pool(args.n * 2)
    figures["modes"] = modes(args.n * 2, args.n * 20)
    figures["load_after"] = load_average()
    for section in ("learned_imports", "executor", "modes"):
        print(f"\n## {section}")
        for name, value in figures[section].items():  # type: ignore[union-attr]
            print(f"| {name} | {value:,.0f} |" if isinstance(value, float) else f"| {name} | {value} |")
    li = figures["learned_imports"]
    ratio = li["imports=['numpy'], learning on (default)"] / li["imports=['numpy', 'numpy.random'] by hand"]  # type: ignore[index]
    print(f"\nlearned / by hand: {ratio:.2f}x; load average before {figures['load_before']}, "
          f"after {figures['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
