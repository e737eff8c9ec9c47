"""CallFuture: a real concurrent.futures.Future whose condition is made only when needed.

These drive the class directly (it is the object users hold), including the races the
lazy condition must survive: a waiter arriving while the manager loop settles the future.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from serverless.manager.future import CallFuture


def make(call_id: int = 1, on_cancel=None) -> CallFuture:
    return CallFuture(call_id, "lib", "f", on_cancel)


@pytest.mark.timeout(10)
def test_settled_future_reads_without_a_condition() -> None:
    future = make()
    future._settle(42)
    assert future.done() and not future.cancelled() and not future.running()
    assert future.result() == 42 and future.exception() is None
    assert "_lazy_condition" not in future.__dict__  # nobody waited: none was made
    assert isinstance(future, cf.Future)


@pytest.mark.timeout(10)
def test_error_is_raised_and_returned() -> None:
    future = make()
    future._settle(error=ValueError("boom"))
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
    future._settle("value")
    waiting.join(5)
    assert got == ["value"]


@pytest.mark.timeout(30)
def test_settle_races_waiters_without_losing_a_wakeup() -> None:
    for round_ in range(300):
        future = make(round_)
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(future.result(timeout=5)))
        waiter.start()
        future._settle(round_)
        waiter.join(5)
        assert got == [round_]


@pytest.mark.timeout(10)
def test_callbacks_wait_and_as_completed() -> None:
    futures = [make(i) for i in range(4)]
    seen: list[int] = []
    futures[0].add_done_callback(lambda f: seen.append(f.result()))
    futures[0]._settle(0)
    futures[1]._settle(1)
    futures[2].add_done_callback(lambda f: seen.append(f.result()))
    done, not_done = cf.wait(futures, timeout=0)
    assert done == set(futures[:2]) and not_done == set(futures[2:])
    releaser = threading.Thread(target=lambda: (futures[2]._settle(2), futures[3]._settle(3)))
    releaser.start()
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=5)) == [0, 1, 2, 3]
    releaser.join(5)
    assert seen == [0, 2]
    late: list[int] = []
    futures[3].add_done_callback(lambda f: late.append(f.result()))
    assert late == [3]


@pytest.mark.timeout(10)
def test_cancel_pending_and_finished() -> None:
    told: list[CallFuture] = []
    future = make(on_cancel=told.append)
    assert future.cancel() and future.cancelled() and told == [future]
    future._settle("too late")  # the result of a cancelled call is dropped
    assert future.cancelled()
    with pytest.raises(cf.CancelledError):
        future.result()
    finished = make(on_cancel=told.append)
    finished._settle(1)
    assert not finished.cancel() and told == [future]
    assert finished.result() == 1
