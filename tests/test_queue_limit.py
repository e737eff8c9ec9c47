"""ManagerConfig.max_queued: call() waits for room or raises QueueFull; places come back
whatever way a call ends."""

from __future__ import annotations

import threading
import time

import pytest

import serverless

from conftest import FAST


def wait_for(event_path, value):
    deadline = time.monotonic() + 60
    while not __import__("os").path.exists(event_path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def test_at_max_queued_call_raises_queue_full_and_nothing_is_queued(tmp_path):
    gate = tmp_path / "gate"
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", max_queued=3,
                            queue_full="raise", **FAST) as m:
        m.install(serverless.Library("lib", [wait_for], slots=1))
        held = [m.call("lib", "wait_for", str(gate), i) for i in range(3)]
        with pytest.raises(serverless.QueueFull, match="max_queued is 3"):
            m.call("lib", "wait_for", str(gate), 99)
        with pytest.raises(serverless.QueueFull):
            list(m.map("lib", "wait_for", [str(gate)] * 2, [7, 8]))  # all or none
        assert held[0].cancel() or held[0].done()  # a cancelled call frees its place too
        fourth = m.call("lib", "wait_for", str(gate), 3)  # now there is room for one
        places_back = threading.Event()  # callbacks run in order: ours after the manager's
        fourth.add_done_callback(lambda _: places_back.set())
        gate.touch()
        assert [f.result(timeout=60) for f in held[1:] + [fourth]] == [1, 2, 3]
        assert places_back.wait(60)
        assert list(m.map("lib", "wait_for", [str(gate)] * 3, [4, 5, 6])) == [4, 5, 6]


def test_at_max_queued_call_blocks_until_calls_finish(tmp_path):
    gate = tmp_path / "gate"
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", max_queued=2, **FAST) as m:
        m.install(serverless.Library("lib", [wait_for], slots=1))
        first = [m.call("lib", "wait_for", str(gate), i) for i in range(2)]
        made = threading.Event()
        late: list = []

        def third() -> None:
            late.append(m.call("lib", "wait_for", str(gate), 2))
            made.set()

        caller = threading.Thread(target=third)
        caller.start()
        assert not made.wait(0.5)  # blocked: two calls are unfinished
        gate.touch()  # they finish, a place frees, the third call goes in
        assert made.wait(60)
        caller.join(60)
        assert [f.result(timeout=60) for f in first + late] == [0, 1, 2]
        # map() hands over what it made before it waits, so it never waits for itself
        assert list(m.map("lib", "wait_for", [str(gate)] * 10, range(10))) == list(range(10))


def test_a_done_callback_that_makes_calls_at_max_queued_never_deadlocks(tmp_path):
    """The callback thread is what gives places back: a callback making calls at the cap
    is let through instead of waiting for itself."""
    gate, open_gate = tmp_path / "gate", tmp_path / "open"
    open_gate.touch()
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", max_queued=2, **FAST) as m:
        m.install(serverless.Library("lib", [wait_for], slots=1))
        chained: list = []
        made = threading.Event()

        def two_more(future) -> None:  # B holds one place: the second call is over the cap
            chained.extend(m.call("lib", "wait_for", str(open_gate), future.result() + i)
                           for i in (1, 2))
            made.set()

        first = m.call("lib", "wait_for", str(open_gate), 10)
        blocked = m.call("lib", "wait_for", str(gate), 0)
        first.add_done_callback(two_more)
        assert made.wait(30)
        gate.touch()
        assert [f.result(timeout=60) for f in [blocked, *chained]] == [0, 11, 12]
