"""The PNG chart: calls/s per system for each throughput workload, and latency p50/p99.

Log scales, since the systems span four orders of magnitude. matplotlib's Agg backend, so
it needs no display. Extrapolated figures (the regular way) are hatched.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.runner import Run
from bench.workloads import Workload

__all__ = ["draw"]

COLOURS = {"serverless": "#1f77b4", "floor": "#7f7f7f", "regular": "#d62728", "peer": "#ff7f0e"}


def _colour(system: str) -> str:
    for prefix, colour in COLOURS.items():
        if system.startswith(prefix):
            return colour
    return COLOURS["peer"]


def draw(runs: list[Run], workloads: list[Workload], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [w for w in workloads if any(r.workload == w.name and not r.error for r in runs)]
    if not shown:
        raise ValueError("nothing to draw: every run failed")
    columns = 2 if len(shown) > 1 else 1
    rows = math.ceil(len(shown) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, 0.35 * 11 * rows + 0.8),
                             squeeze=False)
    for ax, workload in zip(axes.flat, shown):
        mine = [r for r in runs if r.workload == workload.name and not r.error]
        names = [r.system + ("*" if r.extrapolated else "") for r in mine]
        if workload.kind == "latency":
            p50 = [r.latency["p50"] * 1e3 for r in mine if r.latency]
            p99 = [r.latency["p99"] * 1e3 for r in mine if r.latency]
            ax.barh(names, p50, color=[_colour(r.system) for r in mine])
            ax.scatter(p99, names, marker="|", s=120, color="black", label="p99", zorder=3)
            ax.set_xlabel("ms per call, one in flight (bar: p50, tick: p99; lower is better)")
            ax.legend(loc="lower right", fontsize=7)
            values = p50
            label_at = [max(a, b) for a, b in zip(p50, p99)]
        else:
            values = [r.rate or 0 for r in mine]
            bars = ax.barh(names, values, color=[_colour(r.system) for r in mine])
            for bar, run in zip(bars, mine):
                if run.extrapolated:
                    bar.set_hatch("//")
            ax.set_xlabel("calls/s (higher is better)")
            label_at = values
        for y, (value, x) in enumerate(zip(values, label_at)):
            label = f"{value:,.0f}" if workload.kind != "latency" else f"{value:.3g} ms"
            ax.text(x * 1.15, y, " " + label, va="center", fontsize=7)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlim(right=max(values) * 8 if values else None)
        ax.set_title(f"{workload.name} (N={workload.n:,})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    if any(r.extrapolated for r in runs):
        fig.text(0.01, 0.005, "* hatched: ran a sample of the calls; rate measured on the sample",
                 fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, pil_kwargs={"optimize": True})
    plt.close(fig)
    return path
