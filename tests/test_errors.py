"""Every way a call can go wrong ends its future with a clear, typed error."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import serverless

pytestmark = pytest.mark.timeout(120)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("this exception refuses to be pickled")


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def fail(kind):
    if kind == "value":
        raise ValueError("bad value 42")
    if kind == "unpicklable":
        raise Unpicklable("cannot travel")
    if kind == "exit":
        raise SystemExit(3)
    if kind == "two-args":
        raise NeedsTwoArgs(1, 2)
    return "fine"


def crash(how):
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif how == "exit":
        os._exit(7)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def bad_result():
    return threading.Lock()


MODES = ["fork", "direct"]


@pytest.fixture(scope="module")
def m(shared_manager):
    for mode in MODES:
        shared_manager.install(serverless.Library(f"fail-{mode}", [fail, bad_result], mode=mode))
    shared_manager.install(serverless.Library("crash", [crash], slots=2))
    return shared_manager


@pytest.mark.parametrize("mode", MODES)
def test_raised_exception_comes_back_as_itself_with_the_remote_traceback(m, mode):
    future = m.call(f"fail-{mode}", "fail", "value")
    with pytest.raises(ValueError, match="bad value 42") as info:
        future.result()
    cause = info.value.__cause__
    assert isinstance(cause, serverless.RemoteTraceback)
    assert "in fail" in str(cause) and 'raise ValueError("bad value 42")' in str(cause)


@pytest.mark.parametrize("mode", MODES)
def test_the_instance_survives_a_raising_call(m, mode):
    with pytest.raises(ValueError):
        m.call(f"fail-{mode}", "fail", "value").result()
    assert m.call(f"fail-{mode}", "fail", "no").result() == "fine"


@pytest.mark.parametrize("mode", MODES)
def test_unpicklable_exception_becomes_function_error(m, mode):
    with pytest.raises(serverless.FunctionError) as info:
        m.call(f"fail-{mode}", "fail", "unpicklable").result()
    assert info.value.type_name.endswith("Unpicklable")
    assert "cannot travel" in str(info.value)
    assert "raise Unpicklable" in info.value.remote_traceback


@pytest.mark.parametrize("mode", MODES)
def test_exception_that_does_not_unpickle_becomes_function_error(m, mode):
    with pytest.raises(serverless.FunctionError, match="NeedsTwoArgs"):
        m.call(f"fail-{mode}", "fail", "two-args").result()


@pytest.mark.parametrize("mode", MODES)
def test_system_exit_in_a_call_only_fails_that_call(m, mode):
    with pytest.raises(SystemExit):
        m.call(f"fail-{mode}", "fail", "exit").result()
    assert m.call(f"fail-{mode}", "fail", "no").result() == "fine"


@pytest.mark.parametrize("mode", MODES)
def test_unpicklable_result(m, mode):
    with pytest.raises(serverless.ResultNotSerializable, match="lock"):
        m.call(f"fail-{mode}", "bad_result").result()


@pytest.mark.parametrize("how, exit_code", [("segfault", -signal.SIGSEGV), ("exit", 7),
                                            ("kill", -signal.SIGKILL)])
def test_a_crashing_child_fails_its_call_and_the_instance_lives_on(m, how, exit_code):
    with pytest.raises(serverless.CallCrashed) as info:
        m.call("crash", "crash", how).result()
    assert info.value.exit_code == exit_code
    if exit_code < 0:
        assert signal.Signals(-exit_code).name in str(info.value)
    assert m.call("crash", "crash", "no").result() == "survived"


def test_unknown_library_and_function_raise_at_once(m):
    with pytest.raises(serverless.UnknownLibrary, match="nope"):
        m.call("nope", "fail", 1)
    with pytest.raises(serverless.UnknownFunction, match="missing"):
        m.call("fail-fork", "missing")


def test_unpicklable_argument_raises_at_once(m):
    with pytest.raises(serverless.ArgumentNotSerializable):
        m.call("fail-fork", "fail", threading.Lock())


def test_all_errors_derive_from_serverless_error():
    for name in serverless.__all__:
        value = getattr(serverless, name)
        if isinstance(value, type) and issubclass(value, Exception) and value is not serverless.RemoteTraceback:
            assert issubclass(value, serverless.ServerlessError), name


def never_returns(fifo):
    open(fifo).read()  # nobody ever writes


def test_shutdown_fails_unfinished_calls_with_manager_closed(tmp_path):
    fifo = str(tmp_path / "never")
    os.mkfifo(fifo)
    m = serverless.Manager(local_cores=1, log_dir=tmp_path / "logs")
    m.install(serverless.Library("stuck", [never_returns]))
    futures = [m.call("stuck", "never_returns", fifo) for _ in range(3)]
    m.shutdown(cancel_futures=True)
    for future in futures:
        with pytest.raises(serverless.ManagerClosed):
            future.result(timeout=10)
    with pytest.raises(serverless.ManagerClosed):
        m.call("stuck", "never_returns", fifo)


def broken_setup():
    raise RuntimeError("the model file is missing")


def test_a_library_whose_setup_fails_fails_its_calls_with_the_traceback(tmp_path):
    with serverless.Manager(local_cores=1, log_dir=tmp_path, start_backoff=0.01,
                            max_start_failures=2) as m:
        m.install(serverless.Library("broken", [fail], setup=broken_setup))
        with pytest.raises(serverless.LibraryFailed) as info:
            m.call("broken", "fail", "no").result()
        assert "the model file is missing" in str(info.value)
        assert "broken_setup" in info.value.remote_traceback
        with pytest.raises(serverless.LibraryFailed):  # later calls fail fast too
            m.call("broken", "fail", "no").result()


def test_a_missing_import_fails_the_library(tmp_path):
    with serverless.Manager(local_cores=1, log_dir=tmp_path, start_backoff=0.01,
                            max_start_failures=1) as m:
        m.install(serverless.Library("noimport", [fail], imports=["no_such_module_xyz"]))
        with pytest.raises(serverless.LibraryFailed, match="no_such_module_xyz"):
            m.call("noimport", "fail", "no").result()


def test_cancel_a_queued_call(tmp_path):
    fifo = str(tmp_path / "block")
    os.mkfifo(fifo)
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs") as m:
        m.install(serverless.Library("block", [never_returns, fail], max_instances=1))
        running = m.call("block", "never_returns", fifo)
        queued = m.call("block", "fail", "no")
        assert queued.cancel() and queued.cancelled()
        assert m.cancel(running)  # kills the child that runs it
        assert running.cancelled()
        assert m.call("block", "fail", "no").result(timeout=30) == "fine"
