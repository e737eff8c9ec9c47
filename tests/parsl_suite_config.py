"""Run Parsl's own test suite (``parsl/tests``) against ServerlessExecutor.

This file plays two parts:

* ``--config tests/parsl_suite_config.py``: Parsl's suite loads it and calls
  :func:`fresh_config` for its DataFlowKernel.
* ``-p tests.parsl_suite_config``: a pytest plugin that brings in Parsl's suite conftest
  (``parsl.tests.conftest``: the ``--config`` option, the DFK fixtures, the markers). That
  conftest's ``pytest_ignore_collect(path)`` uses an argument pytest 9 removed, so it cannot
  be loaded as it is; this plugin takes every other hook and fixture from it and supplies
  that one hook in today's form.

From the repository root (the exact command and the exclusions are in docs/parsl.md)::

    .venv/bin/python -m pytest -p no:cacheprovider -p tests.parsl_suite_config \\
        --pyargs parsl.tests.test_python_apps parsl.tests.test_error_handling \\
        --config tests/parsl_suite_config.py

``SERVERLESS_PARSL_MODE=regular`` runs the suite in regular mode instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from parsl.config import Config
from parsl.providers import LocalProvider
from parsl.tests.conftest import (  # noqa: F401  (hooks and fixtures of Parsl's suite)
    assert_no_outstanding_tasks,
    load_dfk_local_module,
    load_dfk_session,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_make_collect_report,
    pytest_sessionstart,
    randomstring,
    setup_data,
    tmpd_cwd,
    tmpd_cwd_session,
    try_assert,
)

from serverless.parsl import ServerlessExecutor


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Parsl's suite skips its integration and manual tests, which need real clusters."""
    if {"integration", "manual_tests"} & set(collection_path.parts):
        return True
    return None


def fresh_config() -> Config:
    return Config(
        executors=[ServerlessExecutor(
            label="serverless",
            function_exec_mode=os.environ.get("SERVERLESS_PARSL_MODE", "serverless"),
            provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
        )],
        strategy_period=0.5,
        usage_tracking=0,
    )
