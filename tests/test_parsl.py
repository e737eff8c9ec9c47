"""ServerlessExecutor under a real Parsl DataFlowKernel, workers launched by LocalProvider.

Each DFK is built directly (``DataFlowKernel(config)``) and apps are bound to it, so no
global Parsl state is shared between tests.
"""

from __future__ import annotations

import fractions  # noqa: F401  (the app below refers to it through its globals)
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

parsl = pytest.importorskip("parsl")

import psutil  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.dataflow.dflow import DataFlowKernel  # noqa: E402
from parsl.dataflow.errors import DependencyError  # noqa: E402
from parsl.executors.errors import InvalidResourceSpecification  # noqa: E402
from parsl.providers import LocalProvider  # noqa: E402

from serverless.parsl import ServerlessExecutor  # noqa: E402
from serverless.parsl.apps import function_key  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def make_dfk(run_dir: Path, mode: str = "serverless", provider: bool = True,
             init_blocks: int = 1, manager_options: dict | None = None,
             **config_options) -> DataFlowKernel:
    executor = ServerlessExecutor(
        label="serverless", function_exec_mode=mode, cores_per_node=2,
        provider=(LocalProvider(init_blocks=init_blocks, min_blocks=0, max_blocks=1)
                  if provider else None),
        manager_options=dict(heartbeat_interval=0.2, heartbeat_timeout=5.0,
                             **(manager_options or {})),
    )
    config = Config(executors=[executor], run_dir=str(run_dir), strategy_period=0.2,
                    retries=2, usage_tracking=0, initialize_logging=False, **config_options)
    return DataFlowKernel(config)


def worker_tree(dfk: DataFlowKernel) -> dict[psutil.Process, str]:
    """The executor's workers and every live process under them, now, with their titles."""
    procs = {}
    for info in dfk.executors["serverless"].manager.workers():
        try:
            root = psutil.Process(info.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in found:
            try:
                procs[proc] = " ".join(proc.cmdline())
            except psutil.Error:  # exited (or a zombie) since it was listed
                pass
    return procs


def wait_for_workers(dfk: DataFlowKernel, count: int = 1, timeout: float = 60) -> None:
    executor = dfk.executors["serverless"]
    deadline = time.monotonic() + timeout
    while executor.connected_workers < count:
        assert time.monotonic() < deadline, "no worker connected"
        time.sleep(0.05)  # waiting for an external process (the provider's block) to connect


@pytest.fixture(scope="module")
def dfk(tmp_path_factory) -> Iterator[DataFlowKernel]:
    kernel = make_dfk(tmp_path_factory.mktemp("runinfo"))
    yield kernel
    kernel.cleanup()


def app(dfk: DataFlowKernel, kind: str = "python"):
    make = {"python": parsl.python_app, "bash": parsl.bash_app, "join": parsl.join_app}[kind]
    if kind == "join":  # join apps always run in the DFK's own internal executor
        return lambda fn: make(fn, data_flow_kernel=dfk)
    return lambda fn: make(fn, data_flow_kernel=dfk, executors=["serverless"])


# --- the apps -------------------------------------------------------------------------

def add(x, y):
    return x + y


def half(x):
    return fractions.Fraction(x, 2)  # fractions reached through the module's globals


def hoisted():
    import sys

    loaded = "json" in sys.modules  # imported by the library before any call?
    import json

    return loaded and json.dumps([1]) == "[1]"


def where(parsl_resource_specification=None):
    import sys

    return os.getpid(), "serverless.worker.fork_executor" in sys.modules


def parsl_loaded(parsl_resource_specification=None):
    import sys

    return "parsl" in sys.modules


def fails(x):
    raise ValueError(f"bad input {x}")


def flaky(counter_file, succeed_on):
    path = Path(counter_file)
    tries = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(tries))
    if tries < succeed_on:
        raise RuntimeError(f"try {tries} fails")
    return tries


def echo(text, stdout=None):
    return f"echo {text}"


def with_spec(parsl_resource_specification=None):
    return os.environ.get("OMP_NUM_THREADS")


# --- serverless mode ------------------------------------------------------------------

def test_chain_of_apps_with_futures_as_arguments(dfk):
    add_app = app(dfk)(add)
    total = add_app(add_app(1, 2), add_app(add_app(3, 4), 5))
    assert total.result() == 15
    assert [f.result() for f in [add_app(i, i) for i in range(100)]] == [2 * i for i in range(100)]


def test_each_app_is_one_library_installed_once_with_imports_hoisted(dfk):
    executor = dfk.executors["serverless"]
    half_app, hoisted_app = app(dfk)(half), app(dfk)(hoisted)
    assert [half_app(i).result() for i in range(3)] == [0, fractions.Fraction(1, 2), 1]
    assert hoisted_app().result() is True
    names = [n for n in executor.libraries() if n.startswith(("parsl-half", "parsl-hoisted"))]
    assert len(names) == 2, executor.libraries()
    # every call of one app goes to its library; nothing is installed again
    for _ in range(5):
        half_app(1).result()
    assert len([n for n in executor.libraries() if n.startswith("parsl-half")]) == 1


def test_fork_mode_runs_each_call_in_a_fresh_child_of_a_warm_library(dfk):
    where_app = app(dfk)(where)
    results = [where_app().result() for _ in range(4)]
    assert len({pid for pid, _ in results}) == 4
    assert all(in_library for _, in_library in results)


def test_a_plain_python_apps_library_does_not_import_parsl(dfk):
    from parsl.app.errors import wrap_error
    from parsl.app.python import timeout

    from serverless.parsl.apps import strip_wrap_error

    assert strip_wrap_error(wrap_error(add)) is add
    assert strip_wrap_error(add) is add
    walltime = timeout(wrap_error(add), 5.0)  # needs Parsl's AppTimeout: kept whole
    assert strip_wrap_error(walltime) is walltime
    bash = app(dfk, "bash")(echo).wrapped_remote_function  # wrap_error around a partial
    assert strip_wrap_error(bash) is bash
    loaded_app = app(dfk)(parsl_loaded)
    assert [loaded_app().result() for _ in range(3)] == [False] * 3
    assert loaded_app(parsl_resource_specification={"exec_mode": "regular"}).result() is False


def test_retry_handler_sees_the_apps_own_exception(tmp_path):
    seen = []

    def handler(exc, task_record):
        seen.append(type(exc))
        return 1

    kernel = make_dfk(tmp_path, provider=False, retry_handler=handler)
    try:
        with pytest.raises(ValueError, match="bad input 3"):
            app(kernel)(fails)(3).result()
    finally:
        kernel.cleanup()
    assert seen == [ValueError] * 3  # retries=2: three tries, each the app's ValueError


def test_app_exception_is_the_apps_own_with_remote_traceback(dfk):
    future = app(dfk)(fails)(7)
    with pytest.raises(ValueError, match="bad input 7") as info:
        future.result()
    text = "".join(__import__("traceback").format_exception(info.value))
    assert "in fails" in text and 'raise ValueError(f"bad input {x}")' in text
    assert future.task_record["fail_count"] == 3  # retries=2: tried three times


def test_parsl_retries_rerun_a_failing_app(dfk, tmp_path):
    counter = tmp_path / "tries"
    assert app(dfk)(flaky)(str(counter), 3).result() == 3


def test_dependency_failure_reaches_dependents(dfk):
    failed = app(dfk)(fails)(1)
    dependent = app(dfk)(add)(failed, 1)
    with pytest.raises(DependencyError):
        dependent.result()


def test_bash_app(dfk, tmp_path):
    out = tmp_path / "echo.out"
    assert app(dfk, "bash")(echo)("hello", stdout=str(out)).result() == 0
    assert out.read_text().strip() == "hello"


def test_join_app_combines_apps_on_the_executor(dfk):
    add_app = app(dfk)(add)

    def total(n):
        futures = [add_app(i, 0) for i in range(n)]
        return add_app(add_app(futures[0], futures[1]), futures[2])

    assert app(dfk, "join")(total)(3).result() == 3


def test_resource_specification_cores_memory_and_mode(dfk):
    spec_app = app(dfk)(with_spec)
    assert spec_app(parsl_resource_specification={"cores": 2, "memory": 100}).result() == "2"
    assert spec_app(parsl_resource_specification={}).result() == "1"
    where_app = app(dfk)(where)
    pid, in_library = where_app(parsl_resource_specification={"exec_mode": "regular"}).result()
    assert not in_library  # ran in a fresh interpreter
    assert where_app().result()[1]


@pytest.mark.parametrize("spec, word", [({"gpus": 1}, "gpus"), ({"cores": 0}, "cores"),
                                        ({"exec_mode": "htex"}, "exec_mode"),
                                        ({"priority": 1}, "submission order")])
def test_unsupported_resource_specification_is_refused(dfk, spec, word):
    future = app(dfk)(with_spec)(parsl_resource_specification=spec)
    with pytest.raises(InvalidResourceSpecification, match=word):
        future.result()


def add_within(x, y, walltime=None):
    return x + y


def test_walltime_wrappers_share_the_apps_library(dfk):
    from parsl.app.python import timeout

    def f():
        return 1

    assert function_key(timeout(f, 2.0)) == function_key(timeout(f, 2.0))
    assert function_key(timeout(f, 2.0)) != function_key(timeout(f, 3.0))
    assert function_key(add) != function_key(half)
    executor = dfk.executors["serverless"]
    add_app = app(dfk)(add_within)
    before = len(executor.libraries())
    assert [add_app(i, 1, walltime=30).result() for i in range(3)] == [1, 2, 3]
    assert len(executor.libraries()) <= before + 1


# --- regular mode, no provider, shutdown ------------------------------------------------

def test_regular_mode_runs_each_call_in_a_fresh_interpreter(tmp_path):
    kernel = make_dfk(tmp_path / "runinfo", mode="regular")
    try:
        add_app, where_app = app(kernel)(add), app(kernel)(where)
        assert add_app(add_app(1, 2), 3).result() == 6
        results = [where_app().result() for _ in range(2)]
        assert not any(in_library for _, in_library in results)
        with pytest.raises(ValueError, match="bad input 2"):
            app(kernel)(fails)(2).result()
        pid, in_library = where_app(parsl_resource_specification={"exec_mode": "serverless"}
                                    ).result()
        assert in_library
    finally:
        kernel.cleanup()


def test_without_a_provider_the_manager_starts_a_local_worker(tmp_path):
    kernel = make_dfk(tmp_path / "runinfo", provider=False)
    try:
        assert app(kernel)(add)(20, 22).result() == 42
        assert kernel.executors["serverless"].connected_workers == 1
    finally:
        kernel.cleanup()


def test_parsl_strategy_scales_blocks_out_for_calls_and_in_when_idle(tmp_path):
    kernel = make_dfk(tmp_path / "runinfo", init_blocks=0, strategy="simple", max_idletime=1.0)
    executor = kernel.executors["serverless"]
    try:
        assert executor.connected_workers == 0 and not executor.blocks_to_job_id
        assert app(kernel)(add)(1, 2).result() == 3  # no block: the strategy starts one
        assert len(executor.blocks_to_job_id) == 1
        deadline = time.monotonic() + 60
        while executor.connected_workers:  # idle for max_idletime: the block is scaled in
            assert time.monotonic() < deadline, "the idle block was not scaled in"
            time.sleep(0.1)  # waiting for Parsl's strategy thread and the worker's exit
        assert app(kernel)(add)(2, 3).result() == 5  # and out again
    finally:
        kernel.cleanup()


def test_cleanup_leaves_no_worker_or_library_process(tmp_path):
    kernel = make_dfk(tmp_path / "runinfo")
    add_app, where_app = app(kernel)(add), app(kernel)(where)
    assert add_app(1, 1).result() == 2 and where_app().result()[1]
    wait_for_workers(kernel)
    procs = worker_tree(kernel)
    titles = " ".join(procs.values())
    assert "serverless worker block-0" in titles and "serverless library parsl-add" in titles
    kernel.cleanup()
    gone, alive = psutil.wait_procs(list(procs), timeout=20)
    assert not alive, [p.cmdline() for p in alive]


def test_launch_command_carries_address_cores_and_secret_file(tmp_path):
    class ManagerWithSecret:  # what the manager exposes to the launch command, and no more
        address = "10.0.0.5:9123"
        secret_file = tmp_path / "secret"

    executor = ServerlessExecutor(cores_per_node=8, memory_per_node=4000,
                                  worker_command="serverless-worker", provider=LocalProvider())
    executor.run_dir = str(tmp_path)
    executor.manager = ManagerWithSecret()
    command = executor._get_launch_command("3")
    assert command.startswith("serverless-worker 10.0.0.5:9123 --cores 8.0 --memory 4000 ")
    assert f"--secret-file {tmp_path / 'secret'}" in command and "block-3" in command
    assert executor.workers_per_node == 8
    ManagerWithSecret.secret_file = None
    assert "--secret-file" not in executor._get_launch_command("4")


def test_workers_launched_by_the_provider_read_the_managers_secret_file(tmp_path):
    secret_file = tmp_path / "secret"
    kernel = make_dfk(tmp_path / "runinfo", manager_options={"secret_file": secret_file})
    try:
        executor = kernel.executors["serverless"]
        assert f"--secret-file {secret_file}" in executor._get_launch_command("9")
        assert app(kernel)(add)(4, 5).result() == 9
        assert executor.connected_workers == 1
    finally:
        kernel.cleanup()


def test_importing_serverless_does_not_import_parsl():
    code = "import sys, serverless, serverless.parsl; assert 'parsl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_provider_workers_get_a_generated_secret_without_the_user_doing_anything(tmp_path):
    kernel = make_dfk(tmp_path / "runinfo")  # a LocalProvider, no secret in the options
    secret_file = None
    try:
        executor = kernel.executors["serverless"]
        secret_file = executor.manager.secret_file
        assert secret_file is not None and secret_file.is_relative_to(tmp_path / "runinfo")
        assert (secret_file.stat().st_mode & 0o777) == 0o600
        assert (secret_file.parent.stat().st_mode & 0o777) == 0o700
        command = executor._get_launch_command("7")
        assert f"--secret-file {secret_file}" in command and "--insecure" not in command
        assert app(kernel)(add)(2, 3).result() == 5  # the provider's worker used it
        assert executor.connected_workers == 1
    finally:
        kernel.cleanup()
    assert secret_file is not None and not secret_file.exists()  # removed at shutdown
