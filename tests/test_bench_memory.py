"""python -m bench.memory with tiny N, so that it never rots (the figures: by hand)."""

from __future__ import annotations

import json

import pytest

from bench import memory


@pytest.mark.timeout(180)
def test_bench_memory_runs_and_checks_its_targets(capsys):
    assert memory.main(["-n", "30", "--ms", "0", "--modes", "direct", "--max-queued", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(lines[0])
    assert result["wrong"] == 0 and result["met"] is True and result["libraries"] >= 1
    assert lines[-1] == "targets met"
