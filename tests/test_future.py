"""CallFuture: a real concurrent.futures.Future whose condition is made only when needed.

These drive the class directly (it is the object users hold), including the races the
lazy condition must survive: a waiter arriving while the manager loop settles the future.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

from serverless.manager.future import CallFuture


def wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def make(call_id: int = 1, on_cancel=None) -> CallFuture:
    return CallFuture(call_id, "lib", "f", on_cancel)


@pytest.mark.timeout(10)
def test_settled_future_reads_without_a_condition() -> None:
    future = make()
    future._finish(42)
    assert future.done() and not future.cancelled() and not future.running()
    assert future.result() == 42 and future.exception() is None
    assert "_lazy_condition" not in future.__dict__  # nobody waited: none was made
    assert isinstance(future, cf.Future)


@pytest.mark.timeout(10)
def test_error_is_raised_and_returned() -> None:
    future = make()
    future._finish(error=ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        future.result()
    assert isinstance(future.exception(), ValueError)


@pytest.mark.timeout(10)
def test_waiting_thread_is_woken_by_settle() -> None:
    future = make()
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.append(future.result(timeout=5)))
    waiting.start()
    future._condition  # the waiter may not have made it yet; make sure one exists  # noqa: B018
    future._finish("value")
    waiting.join(5)
    assert got == ["value"]


@pytest.mark.timeout(30)
def test_settle_races_waiters_without_losing_a_wakeup() -> None:
    for round_ in range(300):
        future = make(round_)
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(future.result(timeout=5)))
        waiter.start()
        future._finish(round_)
        waiter.join(5)
        assert got == [round_]


@pytest.mark.timeout(10)
def test_callbacks_wait_and_as_completed() -> None:
    futures = [make(i) for i in range(4)]
    seen: list[int] = []
    futures[0].add_done_callback(lambda f: seen.append(f.result()))
    futures[0]._finish(0)
    futures[1]._finish(1)
    futures[2].add_done_callback(lambda f: seen.append(f.result()))
    done, not_done = cf.wait(futures, timeout=0)
    assert done == set(futures[:2]) and not_done == set(futures[2:])
    releaser = threading.Thread(target=lambda: (futures[2]._finish(2), futures[3]._finish(3)))
    releaser.start()
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=5)) == [0, 1, 2, 3]
    releaser.join(5)
    wait_for(lambda: len(seen) == 2)  # callbacks run on the callback thread
    assert seen == [0, 2]
    late: list[int] = []
    futures[3].add_done_callback(lambda f: late.append(f.result()))
    assert late == [3]


@pytest.mark.timeout(10)
def test_cancel_pending_and_finished() -> None:
    told: list[CallFuture] = []
    future = make(on_cancel=told.append)
    assert future.cancel() and future.cancelled() and told == [future]
    future._finish("too late")  # the result of a cancelled call is dropped
    assert future.cancelled()
    with pytest.raises(cf.CancelledError):
        future.result()
    finished = make(on_cancel=told.append)
    finished._finish(1)
    assert not finished.cancel() and told == [future]
    assert finished.result() == 1


@pytest.mark.timeout(10)
def test_cancelled_future_is_seen_done_by_wait_and_as_completed() -> None:
    futures = [make(i) for i in range(3)]
    assert futures[0].cancel()  # before anyone waits
    done, not_done = cf.wait(futures, timeout=0)
    assert done == {futures[0]} and not_done == set(futures[1:])
    # cancelled while a waiter is installed: wait() and as_completed() must wake for it
    canceller = threading.Thread(target=lambda: (futures[1].cancel(), futures[2]._finish(2)))
    seen = []
    timer = threading.Timer(0.05, canceller.start)
    timer.start()
    for future in cf.as_completed(futures, timeout=5):
        seen.append(future)
    assert set(seen) == set(futures)
    done, not_done = cf.wait(futures, timeout=5, return_when=cf.ALL_COMPLETED)
    assert done == set(futures) and not not_done
    timer.join()
    canceller.join()


@pytest.mark.timeout(30)
def test_cancel_racing_finish_runs_callbacks_once_and_wakes_waiters() -> None:
    for round_ in range(300):
        future = make(round_)
        calls: list[object] = []
        future.add_done_callback(calls.append)
        start = threading.Barrier(2)
        waiter_result: list[object] = []

        def waiter() -> None:
            done, _ = cf.wait([future], timeout=5)
            waiter_result.append(done)
        waiting = threading.Thread(target=waiter)
        waiting.start()
        finisher = threading.Thread(target=lambda: (start.wait(), future._finish(round_)))
        finisher.start()
        start.wait()
        cancelled = future.cancel()
        finisher.join(5)
        waiting.join(5)
        assert waiter_result == [{future}]
        assert cancelled == future.cancelled()
        wait_for(lambda: len(calls) == 1)
        time.sleep(0)  # let a second (wrong) callback run, if any
        assert calls == [future]


@pytest.mark.timeout(10)
def test_callbacks_run_off_the_finishing_thread_and_survive_base_exceptions() -> None:
    first, second = make(1), make(2)
    threads: list[str] = []

    def raising(f: cf.Future) -> None:
        threads.append(threading.current_thread().name)
        raise SystemExit("a callback that exits")

    first.add_done_callback(raising)
    second.add_done_callback(lambda f: threads.append(f.result()))
    first._finish(1)   # this thread stands for the manager's I/O thread
    second._finish(2)
    wait_for(lambda: len(threads) == 2)
    assert threads == ["serverless-callbacks", 2]
