"""Faults injected for real: workers and libraries killed or frozen, the manager killed,
calls that never return, calls that eat memory, BLAS threads. Every future still resolves:
its value, or a typed error that says what happened.

Real managers, ``serverless-worker`` processes and libraries on loopback; no mocks. Waits
are bounded polls of a condition (tests/faultkit.py), never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import serverless
from faultkit import (
    FAST_HEARTBEAT,
    WOKEN_EXITS,
    assert_gone,
    become_subreaper,
    libraries_of,
    start_node,
    tree,
    wait_until,
)
from serverless.worker.agent import EXIT_MANAGER_LOST, EXIT_OK

pytestmark = pytest.mark.timeout(120)


# --- functions the libraries serve (they travel by value) -----------------------------

def hold(x, gate_dir):
    """Return ``(x, node, library pid)``; on a node with a ``hold-NODE`` file, first say so
    (``started-NODE-PID``) and wait for the file to go away."""
    node = os.environ.get("SERVERLESS_TEST_NODE", "local")
    gate = os.path.join(gate_dir, f"hold-{node}")
    if os.path.exists(gate):
        open(os.path.join(gate_dir, f"started-{node}-{os.getpid()}"), "w").close()
        while os.path.exists(gate):
            time.sleep(0.01)
    return (x, node, os.getppid())


def kill_my_worker(marker_dir):
    """SIGKILL the worker agent this call runs under (fork mode: child -> library -> agent)."""
    import psutil

    open(os.path.join(marker_dir, f"ran-{os.getpid()}"), "w").close()
    os.kill(psutil.Process(os.getppid()).ppid(), signal.SIGKILL)
    time.sleep(60)


def block(marker_dir):
    """Say where we run (``running-PID``), then never return."""
    open(os.path.join(marker_dir, f"running-{os.getpid()}"), "w").close()
    while True:
        time.sleep(1)


def echo(*args, **kwargs):
    return args, kwargs


def allocate(mb, marker_dir=None):
    """Hold ``mb`` MB of touched memory, 8 MB at a time; with ``marker_dir``, then never return."""
    chunks = [b"x" * (8 << 20) for _ in range(mb // 8)]
    if marker_dir is not None:
        open(os.path.join(marker_dir, f"allocated-{os.getpid()}"), "w").close()
        while True:
            time.sleep(1)
    return sum(len(c) for c in chunks) >> 20


def crash_direct(how):
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    return how


# --- workers killed or frozen ---------------------------------------------------------

def started_on(tmp_path, node: str) -> list:
    return sorted(tmp_path.glob(f"started-{node}-*"))


def test_a_killed_worker_s_calls_run_again_elsewhere(tmp_path):
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST_HEARTBEAT) as m:
        m.install(serverless.Library("hold", [hold]))
        (tmp_path / "hold-A").touch()
        a = start_node(m.address, "A", tmp_path / "A", secret_file=m.secret_file)
        futures = [m.call("hold", "hold", i, str(tmp_path)) for i in range(6)]
        wait_until(lambda: started_on(tmp_path, "A"), what="a call running on A")
        a_tree = tree(a.pid)
        b = start_node(m.address, "B", tmp_path / "B", secret_file=m.secret_file)
        wait_until(lambda: len(m.workers()) == 2, what="B registered")
        a.send_signal(signal.SIGKILL)
        results = [f.result(timeout=60) for f in futures]
        assert [r[:2] for r in results] == [(i, "B") for i in range(6)]
        assert [w.pid for w in m.workers()] == [b.pid]
        assert_gone(a_tree)  # its library and the call's child died with it
        b_tree = tree(b.pid)
    assert b.wait(timeout=30) == EXIT_OK
    assert_gone(b_tree)


def test_a_frozen_worker_is_written_off_and_told_to_go_when_it_wakes(tmp_path):
    """SIGSTOP: the manager hears nothing for heartbeat_timeout, declares the worker lost
    and runs its calls elsewhere. SIGCONT after that: the calls it held finish there too,
    but their results are not taken (each future keeps the one result it got), and the
    worker, told to go while it slept, exits with its libraries."""
    timeout = FAST_HEARTBEAT["heartbeat_timeout"]
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST_HEARTBEAT) as m:
        m.install(serverless.Library("hold", [hold]))
        (tmp_path / "hold-A").touch()
        a = start_node(m.address, "A", tmp_path / "A", secret_file=m.secret_file)
        futures = [m.call("hold", "hold", i, str(tmp_path)) for i in range(4)]
        wait_until(lambda: started_on(tmp_path, "A"), what="a call running on A")
        b = start_node(m.address, "B", tmp_path / "B", secret_file=m.secret_file)
        wait_until(lambda: len(m.workers()) == 2, what="B registered")
        a_tree = tree(a.pid)
        a_calls = [p for p in a_tree if p.ppid() in {lib.pid for lib in libraries_of(a.pid)}]
        assert a_calls, "the call A runs should be a child of A's library"
        a_info = next(w for w in m.workers() if w.pid == a.pid)
        a.send_signal(signal.SIGSTOP)
        try:
            results = [f.result(timeout=60) for f in futures]
            # a call A held could only run again once A was written off, a full heartbeat
            # timeout after the manager last heard from it (which may be a little before
            # the freeze: its last heartbeat)
            assert time.monotonic() - a_info.last_heard >= timeout
            assert [r[:2] for r in results] == [(i, "B") for i in range(4)]
            assert [w.pid for w in m.workers()] == [b.pid]
            # let A's calls finish while A sleeps: their results wait in its socket
            (tmp_path / "hold-A").unlink()
            assert_gone(a_calls)
        finally:
            a.send_signal(signal.SIGCONT)
        assert a.wait(timeout=30) in WOKEN_EXITS  # told to go, or saw the silence first
        assert_gone(a_tree)
        assert [f.result(timeout=0) for f in futures] == results  # one result per call
        more = [m.call("hold", "hold", i, str(tmp_path)) for i in range(10)]
        assert [f.result(timeout=60)[:2] for f in more] == [(i, "B") for i in range(10)]
        assert [w.pid for w in m.workers()] == [b.pid]


def test_past_max_retries_a_call_fails_with_worker_lost(tmp_path):
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", max_retries=1,
                            **FAST_HEARTBEAT) as m:
        m.install(serverless.Library("killer", [kill_my_worker]))
        workers = [start_node(m.address, name, tmp_path / name, secret_file=m.secret_file) for name in "AB"]
        wait_until(lambda: len(m.workers()) == 2, what="two workers")
        trees = [p for w in workers for p in tree(w.pid)]
        future = m.call("killer", "kill_my_worker", str(tmp_path))
        with pytest.raises(serverless.WorkerLost, match="max_retries=1") as info:
            future.result(timeout=60)
        assert "lost" in str(info.value)
        assert len(list(tmp_path.glob("ran-*"))) == 2  # the first run and one retry
        assert [w.wait(timeout=30) for w in workers] == [-signal.SIGKILL] * 2
        assert_gone(trees + [p for w in workers for p in tree(w.pid)])


# --- library processes killed or failing ---------------------------------------------

def test_a_killed_library_is_replaced_and_its_calls_run_again(tmp_path):
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", **FAST_HEARTBEAT) as m:
        m.install(serverless.Library("hold", [hold], slots=1))
        (tmp_path / "hold-local").touch()
        futures = [m.call("hold", "hold", i, str(tmp_path)) for i in range(5)]
        marker = wait_until(lambda: started_on(tmp_path, "local"), what="a call running")[0]
        child = psutil.Process(int(marker.name.rsplit("-", 1)[1]))
        library = psutil.Process(child.ppid())
        library.send_signal(signal.SIGKILL)
        assert_gone([child])  # the running call's child dies with its library
        (tmp_path / "hold-local").unlink()
        results = [f.result(timeout=60) for f in futures]
        assert [r[:2] for r in results] == [(i, "local") for i in range(5)]
        assert library.pid not in {r[2] for r in results}  # a new instance ran them all
        procs = tree(m.local_worker_pids()[0])
    assert_gone(procs)


def direct_crash_library() -> serverless.Library:
    return serverless.Library("crashy", [crash_direct], mode="direct")


def test_a_direct_mode_call_that_crashes_its_instance_fails_alone(tmp_path):
    """In direct mode a segfault takes the instance with it: the call that was running
    fails at once as CallCrashed naming the signal (it is the call's crash, not a lost
    worker: no retry); the calls queued with it run on a new instance."""
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", max_retries=2,
                            **FAST_HEARTBEAT) as m:
        m.install(direct_crash_library())
        poison = m.call("crashy", "crash_direct", "segfault")
        innocent = [m.call("crashy", "crash_direct", f"ok-{i}") for i in range(5)]
        with pytest.raises(serverless.CallCrashed, match="SIGSEGV"):
            poison.result(timeout=60)
        assert [f.result(timeout=60) for f in innocent] == [f"ok-{i}" for i in range(5)]
        assert m.call("crashy", "crash_direct", "again").result(timeout=60) == "again"
        deploys = sorted((tmp_path / "logs" / "worker-0").glob("crashy-*.log"))
        assert len(deploys) == 2  # the one it crashed and its replacement


def count_and_fail(log_path):
    with open(log_path, "a") as f:
        f.write(f"{time.monotonic()}\n")
    raise RuntimeError("the model file is missing")


@pytest.mark.parametrize("why", ["setup", "import"])
def test_a_library_that_cannot_start_fails_its_calls_after_a_few_spaced_attempts(tmp_path, why):
    attempts_log = tmp_path / "attempts"
    backoff, max_failures = 0.3, 3
    if why == "setup":
        library = serverless.Library("broken", [echo],
                                     setup=lambda: count_and_fail(str(attempts_log)))
        expected = "the model file is missing"
    else:
        library = serverless.Library("broken", [echo], imports=["no_such_module_xyz"])
        expected = "no_such_module_xyz"
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", max_start_failures=max_failures,
                            heartbeat_interval=0.2, heartbeat_timeout=2.0,
                            start_backoff=backoff) as m:
        m.install(library)
        futures = [m.call("broken", "echo", i) for i in range(10)]
        for future in futures:
            with pytest.raises(serverless.LibraryFailed, match=expected) as info:
                future.result(timeout=60)
        assert f"failed to start {max_failures} times" in str(info.value)
        assert "Traceback" in info.value.remote_traceback
        assert expected in info.value.remote_traceback
        with pytest.raises(serverless.LibraryFailed):  # later calls fail at once, no deploy
            m.call("broken", "echo", 0).result(timeout=30)
        instance_logs = tmp_path / "logs" / "worker-0"
    assert len(list(instance_logs.glob("broken-*.log"))) == max_failures  # deploys, counted
    if why == "setup":
        starts = [float(line) for line in attempts_log.read_text().split()]
        assert len(starts) == max_failures
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        tick = FAST_HEARTBEAT["heartbeat_interval"] / 2  # the manager's clock resolution
        assert gaps[0] >= backoff - tick and gaps[1] >= 2 * backoff - tick, gaps


# --- the manager dies -----------------------------------------------------------------

MANAGER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import serverless

    def block(marker_dir):
        open(os.path.join(marker_dir, f"running-{os.getpid()}"), "w").close()
        while True:
            time.sleep(1)

    m = serverless.Manager(local_cores=1, log_dir=sys.argv[1] + "/logs",
                           secret_file=sys.argv[1] + "/secret",
                           heartbeat_interval=0.2, heartbeat_timeout=2.0)
    m.install(serverless.Library("block", [block]))
    print(m.address, flush=True)
    while len(m.workers()) < 2:  # the local worker and the one the test starts
        time.sleep(0.02)
    futures = [m.call("block", "block", sys.argv[1]) for _ in range(12)]
    sys.stdin.read()  # until the test kills us
""")


def test_when_the_manager_dies_workers_stop_their_libraries_and_exit(tmp_path):
    script = tmp_path / "manager_main.py"
    script.write_text(MANAGER_SCRIPT)
    become_subreaper()  # orphans come to us: we can see that they exit and reap them
    try:
        manager = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        remote = None
        try:
            address = manager.stdout.readline().strip()
            assert address, "the manager script did not start"
            remote = start_node(address, "remote", tmp_path / "remote",
                                secret_file=tmp_path / "secret")
            # a call runs under each worker: the local one and the remote one
            wait_until(lambda: len(list(tmp_path.glob("running-*"))) == 2, what="two calls running")
            procs = tree(manager.pid) + tree(remote.pid)
            assert len(procs) == 1 + 3 + 3  # manager; worker, library, call child twice
            manager.send_signal(signal.SIGKILL)
            assert manager.wait(timeout=30) == -signal.SIGKILL
            assert remote.wait(timeout=30) == EXIT_MANAGER_LOST  # heartbeats stopped
            assert_gone(procs, timeout=30)
        finally:
            for proc in (manager, remote):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            manager.stdin.close()
            manager.stdout.close()
    finally:
        become_subreaper(False)


def test_shutdown_fails_running_and_queued_calls_and_kills_their_children(tmp_path):
    """shutdown(timeout=...) with calls still running: each future fails with
    ManagerClosed (none stays pending), and the children running them are killed."""
    m = serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", **FAST_HEARTBEAT)
    m.install(serverless.Library("block", [block], slots=1))
    futures = [m.call("block", "block", str(tmp_path)) for _ in range(3)]
    child = running_child(tmp_path)
    procs = tree(m.local_worker_pids()[0])
    m.shutdown(timeout=0.2)
    for future in futures:
        with pytest.raises(serverless.ManagerClosed):
            future.result(timeout=0)
    assert_gone(procs + [child])


# --- calls that never return ----------------------------------------------------------

def running_child(tmp_path) -> psutil.Process:
    marker = wait_until(lambda: sorted(tmp_path.glob("running-*")), what="the call running")[0]
    marker.unlink()
    return psutil.Process(int(marker.name.split("-")[1]))


def test_a_library_timeout_kills_the_call_s_child(manager, tmp_path):
    manager.install(serverless.Library("slow", [block, echo], timeout=0.5, max_instances=1))
    future = manager.call("slow", "block", str(tmp_path))
    child = running_child(tmp_path)
    with pytest.raises(serverless.CallTimeout, match="0.5 s"):
        future.result(timeout=60)
    assert_gone([child])
    assert manager.call("slow", "echo", 1).result(timeout=30) == ((1,), {})


def test_a_per_call_timeout_overrides_the_library_s_and_timeout_kwargs_reach_the_function(
        manager, tmp_path):
    manager.install(serverless.Library("calls", [block, echo], max_instances=1))
    future = manager.submit("calls", "block", (str(tmp_path),), timeout=0.5)
    child = running_child(tmp_path)
    with pytest.raises(serverless.CallTimeout):
        future.result(timeout=60)
    assert_gone([child])
    # call() passes every keyword to the function, ``timeout`` included
    assert manager.call("calls", "echo", 1, timeout=5).result(timeout=30) == ((1,), {"timeout": 5})
    assert manager.submit("calls", "echo", (1,), {"timeout": 5}, timeout=30).result(
        timeout=30) == ((1,), {"timeout": 5})


def whose():
    return os.getpid()


def test_a_direct_mode_timeout_interrupts_the_call_and_the_instance_serves_on(manager, tmp_path):
    manager.install(serverless.Library("slow-direct", [block, whose], mode="direct",
                                       timeout=0.5, max_instances=1))
    library = manager.call("slow-direct", "whose").result(timeout=60)
    with pytest.raises(serverless.CallTimeout, match="0.5 s"):
        manager.call("slow-direct", "block", str(tmp_path)).result(timeout=60)
    assert running_child(tmp_path).pid == library  # it ran in the instance itself
    assert manager.call("slow-direct", "whose").result(timeout=30) == library  # same instance


@pytest.mark.parametrize("how", ["future.cancel", "manager.cancel"])
def test_cancelling_a_running_call_kills_its_child(manager, tmp_path, how):
    manager.install(serverless.Library("cancel", [block, echo], max_instances=1))
    future = manager.call("cancel", "block", str(tmp_path))
    child = running_child(tmp_path)
    assert (future.cancel() if how == "future.cancel" else manager.cancel(future))
    assert future.cancelled()
    assert_gone([child])
    assert manager.call("cancel", "echo", 2).result(timeout=30) == ((2,), {})


# --- resource limits ------------------------------------------------------------------

def test_a_call_over_its_memory_share_is_killed_with_call_out_of_memory(manager, tmp_path):
    # numpy makes the library itself ~40 MB: only what a call adds counts against its share
    manager.install(serverless.Library("mem", [allocate], imports=["numpy"], memory_mb=120,
                                       slots=2, max_instances=1))
    assert manager.call("mem", "allocate", 40).result(timeout=60) == 40
    greedy = manager.call("mem", "allocate", 400, str(tmp_path))
    with pytest.raises(serverless.CallOutOfMemory, match="60 MB"):
        greedy.result(timeout=60)
    assert not list(tmp_path.glob("allocated-*")), "the call should not get its 400 MB"
    assert [f.result(timeout=60) for f in
            [manager.call("mem", "allocate", 40) for _ in range(4)]] == [40] * 4


def blas_threads():
    """What numpy's BLAS sees inside a call: the thread variables and OpenBLAS's count."""
    import ctypes

    import numpy  # noqa: F401  (loads its OpenBLAS)

    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    seen = {name: os.environ.get(name) for name in names}
    counts = set()
    for path in {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}:
        library = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                       "openblas_get_num_threads"):
            getter = getattr(library, symbol, None)
            if getter is not None:
                counts.add(getter())
                break
    return seen, sorted(counts)


@pytest.mark.parametrize("cores, slots, share", [(2, 2, 1), (2, 1, 2)])
def test_blas_threads_are_limited_to_a_slot_s_share_of_cores(tmp_path, monkeypatch, cores, slots, share):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "64")  # a node-wide setting must not win over the share
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST_HEARTBEAT) as m:
        m.install(serverless.Library("blas", [blas_threads], imports=["numpy"],
                                     cores=cores, slots=slots))
        seen, counts = m.call("blas", "blas_threads").result(timeout=60)
    assert set(seen.values()) == {str(share)}
    assert counts == [share]
