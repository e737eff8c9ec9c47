"""The scheduler's retry and failure logic on its own: no sockets, no processes.

(tests/test_scheduler.py covers the basics: a lost worker's calls go elsewhere, WorkerLost
past max_retries, stale results, start failures. These go further.)
"""

from __future__ import annotations

import itertools

import pytest

import serverless
from serverless.errors import WorkerLost
from serverless.manager.records import CallRecord, CallsFailed, CallsFinished, DeployInstance, SendCalls
from conftest import ValidatingScheduler as Scheduler
from serverless.manager.scheduler import MAX_BACKOFF
from serverless.protocol import CallStatus

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)


def noop():
    return None


def calls(library: str, n: int) -> list[CallRecord]:
    return [CallRecord(next(_ids), library, "noop", b"", None, None) for _ in range(n)]


def of(kind, actions):
    return [a for a in actions if isinstance(a, kind)]


def sent(actions) -> list[CallRecord]:
    return [call for action in of(SendCalls, actions) for call in action.calls]


def ready_instance(s: Scheduler, actions) -> tuple[int, list[CallRecord]]:
    deploy = of(DeployInstance, actions)[0]
    return deploy.instance_id, sent(s.instance_ready(deploy.instance_id))


def test_only_the_calls_that_may_have_been_running_count_an_attempt():
    s = Scheduler(max_retries=0)
    s.install("lib", serverless.Library("lib", [noop], slots=2), b"")
    s.worker_joined("w1", cores=2, memory_mb=100)
    instance, held = ready_instance(s, s.submit(calls("lib", 6)))
    assert len(held) == 6
    failed = of(CallsFailed, s.instance_failed(instance, "killed", "", during_start=False))
    # slots=2: the two oldest may have been running; max_retries=0 fails them, not the rest
    assert [c for f in failed for c in f.calls] == held[:2]
    assert isinstance(failed[0].error, WorkerLost) and "max_retries=0" in str(failed[0].error)
    assert list(s.libraries["lib"].pending) == held[2:]
    assert [c.attempts for c in held[2:]] == [0] * 4


def test_a_poison_call_fails_alone_and_the_calls_queued_behind_it_run():
    """Direct mode: a call that crashes its instance every time is retried max_retries
    times; the innocent calls sent with it are not charged for its crashes."""
    s = Scheduler(max_retries=2, start_backoff=0.0)
    s.install("lib", serverless.Library("lib", [noop], mode="direct"), b"")
    poison, *innocent = calls("lib", 4)
    actions = s.worker_joined("w1", cores=1, memory_mb=100) + s.submit([poison, *innocent])
    failures = []
    for _ in range(10):
        instance, held = ready_instance(s, actions)
        if held[0] is not poison:
            break
        actions = s.instance_failed(instance, "ended with SIGSEGV", "", during_start=False)
        failures += of(CallsFailed, actions)
        actions += s.tick(s.now + MAX_BACKOFF)
    assert [c for f in failures for c in f.calls] == [poison] and poison.attempts == 3
    assert "SIGSEGV" in str(failures[0].error)
    assert held == innocent and all(c.attempts == 0 for c in innocent)
    done = s.results(instance, [(c.call_id, int(CallStatus.OK), b"", 0.001) for c in held])
    assert [c for c, *_ in of(CallsFinished, done)[0].results] == innocent


def test_an_instance_that_keeps_dying_is_replaced_with_growing_backoff():
    s = Scheduler(max_retries=100, start_backoff=1.0)
    s.install("lib", serverless.Library("lib", [noop]), b"")
    actions = s.worker_joined("w1", cores=1, memory_mb=100) + s.submit(calls("lib", 3))
    instance, _ = ready_instance(s, actions)
    # the first death is replaced at once
    actions = s.instance_failed(instance, "killed", "", during_start=False)
    instance, _ = ready_instance(s, actions)
    waits = []
    for _ in range(8):  # then 1, 2, 4, ... seconds, at most MAX_BACKOFF
        start = s.now
        assert not of(DeployInstance, s.instance_failed(instance, "killed", "", False))
        wait = s.libraries["lib"].deploy_not_before - start
        assert not of(DeployInstance, s.tick(start + wait - 0.01))  # not a moment early
        instance, _ = ready_instance(s, s.tick(start + wait))
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]


def test_a_result_resets_the_backoff():
    s = Scheduler(max_retries=100, start_backoff=1.0)
    s.install("lib", serverless.Library("lib", [noop]), b"")
    actions = s.worker_joined("w1", cores=1, memory_mb=100) + s.submit(calls("lib", 20))
    instance, held = ready_instance(s, actions)
    for _ in range(2):
        actions = s.instance_failed(instance, "killed", "", during_start=False)
        instance, held = ready_instance(s, actions + s.tick(s.now + MAX_BACKOFF))
    s.results(instance, [(held[0].call_id, int(CallStatus.OK), b"", 0.001)])
    assert s.libraries["lib"].crash_streak == 0
    assert of(DeployInstance, s.instance_failed(instance, "killed", "", during_start=False))


def test_a_lost_worker_does_not_delay_redeployment_elsewhere():
    s = Scheduler(start_backoff=10.0)
    s.install("lib", serverless.Library("lib", [noop]), b"")
    actions = s.worker_joined("w1", cores=1, memory_mb=100) + s.submit(calls("lib", 2))
    ready_instance(s, actions)
    s.worker_joined("w2", cores=1, memory_mb=100)
    deploys = of(DeployInstance, s.worker_lost("w1", "no heartbeat"))
    assert [d.worker_id for d in deploys] == ["w2"]


def test_cancelled_calls_held_by_a_lost_instance_are_dropped_not_retried():
    s = Scheduler()
    s.install("lib", serverless.Library("lib", [noop]), b"")
    actions = s.worker_joined("w1", cores=1, memory_mb=100) + s.submit(calls("lib", 3))
    instance, held = ready_instance(s, actions)
    s.cancel(held[1])
    s.instance_failed(instance, "killed", "", during_start=False)
    assert held[1] not in s.libraries["lib"].pending
    assert list(s.libraries["lib"].pending) == [held[0], held[2]]


def test_when_the_worker_says_what_was_running_only_those_calls_are_charged():
    """InstanceFailed names the running calls (the instance's crash journal): a call that
    finished but whose result had not left, and calls never started, cost nothing."""
    s = Scheduler(max_retries=0)
    s.install("lib", serverless.Library("lib", [noop], slots=2), b"")
    s.worker_joined("w1", cores=2, memory_mb=100)
    instance, held = ready_instance(s, s.submit(calls("lib", 6)))
    running = (held[1].call_id, held[3].call_id)  # not the oldest two
    actions = s.instance_failed(instance, "killed", "", False, running)
    failed = of(CallsFailed, actions)
    assert [c for f in failed for c in f.calls] == [held[1], held[3]]
    assert [c.attempts for c in held] == [0, 1, 0, 1, 0, 0]
    assert list(s.libraries["lib"].pending) == [held[0], held[2], held[4], held[5]]
    # nothing running (a direct-mode call's crash was reported as its own result): no charge
    instance, again = ready_instance(s, actions)
    assert again == [held[0], held[2], held[4], held[5]]
    assert not of(CallsFailed, s.instance_failed(instance, "killed", "", False, ()))
    assert all(c.attempts == 0 for c in again)


def test_validate_names_the_broken_invariant():
    from serverless.manager.scheduler import InvariantViolation

    s = Scheduler()
    s.install("lib", serverless.Library("lib", [noop]), b"blob")
    s.submit(calls("lib", 2))
    instance_id, running = ready_instance(s, s.worker_joined("w1", cores=1, memory_mb=100))
    s.validate()
    s.libraries["lib"].pending.append(running[0])  # the same call queued and sent
    with pytest.raises(InvariantViolation, match="two places|names an instance"):
        s.validate()
    s.libraries["lib"].pending.clear()
    s.workers["w1"].used_cores += 1  # resources that do not add up
    with pytest.raises(InvariantViolation, match="cores"):
        s.validate()


def test_a_malformed_results_batch_changes_nothing():
    s = Scheduler()
    s.install("lib", serverless.Library("lib", [noop]), b"blob")
    s.submit(calls("lib", 1))
    instance_id, running = ready_instance(s, s.worker_joined("w1", cores=1, memory_mb=100))
    entries = [(running[0].call_id, int(CallStatus.OK), b"", 0.1), ("too", "short")]
    with pytest.raises(ValueError):
        s.results(instance_id, entries)
    assert running[0].call_id in s.instances[instance_id].outstanding
    s.validate()


def test_an_instance_silent_past_timeout_plus_grace_is_written_off_and_its_calls_retried():
    s = Scheduler(call_grace=2.0)
    s.install("lib", serverless.Library("lib", [noop], timeout=5), b"blob")
    s.tick(100.0)
    queued = [CallRecord(next(_ids), "lib", "noop", b"", 5.0, None)]
    s.submit(queued)
    instance_id, running = ready_instance(s, s.worker_joined("w1", cores=1, memory_mb=100))
    assert running == queued
    assert s.tick(106.9) == []  # within 5 s + 2 s of the dispatch
    actions = s.tick(107.2)
    assert instance_id not in s.instances
    assert [a.instance_id for a in actions if type(a).__name__ == "StopInstanceAction"] == [instance_id]
    assert running[0].attempts == 1 and running[0].instance_id is None
    assert of(DeployInstance, actions)  # a new instance for the retried call
    # a call with no timeout is never written off
    s2 = Scheduler(call_grace=2.0)
    s2.install("lib", serverless.Library("lib", [noop]), b"blob")
    s2.submit(calls("lib", 1))
    instance_id, _ = ready_instance(s2, s2.worker_joined("w1", cores=1, memory_mb=100))
    assert s2.tick(10_000.0) == [] and instance_id in s2.instances
