"""Fork hygiene in the library process: buffered output is not repeated by children, a
call's child gets a fresh interpreter's signal dispositions."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import serverless

from conftest import FAST


def _setup_that_prints():
    print("SETUP-MARK")  # no flush: stdout is a log file, block-buffered
    return None


def _echo(x):
    return x


def test_output_printed_before_forking_is_not_repeated_by_children(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the libraries inherit it
    (tmp_path / "noisy_module.py").write_text("print('IMPORT-MARK')\n")
    lib = serverless.Library("noisy", [_echo], imports=["noisy_module"], setup=_setup_that_prints,
                             env={"PYTHONPATH": str(tmp_path)}, slots=1, discover=False)
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        assert [m.call("noisy", "_echo", i).result(timeout=60) for i in range(8)] == list(range(8))
    logs = list((tmp_path / "logs" / "worker-0").glob("noisy-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.count("IMPORT-MARK") == 1, text
    assert text.count("SETUP-MARK") == 1, text


def _sigint_in_a_call():
    handler_is_default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    status = subprocess.run(["grep", "-E", "SigBlk|SigIgn", "/proc/self/status"],
                            capture_output=True, text=True, check=True).stdout
    masks = [int(line.split()[1], 16) for line in status.splitlines()]  # blocked, ignored
    program_ignores_sigint = any(mask & (1 << (signal.SIGINT - 1)) for mask in masks)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    return handler_is_default, program_ignores_sigint, interrupted


def test_a_call_s_child_has_the_default_sigint_handler(manager):
    manager.install(serverless.Library("sig", [_sigint_in_a_call], slots=1))
    for _ in range(2):  # a spare child, then a child forked for the call
        assert manager.call("sig", "_sigint_in_a_call").result(timeout=60) == (True, False, True)


def _setup_that_starts_a_thread():
    import threading

    stop = threading.Event()
    threading.Thread(target=stop.wait, name="background-poller", daemon=True).start()
    return stop


def test_a_library_that_forks_with_other_threads_is_reported_once(tmp_path):
    lib = serverless.Library("threaded", [_echo], setup=_setup_that_starts_a_thread, slots=1)
    plain = serverless.Library("plain", [_echo], slots=1)
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        m.install(plain)
        assert [m.call("threaded", "_echo", i).result(timeout=60) for i in range(5)] == list(range(5))
        assert [m.call("plain", "_echo", i).result(timeout=60) for i in range(5)] == list(range(5))
        deadline = time.monotonic() + 30
        while not m.warnings() and time.monotonic() < deadline:
            time.sleep(0.01)
        warnings = m.warnings()
    assert len(warnings) == 1, warnings
    assert "'threaded'" in warnings[0] and "2 threads when it forks" in warnings[0]
    assert "background-poller" in warnings[0] and "OPENBLAS_NUM_THREADS=1" in warnings[0]
    log_text = next((tmp_path / "logs" / "worker-0").glob("threaded-*.log")).read_text()
    assert log_text.count("threads when it forks") == 1
