"""The command line: ``python -m bench [options]``; parses options and drives a run.

    options -> workloads + systems (absent packages skipped, with a note)
            -> runner (progress bar on stderr) -> tables and targets on stdout
            -> DIR/bench-<time>.json (every figure, machine facts) and DIR/bench-<time>.png

Exit status 1 when any result was wrong or a non-peer system failed; peers that fail
(an optional package that does not start here) are reported, not fatal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.machine import ROOT, load_average, machine_facts
from bench.report import tables, targets, targets_table, write_json
from bench.runner import Run, Settings, run_all
from bench.systems import DEFAULT_SYSTEMS, SYSTEMS, make_systems
from bench.workloads import WORKLOADS, make_workloads

__all__ = ["main", "parse"]


def _names(values: list[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the same calls through serverless, its floors, the regular way and "
                    "peers; print a table, write a JSON file and a PNG chart.",
    )
    parser.add_argument("-n", type=int, default=20_000, help="calls per throughput run (default 20000)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS),
                        help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS),
                        help=f"any of {', '.join(SYSTEMS)} (default: all but the floor-* aliases)")
    parser.add_argument("--regular-sample", type=int, default=500,
                        help="calls the regular way really runs; its full time is extrapolated (default 500)")
    parser.add_argument("--slow-n", type=int, default=5000,
                        help="calls per run for slow peers: parsl-htex, ray, dask (default 5000)")
    parser.add_argument("--latency-n", type=int, default=1000,
                        help="calls timed one at a time in the latency workload (default 1000)")
    parser.add_argument("--medium-n", type=int, default=None,
                        help="calls in the medium workload (default: N/4)")
    parser.add_argument("--medium-ms", type=float, default=1.0,
                        help="CPU milliseconds per medium call (default 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats per throughput run, median reported (default 3)")
    parser.add_argument("--repeat-budget", type=float, default=10.0,
                        help="no further repeat once a run's repeats would exceed these seconds (default 10)")
    parser.add_argument("--api", choices=("call", "map"), default="call",
                        help="serverless submits with one Manager.call per call, or one Manager.map "
                             "(default call)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="directory for the JSON and PNG (default bench/results)")
    parser.add_argument("--no-chart", action="store_true", help="write no PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.workloads = _names(args.workloads)
    args.systems = _names(args.systems)
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r} (choose from {', '.join(SYSTEMS)})")
    if args.n < 1 or args.regular_sample < 1 or args.slow_n < 1 or args.latency_n < 1:
        parser.error("call counts must be positive")
    if args.medium_n is None:
        args.medium_n = max(1, args.n // 4)
    return args


def _peer_environment() -> None:
    """Peers' worker processes load ``bench.funcs`` by reference: put this checkout on their path."""
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _peer_environment()
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    json_path = args.out / f"bench-{stamp}.json"
    png_path = args.out / f"bench-{stamp}.png"

    workloads = make_workloads(args.workloads, args.n, args.latency_n, args.medium_n, args.medium_ms)
    systems, skipped = [], {}
    for system in make_systems(args.systems, args.api):
        reason = system.unavailable()
        if reason:
            skipped[system.name] = reason
            print(f"skipping {system.name}: {reason}")
        else:
            systems.append(system)
    settings = Settings(args.regular_sample, args.slow_n, args.repeats, args.repeat_budget)
    machine = machine_facts()
    print(f"{machine['cores_usable']} cores ({machine['cpu_model']}), load {machine['load_average']}, "
          f"python {machine['python']}; {len(workloads)} workloads x {len(systems)} systems")

    document: dict[str, Any] = {
        "benchmark": "serverless bench (issue 3)",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": [sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "settings": {**asdict(settings), "n": args.n, "latency_n": args.latency_n,
                     "medium_n": args.medium_n, "medium_ms": args.medium_ms, "api": args.api},
        "machine": machine,
        "workloads": [asdict(w) for w in workloads],
        "systems": {s.name: s.description for s in systems},
        "skipped": skipped,
        "runs": [],
    }

    def save(run: Run | None = None) -> None:
        if run is not None:
            document["runs"].append(run.to_dict())
        write_json(json_path, document)

    runs = run_all(workloads, systems, settings, progress=not args.no_progress, on_run=save)
    floors = None
    if any(w.kind == "latency" for w in workloads):  # what the latencies are made of
        from bench.transport_floor import measure as measure_floors

        floors = document["transport_floors"] = measure_floors(args.latency_n)

    document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    document["seconds"] = round(time.time() - started, 1)
    document["load_average_after"] = load_average()
    found = targets(runs)
    document["targets"] = [asdict(t) for t in found]
    print()
    print(tables(runs, workloads))
    if floors:
        from bench.transport_floor import render as render_floors

        print()
        print(render_floors(floors))
    if found:
        print()
        print(targets_table(found))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    if not args.no_chart:
        try:
            from bench.chart import draw

            title = (f"serverless bench, {machine['cores_usable']} cores, "
                     f"{time.strftime('%Y-%m-%d', time.localtime(started))}")
            document["chart"] = str(draw(runs, workloads, png_path, title))
        except Exception as exc:  # a missing matplotlib must not lose the figures
            print(f"no chart: {type(exc).__name__}: {exc}")
    save()
    print(f"\nresults: {json_path}" + (f"\nchart:   {png_path}" if "chart" in document else ""))
    print(f"took {document['seconds']:.0f} s")
    failed = [r for r in runs if (r.error and not _is_peer(r, systems)) or r.correct is False]
    return 1 if failed else 0


def _is_peer(run: Run, systems: list) -> bool:
    return any(s.name == run.system and s.peer for s in systems)
