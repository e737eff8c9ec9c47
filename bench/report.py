"""The terminal tables, the targets of issue 3 checked against a run, and the JSON file.

Ratios in the throughput table, for each system::

    vs fork floor / vs direct floor   its calls/s divided by the floor's (same workload, same run)
    fork / this, direct / this        serverless fork's (direct's) calls/s divided by its:
                                      how many times faster serverless is (> 1) or slower (< 1)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.runner import Run
from bench.workloads import Workload

__all__ = ["Target", "targets", "tables", "write_json"]


@dataclass
class Target:
    what: str
    goal: str
    measured: str
    met: bool


def _rate(runs: list[Run], workload: str, system: str) -> float | None:
    for run in runs:
        if run.workload == workload and run.system == system and run.rate and not run.error:
            return run.rate
    return None


def _latency(runs: list[Run], system: str) -> dict[str, float] | None:
    for run in runs:
        if run.kind == "latency" and run.system == system and run.latency and not run.error:
            return run.latency
    return None


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    value = a / b
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _status(run: Run) -> str:
    if run.error:
        return "ERROR"
    return "ok" if run.correct else "WRONG"


def throughput_table(runs: list[Run], workload: Workload) -> str:
    mine = [r for r in runs if r.workload == workload.name]
    fork_floor = _rate(runs, workload.name, "floor-fork")
    direct_floor = _rate(runs, workload.name, "floor-direct")
    fork = _rate(runs, workload.name, "serverless-fork")
    direct = _rate(runs, workload.name, "serverless-direct")
    rows, notes = [], []
    for run in mine:
        name = run.system + ("*" if run.extrapolated else "")
        if run.error:
            rows.append([name, f"{run.n:,}", "-", "-", "-", "-", "-", "-", "-", "ERROR"])
            continue
        seconds = f"{run.seconds:.2f}"
        if run.extrapolated:
            seconds += f" (~{run.full_seconds:,.0f} for {run.full_n:,})"
        spread = ""
        if len(run.repeats) > 1:
            spread = f"{min(run.repeats):.2f}-{max(run.repeats):.2f}"
        rows.append([name, f"{run.n:,}", seconds, spread or "1 run", f"{run.rate:,.0f}",
                     _ratio(run.rate, fork_floor), _ratio(run.rate, direct_floor),
                     _ratio(fork, run.rate), _ratio(direct, run.rate), _status(run)])
        if run.extrapolated:
            notes.append(f"* {run.system}: ran a sample of {run.n:,} of {run.full_n:,} calls; "
                         f"the time for {run.full_n:,} is extrapolated from its rate.")
    header = ["system", "calls", "seconds (median)", "repeats", "calls/s", "vs fork floor",
              "vs direct floor", "fork/this", "direct/this", "check"]
    title = f"{workload.name}: {workload.description} (N = {workload.n:,})"
    return "\n".join([title, _table(header, rows), *notes])


def latency_table(runs: list[Run], workload: Workload) -> str:
    rows = []
    for run in (r for r in runs if r.workload == workload.name):
        if run.error or not run.latency:
            rows.append([run.system, f"{run.n:,}", "-", "-", "-", "-", "ERROR"])
            continue
        lat = run.latency
        rows.append([run.system, f"{run.n:,}", _seconds(lat["p50"]), _seconds(lat["p90"]),
                     _seconds(lat["p99"]), _seconds(lat["mean"]), _status(run)])
    header = ["system", "calls", "p50", "p90", "p99", "mean", "check"]
    return "\n".join([f"{workload.name}: {workload.description}", _table(header, rows)])


def tables(runs: list[Run], workloads: list[Workload]) -> str:
    parts = []
    for workload in workloads:
        if workload.kind == "latency":
            parts.append(latency_table(runs, workload))
        else:
            parts.append(throughput_table(runs, workload))
    parts.append("fork/this, direct/this: serverless fork's (direct's) calls/s over this "
                 "system's (> 1: serverless is faster).")
    return "\n\n".join(parts)


def targets(runs: list[Run]) -> list[Target]:
    """The targets of issue 3 that this run measured, met or not."""
    found: list[Target] = []

    def ratio_target(what: str, a: float | None, b: float | None, goal: float) -> None:
        if a and b:
            found.append(Target(what, f">= {goal:g}x", f"{a / b:.3g}x", a / b >= goal))

    for workload in ("trivial", "numpy_pandas"):
        ratio_target(f"fork mode / fork floor ({workload})",
                     _rate(runs, workload, "serverless-fork"), _rate(runs, workload, "floor-fork"), 0.8)
    direct = _rate(runs, "trivial", "serverless-direct")
    if direct:
        found.append(Target("direct mode calls/s (trivial)", ">= 30,000", f"{direct:,.0f}",
                            direct >= 30_000))
    ratio_target("direct mode / mp-pool (trivial)", direct, _rate(runs, "trivial", "mp-pool"), 0.8)
    for peer in ("ray", "dask", "parsl-htex"):
        for mode in ("fork", "direct"):
            for workload in ("trivial", "numpy_pandas"):
                ratio_target(f"{mode} mode / {peer} ({workload})",
                             _rate(runs, workload, f"serverless-{mode}"),
                             _rate(runs, workload, peer), 1.0)
    ratio_target("fork mode / regular (numpy_pandas)",
                 _rate(runs, "numpy_pandas", "serverless-fork"),
                 _rate(runs, "numpy_pandas", "regular"), 40)
    for mode, goal in (("direct", 100e-6), ("fork", 2.5e-3)):
        lat = _latency(runs, f"serverless-{mode}")
        if lat:
            found.append(Target(f"{mode} mode latency p50 (numpy+pandas library)",
                                f"<= {_seconds(goal)}", _seconds(lat["p50"]), lat["p50"] <= goal))
    return found


def targets_table(found: Iterable[Target]) -> str:
    rows = [[t.what, t.goal, t.measured, "met" if t.met else "MISSED"] for t in found]
    if not rows:
        return ""
    return "targets (issue 3)\n" + _table(["target", "goal", "measured", ""], rows)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(document, indent=1, default=str))
    tmp.replace(path)
