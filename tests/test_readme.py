"""The README's examples run as written (and the quick start in direct mode too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_no_descendants

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=170, cwd=tmp_path, env={**os.environ})


def _block(marker: str) -> str:
    (block,) = [b for b in BLOCKS if marker in b]
    return block


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_the_library_quick_start_runs(tmp_path, mode):
    code = _block('serverless.Library("math"').replace('mode="fork"', f'mode="{mode}"')
    assert f'mode="{mode}"' in code
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_the_executor_quick_start_runs(tmp_path, mode):
    code = _block("serverless.Executor(mode=").replace('mode="fork"', f'mode="{mode}"')
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    estimate, positive = done.stdout.split()
    assert abs(float(estimate) - 3.14159) < 0.01 and positive == "True"


@pytest.mark.timeout(180)
def test_the_parsl_example_runs_and_cleans_up(tmp_path):
    pytest.importorskip("parsl")
    done = _run(_block("with parsl.load(config)"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "3"
    assert_no_descendants()
