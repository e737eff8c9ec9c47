"""The scheduler bounds what instances and workers hold in bytes of arguments, not only in
calls: no sockets, no processes."""

from __future__ import annotations

import itertools

import pytest

import serverless
from serverless.manager.policy import SchedulingPolicy
from serverless.manager.records import CallRecord, DeployInstance, SendCalls
from serverless.manager.scheduler import Scheduler
from serverless.protocol import CallStatus

pytestmark = pytest.mark.timeout(30)

MB = 1 << 20
_ids = itertools.count(1)


def noop(x):
    return None


def calls(n: int, size: int) -> list[CallRecord]:
    return [CallRecord(next(_ids), "lib", "noop", b"x" * size, None, None) for _ in range(n)]


def sends(actions) -> list[SendCalls]:
    return [a for a in actions if isinstance(a, SendCalls)]


def held(s: Scheduler) -> dict[int, int]:
    return {i.instance_id: sum(c.size for c in i.outstanding.values()) for i in s.instances.values()}


def check_books(s: Scheduler) -> None:
    for instance in s.instances.values():
        assert instance.outstanding_bytes == sum(c.size for c in instance.outstanding.values())
    for worker in s.workers.values():
        assert worker.outstanding_bytes == sum(s.instances[i].outstanding_bytes for i in worker.instances)


def test_large_arguments_are_bounded_in_bytes_per_instance_and_per_worker():
    policy = SchedulingPolicy(initial_prefetch=10, window_bytes=4 * MB, worker_bytes=6 * MB)
    s = Scheduler(policy)
    s.install("lib", serverless.Library("lib", [noop], slots=1), b"")
    actions = s.worker_joined("w", cores=2, memory_mb=1000) + s.submit(calls(40, MB))
    deployed = [a.instance_id for a in actions if isinstance(a, DeployInstance)]
    assert len(deployed) == 2
    first = sends(s.instance_ready(deployed[0]))
    assert sum(len(a.calls) for a in first) == 4  # the window allows 11 calls, 4 MB do not
    second = sends(s.instance_ready(deployed[1]))
    # the worker's 6 MB leave 2 MB: slots + 1 calls go whatever their size, no more
    assert sum(len(a.calls) for a in second) == 2
    check_books(s)
    assert sum(held(s).values()) == 6 * MB
    # results free bytes; the refill stays within both budgets
    for _ in range(10):
        for action in first + second:
            done = [(c.call_id, int(CallStatus.OK), b"", 0.0001) for c in action.calls
                    if c.call_id in s.instances[action.instance_id].outstanding]
            refill = sends(s.results(action.instance_id, done))
            check_books(s)
            assert all(b <= 4 * MB for b in held(s).values())
            assert sum(held(s).values()) <= 6 * MB
            if refill:
                first, second = (refill, second) if action in first else (first, refill)
                break
    assert sum(len(r.pending) for r in s.libraries.values()) < 40 - 6  # it went on


def test_a_call_larger_than_every_budget_still_goes_alone():
    policy = SchedulingPolicy(window_bytes=MB, worker_bytes=MB)
    s = Scheduler(policy)
    s.install("lib", serverless.Library("lib", [noop], slots=1), b"")
    actions = s.worker_joined("w", cores=1, memory_mb=1000) + s.submit(calls(3, 5 * MB))
    instance = [a.instance_id for a in actions if isinstance(a, DeployInstance)][0]
    batch = sends(s.instance_ready(instance))
    assert [len(a.calls) for a in batch] == [2]  # slots + 1: one running, one ready
    check_books(s)
