"""The benchmark's own smoke test (issue 3): tiny N through every system installed for
tests (floors, the regular way, serverless fork and direct, multiprocessing.Pool), so the
benchmark never rots. Peers that need optional packages (Parsl, Ray, Dask) are not run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ sits beside the package, not in it; plain `pytest` needs this
    sys.path.insert(0, str(ROOT))

from bench.report import tables, targets  # noqa: E402
from bench.runner import Run, Settings, calls_for, percentile  # noqa: E402
from bench.systems import make_systems  # noqa: E402
from bench.workloads import make_workloads  # noqa: E402

SYSTEMS = ["regular", "floor", "serverless-fork", "serverless-direct", "mp-pool"]
HAS_PANDAS = all(importlib.util.find_spec(m) for m in ("numpy", "pandas"))
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
# the numpy+pandas library needs both installed (the bench extra); without them the rest still runs
WORKLOADS = ["trivial", "numpy_pandas", "latency", "medium"] if HAS_PANDAS else ["trivial", "medium"]


@pytest.mark.timeout(120)
def test_bench_runs_every_default_system_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "bench", "-n", "60", "--regular-sample", "2", "--latency-n", "10",
        "--medium-n", "20", "--medium-ms", "0.2", "--repeats", "1", "--no-progress",
        "--workloads", *WORKLOADS, "--systems", *SYSTEMS, "--out", str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr

    [json_path] = out.glob("bench-*.json")
    document = json.loads(json_path.read_text())
    assert document["machine"]["cores_usable"] >= 1
    assert document["machine"]["load_average"] is not None
    assert "serverless" in document["machine"]["versions"]
    ran = {(r["workload"], r["system"]): r for r in document["runs"]}
    expected_systems = ["regular", "floor-fork", "floor-direct", "serverless-fork",
                        "serverless-direct", "mp-pool"]
    for workload in WORKLOADS:
        for system in expected_systems:
            run = ran[(workload, system)]
            assert run["error"] is None, run
            assert run["correct"] is True, run
            assert run["rate"] > 0
    assert ran[("trivial", "regular")]["extrapolated"] is True
    assert ran[("trivial", "regular")]["n"] == 2
    assert ran[("trivial", "serverless-fork")]["facts"]["library_processes"] >= 1
    assert ran[("trivial", "floor-fork")]["facts"]["cpu_us_per_call"]["children"] > 0
    assert document["targets"], "the targets of issue 3 are evaluated"
    assert "calls/s" in done.stdout
    if HAS_PANDAS:
        assert ran[("latency", "serverless-direct")]["latency"]["p50"] > 0
        assert "p50" in done.stdout
        floors = document["transport_floors"]  # what a latency is made of, same run
        assert set(floors) == {"thread", "pipe", "socketpair", "zmq_tcp", "chain"}
        assert all(f["p50_us"] > 0 for f in floors.values())
        assert "transport floors" in done.stdout
    if HAS_MATPLOTLIB:
        assert (out / json_path.name.replace(".json", ".png")).stat().st_size > 1000


def _run(workload: str, system: str, rate: float, n: int = 100, full_n: int = 100) -> Run:
    run = Run(workload, system, "throughput", n, full_n, repeats=[n / rate], seconds=n / rate,
              rate=rate, extrapolated=n < full_n, full_seconds=full_n / rate, correct=True)
    return run


def test_report_extrapolates_and_checks_targets() -> None:
    [workload] = make_workloads(["trivial"], 1000, 10, 10, 1.0)
    runs = [_run("trivial", "regular", 50, 10, 1000), _run("trivial", "floor-fork", 1000),
            _run("trivial", "serverless-fork", 900), _run("trivial", "serverless-direct", 40_000),
            _run("trivial", "mp-pool", 45_000)]
    text = tables(runs, [workload])
    assert "regular*" in text and "extrapolated" in text and "~20 for 1,000" in text
    found = {t.what: t for t in targets(runs)}
    assert found["fork mode / fork floor (trivial)"].met
    assert found["direct mode calls/s (trivial)"].met
    assert found["direct mode / mp-pool (trivial)"].met


def test_sample_sizes_and_percentiles() -> None:
    settings = Settings(regular_sample=5, slow_n=7)
    throughput, latency = make_workloads(["trivial", "latency"], 100, 50, 10, 1.0)
    regular, ray, floor_fork, _ = make_systems(["regular", "ray", "floor"])
    assert calls_for(regular, throughput, settings) == 5
    assert calls_for(regular, latency, settings) == 5
    assert calls_for(ray, throughput, settings) == 7
    assert calls_for(floor_fork, throughput, settings) == 100
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)


def test_unknown_system_is_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--systems", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown system" in done.stderr
