"""Every future ends, and is seen to end, whatever the interleaving with shutdown().

Real managers on 127.0.0.1. The stress test races call/map/cancel in several threads
against shutdown() in another, many times over; the others each take one way the loop
can end (shutdown, an exception inside it, a result that cannot be unpickled, a
done-callback that shuts down or submits) and check that no future stays pending,
that later calls raise ManagerClosed, and that nothing is left behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import serverless

from conftest import FAST, assert_all_exited, tree_of

pytestmark = pytest.mark.timeout(120)

BOUND = 20.0  # seconds: every future must have ended this long after shutdown() returned


def add(x, y):
    return x + y


def _race_once(m: serverless.Manager, rng: random.Random, wait: bool) -> list[cf.Future]:
    futures: list[cf.Future] = []
    lock = threading.Lock()
    go = threading.Event()

    def caller(seed: int) -> None:
        r = random.Random(seed)
        go.wait()
        try:
            for i in range(200):
                what = r.random()
                if what < 0.6:
                    f = m.call("adder", "add", i, 1)
                    with lock:
                        futures.append(f)
                elif what < 0.8:
                    it = m.map("adder", "add", range(5), range(5))
                    # map() submitted its calls; consuming is optional (a generator)
                    if r.random() < 0.5:
                        try:
                            list(it)
                        except (serverless.ManagerClosed, cf.CancelledError):
                            pass
                else:
                    with lock:
                        victim = r.choice(futures) if futures else None
                    if victim is not None:
                        victim.cancel()
        except serverless.ManagerClosed:
            pass  # refused at once: fine, nothing was queued

    threads = [threading.Thread(target=caller, args=(rng.random(),)) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(rng.random() * 0.02)
    m.shutdown(wait=wait, cancel_futures=not wait, timeout=5)
    for t in threads:
        t.join(BOUND)
        assert not t.is_alive(), "a caller thread is stuck"
    with pytest.raises(serverless.ManagerClosed):
        m.call("adder", "add", 1, 2)
    return futures


def test_call_map_cancel_racing_shutdown_never_leave_a_future_pending(tmp_path) -> None:
    rng = random.Random(2026)
    started = time.monotonic()
    rounds = 0
    # without workers (cheap managers, many rounds): calls queue and shutdown fails them
    for _ in range(50):
        m = serverless.Manager(local_workers=0, log_dir=tmp_path / f"l{rounds}", **FAST)
        m.install(serverless.Library("adder", [add], mode="direct"))
        futures = _race_once(m, rng, wait=False)
        done, pending = cf.wait(futures, timeout=BOUND)
        assert not pending, f"round {rounds}: {len(pending)} futures never ended"
        assert all(f.cancelled() or isinstance(f.exception(), serverless.ManagerClosed)
                   for f in futures)
        rounds += 1
    # with a real worker: some calls run and return, the rest fail or are cancelled
    for wait in (True, False, True):
        m = serverless.Manager(local_cores=2, log_dir=tmp_path / f"l{rounds}", **FAST)
        m.install(serverless.Library("adder", [add], mode="direct"))
        assert m.call("adder", "add", 1, 2).result(timeout=60) == 3
        procs = tree_of(m)
        futures = _race_once(m, rng, wait=wait)
        done, pending = cf.wait(futures, timeout=BOUND)
        assert not pending, f"round {rounds}: {len(pending)} futures never ended"
        for f in futures:
            assert f.cancelled() or f.exception() is None or isinstance(
                f.exception(), serverless.ManagerClosed)
        assert_all_exited(procs)
        rounds += 1
    assert time.monotonic() - started < 60


def test_cancelled_calls_are_counted_by_wait_and_as_completed(manager) -> None:
    manager.install(serverless.Library("adder", [add]))
    gate = [manager.call("adder", "add", i, 0) for i in range(3)]
    extra = manager.call("adder", "add", 5, 5)
    assert extra.cancel() or extra.done()
    done, not_done = cf.wait([*gate, extra], timeout=60)
    assert not not_done and extra in done
    assert len(list(cf.as_completed([*gate, extra], timeout=60))) == 4


def test_the_loop_failing_fails_every_call_and_later_calls_raise(tmp_path) -> None:
    m = serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST)
    m.install(serverless.Library("adder", [add]))
    queued = m.call("adder", "add", 1, 2)

    def broken_tick(now: float):
        raise SystemExit("a bug inside the loop")  # a BaseException, not an Exception

    m._loop.scheduler.tick = broken_tick  # fault injection: the next tick ends the loop
    with pytest.raises(serverless.ManagerClosed, match="loop failed"):
        queued.result(timeout=30)
    assert m._loop.join(30)
    with pytest.raises(serverless.ManagerClosed):
        m.call("adder", "add", 1, 2)
    started = time.monotonic()
    m.shutdown()
    assert time.monotonic() - started < 5


class ExitsWhenUnpickled:
    def __reduce__(self):
        return (sys.exit, ("unpickling this result exits",))


def exits_at_the_caller():
    return ExitsWhenUnpickled()


def test_a_result_whose_unpickling_raises_base_exception_fails_only_its_call(manager) -> None:
    manager.install(serverless.Library("odd", [exits_at_the_caller, add], mode="direct"))
    with pytest.raises(serverless.ResultNotSerializable, match="SystemExit"):
        manager.call("odd", "exits_at_the_caller").result(timeout=60)
    assert manager.call("odd", "add", 2, 3).result(timeout=60) == 5


def test_done_callbacks_may_submit_and_shut_down_without_deadlock(tmp_path) -> None:
    m = serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST)
    m.install(serverless.Library("adder", [add], mode="direct"))
    procs = tree_of(m)
    chained: list[cf.Future] = []
    threads: list[str] = []
    closed = threading.Event()

    def submit_next(f: cf.Future) -> None:  # as Parsl's DataFlowKernel does
        threads.append(threading.current_thread().name)
        chained.append(m.call("adder", "add", f.result(), 1))
        chained[-1].add_done_callback(shut_down)

    def shut_down(f: cf.Future) -> None:
        m.install(serverless.Library("other", [add]))  # install from a callback too
        m.shutdown()  # waits for calls still running: must not wait for itself
        closed.set()

    m.call("adder", "add", 1, 1).add_done_callback(submit_next)
    assert closed.wait(60), "shutdown() from a done-callback did not return"
    assert chained[0].result(timeout=1) == 3
    assert threads and "serverless-manager" not in threads
    with pytest.raises(serverless.ManagerClosed):
        m.call("adder", "add", 1, 2)
    assert_all_exited(procs)


SCRIPT = textwrap.dedent("""
    import sys, serverless

    def add(x, y):
        return x + y

    def sleep(seconds):
        import time
        time.sleep(seconds)

    m = serverless.Manager(local_cores=1, log_dir=sys.argv[1], heartbeat_interval=0.2)
    m.install(serverless.Library("math", [add, sleep]))
    assert m.call("math", "add", 1, 2).result() == 3
    m.call("math", "sleep", 600)  # still running at exit
    print(m.local_worker_pids()[0], flush=True)
    # no shutdown(), no with-block: the script just ends
""")


def test_a_script_that_never_calls_shutdown_exits_at_once_leaving_nothing(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "logs")],
                         capture_output=True, text=True, timeout=90)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    worker_pid = int(run.stdout.split()[0])
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == \
        psutil.STATUS_ZOMBIE, "the local worker outlived the script"
    # start-up, one call and a clean stop; the running call is not waited for
    assert elapsed < 45, f"took {elapsed:.1f} s"


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _temporary_entries() -> set[str]:
    """What the temporary directory holds, the per-user parent of runs' directories
    included (serverless.tempdirs); the parent itself may be made on the way."""
    import tempfile

    from serverless.tempdirs import runs_parent

    parent = runs_parent()
    inside = {f"{parent.name}/{name}" for name in os.listdir(parent)} if parent.is_dir() else set()
    return (set(os.listdir(tempfile.gettempdir())) - {parent.name}) | inside


def test_a_constructor_that_fails_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    import tempfile

    # a temporary directory of its own: other programs on the machine use the shared one
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "first") as first:
        port = int(first.address.rsplit(":", 1)[1])
        temp = _temporary_entries()
        threads, fds = _threads(), _fds()
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        for options in (dict(port=port), dict(port=port, secret=True),
                        dict(port=port, local_workers=1)):
            with pytest.raises(Exception):  # noqa: B017  # the port is in use
                serverless.Manager(**options)
        with pytest.raises((TypeError, ValueError)):
            serverless.Manager(heartbeat_interval=-1)
        with pytest.raises(TypeError):
            serverless.Manager(no_such_option=1)
        assert _temporary_entries() == temp  # no log or secret directory
        assert _threads() == threads  # no loop thread, no zmq I/O thread
        assert _fds() == fds  # no socket, pipe or context descriptor
        assert {p.pid for p in psutil.Process().children(recursive=True)} == children


def test_a_manager_dropped_inside_a_done_callback_stops_without_deadlock(tmp_path) -> None:
    """The last reference goes in a callback: the manager is collected on whichever thread
    runs it, so its clean-up must not join the loop (a __del__ that joined deadlocked when
    that thread was the loop itself)."""
    def start() -> tuple[cf.Future, list[psutil.Process]]:
        m = serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", **FAST)
        m.install(serverless.Library("adder", [add], mode="direct"))
        assert m.call("adder", "add", 1, 1).result(timeout=60) == 2
        procs = tree_of(m)
        holder = [m]
        future = m.call("adder", "add", 2, 2)
        future.add_done_callback(lambda f: holder.clear())  # drops the last reference
        return future, procs

    before = {t.ident for t in threading.enumerate() if t.name == "serverless-manager"}
    future, procs = start()
    assert future.result(timeout=60) == 4
    deadline = time.monotonic() + BOUND
    while {t.ident for t in threading.enumerate() if t.name == "serverless-manager"} - before:
        assert time.monotonic() < deadline, "the dropped manager's loop never ended"
        time.sleep(0.05)
    assert_all_exited(procs)
