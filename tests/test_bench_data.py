"""The data benchmark's smoke test: ``python -m bench.data --quick`` (a bare venv archive,
a 200 KB dataset, N=1,2, 40 calls) runs end to end and writes its figures, so the
benchmark never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_quick_data_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    env = {**os.environ, "SERVERLESS_BENCH_CACHE": str(tmp_path / "assets")}
    done = subprocess.run([sys.executable, "-m", "bench.data", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=170, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(r["system"], r["workers"]): r for r in report["runs"]}
    assert set(runs) == {("serverless", 1), ("shared-fs", 1), ("serverless", 2),
                         ("shared-fs", 2), ("serverless-warm", 1)}
    for r in runs.values():
        assert r["calls"] == 40 and len(r["first_result_s"]) == r["workers"]
        assert any(t == t for t in r["first_result_s"]), r  # NaN: a worker that got no call
    assert runs[("serverless", 2)]["env_unpacks"] == 2  # one per worker (nodes of their own)
    assert runs[("shared-fs", 2)]["env_unpacks"] == 0
    assert runs[("serverless-warm", 1)]["env_unpacks"] == 0  # the kept environment is used
