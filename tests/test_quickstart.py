"""The README's main job (examples/quickstart.py) runs, with a small N, so it never rots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_the_quick_start_runs_and_reports_both_modes():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "200"],
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr
    assert "predict (with setup state) work" in done.stdout
    assert "200 calls, fork mode:" in done.stdout and "200 calls, direct mode:" in done.stdout
