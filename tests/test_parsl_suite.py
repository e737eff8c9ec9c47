"""A bounded part of Parsl's own test suite, run against ServerlessExecutor.

The full run (python apps and error handling) and its exclusions are in docs/parsl.md;
this runs a few of those modules in a child pytest so that our suite notices if a change
breaks what Parsl itself expects of an executor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("parsl")

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "parsl.tests.test_python_apps.test_basic",
    "parsl.tests.test_python_apps.test_dependencies",
    "parsl.tests.test_python_apps.test_exception",
    "parsl.tests.test_python_apps.test_futures",
    "parsl.tests.test_python_apps.test_join",
    "parsl.tests.test_error_handling.test_retries",
    "parsl.tests.test_error_handling.test_python_walltime",
]


@pytest.mark.timeout(170)
def test_parsl_suite_subset(tmp_path):
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-p", "tests.parsl_suite_config", "--timeout", "60",
        "--pyargs", *MODULES, "--config", str(ROOT / "tests" / "parsl_suite_config.py"),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=160)
    summary = done.stdout.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary[0] and "failed" not in summary[0], summary
