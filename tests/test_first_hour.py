"""No surprises for a new user: the public namespace, a port in use, direct mode in the
quick start, a hand-started worker's messages and connect timeout, temporary directories
that do not pile up. Real processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import serverless
from conftest import FAST, start_worker
from serverless.tempdirs import prune_runs, run_directory, runs_parent

pytestmark = pytest.mark.timeout(120)


def add(x, y):
    return x + y


def test_dir_lists_only_the_public_api():
    assert dir(serverless) == sorted(serverless.__all__)
    for name in serverless.__all__:
        assert getattr(serverless, name) is not None
    assert "Executor" in serverless.__all__
    assert not [n for n in serverless.__all__ if n.startswith("_")]


def test_a_port_in_use_raises_our_typed_error(tmp_path):
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "a", **FAST) as first:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(serverless.AddressInUse, match=f"127.0.0.1:{port}.*in use"):
            serverless.Manager(port=port, local_workers=0, log_dir=tmp_path / "b", **FAST)
    assert issubclass(serverless.AddressInUse, serverless.ServerlessError)


def test_the_quick_start_in_direct_mode_just_works(tmp_path):
    # the README's quick start with mode="direct" (slots=2 there means two instances)
    lib = serverless.Library("math", [add], mode="direct", slots=2)
    assert lib.slots == 1 and lib.max_instances == 2
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        assert m.call("math", "add", 1, 2).result() == 3
        assert list(m.map("math", "add", [1, 2], [10, 20])) == [11, 22]


def _read_until(proc: subprocess.Popen, text: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line.decode(errors="replace")
    return seen


def test_a_hand_started_worker_says_where_it_writes_and_that_it_connected(tmp_path):
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST) as m:
        args = ["--cores", "1", "--workdir", str(tmp_path / "w")]
        if m.secret_file is not None:
            args += ["--secret-file", str(m.secret_file)]
        worker = start_worker(m.address, *args)  # default log level
        try:
            said = _read_until(worker, "connected to the manager")
            assert f"library logs in {tmp_path / 'w'}" in said
            assert f"connected to the manager at {m.address}" in said
        finally:
            worker.terminate()
            worker.wait(30)


def test_a_worker_gives_up_on_an_address_nobody_serves():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "serverless.worker", f"127.0.0.1:{port}",
                          "--connect-timeout", "3", "--insecure"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 5
    assert f"could not reach the manager at 127.0.0.1:{port} within" in out.stderr
    assert time.monotonic() - started < 30


def test_worker_default_connect_timeout_is_finite():
    from serverless.worker.cli import build_parser

    assert 0 < build_parser().parse_args(["h:1"]).connect_timeout <= 120


def test_old_runs_are_pruned_and_the_latest_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    parent = runs_parent()
    parent.mkdir(mode=0o700)
    dead_pid = 2 ** 22 + 12345  # above pid_max: never alive
    old = []
    for n in range(3):
        d = parent / f"manager-{dead_pid + n}-x{n}"
        d.mkdir()
        os.utime(d, (1000 + n, 1000 + n))
        old.append(d)
    alive = parent / f"manager-{os.getpid()}-mine"
    alive.mkdir()
    new = run_directory("manager")
    assert new.parent == parent and new.exists()
    assert not old[0].exists() and not old[1].exists()
    assert old[2].exists()  # the latest finished run stays, for debugging
    assert alive.exists()  # a live process's run is never touched
    assert prune_runs(parent) == []


def test_managers_write_under_the_per_user_parent(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with serverless.Manager(local_workers=0, **FAST) as m:
        assert m.log_dir.parent == runs_parent()
        assert m.log_dir.name.startswith(f"manager-{os.getpid()}-")
