"""ServerlessExecutor(environment=...): Parsl apps run in a packed environment, in both modes.

A real DataFlowKernel, its worker started by LocalProvider, and a bare venv archive (an
interpreter and nothing else: no Parsl, no serverless, no cloudpickle).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

parsl = pytest.importorskip("parsl")

from parsl.config import Config  # noqa: E402
from parsl.dataflow.dflow import DataFlowKernel  # noqa: E402
from parsl.providers import LocalProvider  # noqa: E402

from serverless.parsl import ServerlessExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def where():
    import os
    import sys
    return sys.prefix, os.getpid()


def add(x, y):
    return x + y


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], check=True)
    with tarfile.open(base / "venv.tar.gz", "w:gz") as tar:
        for entry in sorted((base / "venv").iterdir()):
            tar.add(entry, arcname=entry.name)
    return base / "venv.tar.gz"


@pytest.mark.parametrize("mode", ["serverless", "regular"])
def test_apps_run_in_the_executors_environment(tmp_path, archive, mode, monkeypatch):
    env_dir = tmp_path / "envs"
    monkeypatch.setenv("SERVERLESS_ENV_DIR", str(env_dir))  # the provider's worker inherits it
    executor = ServerlessExecutor(
        label="serverless", function_exec_mode=mode, cores_per_node=2, environment=archive,
        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
        manager_options=dict(heartbeat_interval=0.2, heartbeat_timeout=5.0),
    )
    config = Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), strategy_period=0.2,
                    usage_tracking=0, initialize_logging=False)
    kernel = DataFlowKernel(config)
    try:
        where_app = parsl.python_app(where, data_flow_kernel=kernel, executors=["serverless"])
        add_app = parsl.python_app(add, data_flow_kernel=kernel, executors=["serverless"])
        assert add_app(add_app(1, 2), 3).result(timeout=90) == 6
        prefix, pid = where_app().result(timeout=90)
        assert prefix == str(env_dir / executor.environment.id)
    finally:
        kernel.cleanup()
    assert len((env_dir / "unpack.log").read_text().splitlines()) == 1
