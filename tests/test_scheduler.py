"""The scheduling state machine on its own: events in, actions out, no sockets, no processes."""

from __future__ import annotations

import itertools

import pytest

import serverless
from serverless.errors import LibraryFailed, ManagerClosed, UnknownLibrary, WorkerLost
from serverless.manager.records import (
    CallRecord,
    CallsFailed,
    CallsFinished,
    CancelCalls,
    DeployInstance,
    SendCalls,
    StopInstanceAction,
)
from conftest import ValidatingScheduler as Scheduler
from serverless.protocol import CallStatus

pytestmark = pytest.mark.timeout(30)


def noop():
    return None


_ids = itertools.count(1)


def calls(library: str, n: int, function: str = "noop") -> list[CallRecord]:
    return [CallRecord(next(_ids), library, function, b"", None, None) for _ in range(n)]


def of(kind, actions):
    return [a for a in actions if isinstance(a, kind)]


def install(scheduler: Scheduler, name: str, **options) -> list:
    return scheduler.install(name, serverless.Library(name, [noop], **options), b"blob")


def sent(actions) -> list[CallRecord]:
    return [call for action in of(SendCalls, actions) for call in action.calls]


def finish(scheduler: Scheduler, action: SendCalls, duration: float = 0.001) -> list:
    entries = [(c.call_id, int(CallStatus.OK), b"", duration) for c in action.calls]
    return scheduler.results(action.instance_id, entries)


def test_calls_wait_for_a_worker_then_an_instance_is_deployed_and_fed():
    s = Scheduler()
    install(s, "lib", slots=2)
    queued = calls("lib", 5)
    assert s.submit(queued) == []  # no worker yet: queued, nothing to do
    deploys = of(DeployInstance, s.worker_joined("w1", cores=2, memory_mb=1000))
    assert [(d.worker_id, d.library) for d in deploys] == [("w1", "lib")]
    actions = s.instance_ready(deploys[0].instance_id)
    assert sent(actions) == queued  # in submission order, within the instance's window
    finished = finish(s, of(SendCalls, actions)[0])
    assert [c for c, *_ in of(CallsFinished, finished)[0].results] == queued


def test_an_instance_never_holds_more_than_its_window():
    s = Scheduler()
    install(s, "lib", slots=1)
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy = of(DeployInstance, s.submit(calls("lib", 1000)))[0]
    batch = sent(s.instance_ready(deploy.instance_id))
    window = s.instances[deploy.instance_id].window
    assert 1 < len(batch) == window < 1000
    assert len(s.libraries["lib"].pending) == 1000 - window


def test_calls_refused_before_running_do_not_count_in_the_measured_run_time():
    s = Scheduler()
    install(s, "lib", slots=1)
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy = of(DeployInstance, s.submit(calls("lib", 3)))[0]
    first = of(SendCalls, s.instance_ready(deploy.instance_id))[0]
    done, refused, left = first.calls
    s.results(deploy.instance_id, [(done.call_id, int(CallStatus.OK), b"", 0.002)])
    assert s.libraries["lib"].mean_duration == 0.002
    s.results(deploy.instance_id, [  # e.g. arguments too large to send: it never ran
        (refused.call_id, int(CallStatus.ARGUMENTS_TOO_LARGE), b"", 0.0)])
    assert s.libraries["lib"].mean_duration == 0.002
    s.results(deploy.instance_id, [(left.call_id, int(CallStatus.OK), b"", 0.004)])
    assert s.libraries["lib"].mean_duration == pytest.approx(0.8 * 0.002 + 0.2 * 0.004)


def test_instances_are_deployed_only_within_a_workers_cores():
    s = Scheduler()
    install(s, "lib", slots=1, cores=1)
    s.worker_joined("w1", cores=2, memory_mb=1000)
    deploys = of(DeployInstance, s.submit(calls("lib", 10_000)))
    assert len(deploys) == 2  # two cores, one core per instance
    assert s.workers["w1"].used_cores == 2


def test_memory_is_a_placement_constraint_too():
    s = Scheduler()
    install(s, "big", memory_mb=600)
    s.worker_joined("w1", cores=8, memory_mb=1000)
    assert len(of(DeployInstance, s.submit(calls("big", 10_000)))) == 1


def test_unknown_library_fails_its_calls_at_once():
    s = Scheduler()
    s.worker_joined("w1", cores=1, memory_mb=1000)
    failed = of(CallsFailed, s.submit(calls("nope", 3)))
    assert len(failed) == 1 and len(failed[0].calls) == 3
    assert isinstance(failed[0].error, UnknownLibrary)


def test_calls_held_by_a_lost_worker_are_retried_elsewhere():
    s = Scheduler(max_retries=1)
    install(s, "lib")
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy = of(DeployInstance, s.submit(calls("lib", 3)))[0]
    held = sent(s.instance_ready(deploy.instance_id))
    assert held and not of(CallsFailed, s.worker_lost("w1", "heartbeat timeout"))
    assert all(c.instance_id is None for c in held)
    # slots=1: only the oldest may have been running; the others never started
    assert [c.attempts for c in held] == [1] + [0] * (len(held) - 1)
    redeploy = of(DeployInstance, s.worker_joined("w2", cores=1, memory_mb=1000))[0]
    assert redeploy.worker_id == "w2"
    assert sent(s.instance_ready(redeploy.instance_id)) == held  # same calls, same order


def test_past_max_retries_a_call_fails_with_worker_lost():
    s = Scheduler(max_retries=1)
    install(s, "lib")
    for attempt, worker in enumerate(["w1", "w2"]):
        deploy = of(DeployInstance, s.worker_joined(worker, cores=1, memory_mb=1000)
                    + (s.submit(calls("lib", 1)) if attempt == 0 else []))[0]
        s.instance_ready(deploy.instance_id)
        lost = s.worker_lost(worker, "killed")
    failed = of(CallsFailed, lost)
    assert len(failed) == 1 and isinstance(failed[0].error, WorkerLost)
    assert "max_retries=1" in str(failed[0].error)


def test_stale_results_from_a_written_off_instance_are_ignored():
    s = Scheduler()
    install(s, "lib")
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy = of(DeployInstance, s.submit(calls("lib", 2)))[0]
    batch = of(SendCalls, s.instance_ready(deploy.instance_id))[0]
    s.worker_lost("w1", "gone")
    assert finish(s, batch) == []


def test_a_library_that_keeps_failing_to_start_backs_off_then_fails_its_calls():
    s = Scheduler(max_start_failures=3, start_backoff=1.0)
    install(s, "bad")
    s.worker_joined("w1", cores=1, memory_mb=1000)
    queued = calls("bad", 4)
    deploy = of(DeployInstance, s.submit(queued))[0]
    deploys = 1
    now = 0.0
    while True:
        actions = s.instance_failed(deploy.instance_id, "setup raised", "Traceback: boom", True)
        if of(CallsFailed, actions):
            break
        assert not of(DeployInstance, actions)  # backing off, no tight redeploy loop
        assert not of(DeployInstance, s.tick(now + 0.5))
        now += 10
        deploy = of(DeployInstance, s.tick(now))[0]
        deploys += 1
    failed = of(CallsFailed, actions)[0]
    assert deploys == 3 and set(failed.calls) == set(queued)
    assert isinstance(failed.error, LibraryFailed) and "Traceback: boom" in str(failed.error)
    later = of(CallsFailed, s.submit(calls("bad", 1)))  # later calls fail at once
    assert later and isinstance(later[0].error, LibraryFailed)


def test_cancelling_a_queued_call_skips_it_and_a_running_one_is_stopped_where_it_runs():
    s = Scheduler()
    install(s, "lib", slots=1)
    s.worker_joined("w1", cores=1, memory_mb=1000)
    first, *rest = calls("lib", 2000)
    deploy = of(DeployInstance, s.submit([first, *rest]))[0]
    queued = rest[-1]
    assert s.cancel(queued) == []  # still queued: nothing to tell anyone
    batch = sent(s.instance_ready(deploy.instance_id))
    assert first in batch
    assert s.cancel(first) == [CancelCalls("w1", deploy.instance_id, (first.call_id,))]
    assert s.cancel(first) == []  # only once
    while s.libraries["lib"].pending:
        action = of(SendCalls, s.results(deploy.instance_id, [
            (c.call_id, int(CallStatus.OK), b"", 0.001) for c in batch]))
        batch = [c for a in action for c in a.calls]
        assert queued not in batch


def test_an_idle_instance_gives_way_to_another_library():
    s = Scheduler()
    install(s, "a")
    install(s, "b")
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy_a = of(DeployInstance, s.submit(calls("a", 1)))[0]
    finish(s, of(SendCalls, s.instance_ready(deploy_a.instance_id))[0])
    stops = of(StopInstanceAction, s.submit(calls("b", 1)))
    assert stops == [StopInstanceAction("w1", deploy_a.instance_id)]
    deploys = of(DeployInstance, s.instance_stopped(deploy_a.instance_id))
    assert [d.library for d in deploys] == ["b"]


def test_a_busy_library_drains_an_instance_so_another_does_not_starve():
    s = Scheduler()
    install(s, "a", slots=1)
    install(s, "b", slots=1)
    s.worker_joined("w1", cores=2, memory_mb=1000)
    deploys = of(DeployInstance, s.submit(calls("a", 10_000)))
    assert len(deploys) == 2
    batches = {d.instance_id: of(SendCalls, s.instance_ready(d.instance_id))[0] for d in deploys}
    assert not of(DeployInstance, s.submit(calls("b", 5)))  # no room yet
    # one of a's instances is draining: it finishes what it holds, gets nothing new, stops
    stopped = []
    for instance_id, batch in batches.items():
        actions = finish(s, batch)
        stopped += of(StopInstanceAction, actions)
    assert len(stopped) == 1
    deploys_b = of(DeployInstance, s.instance_stopped(stopped[0].instance_id))
    assert [d.library for d in deploys_b] == ["b"]


def test_removing_a_library_fails_its_calls_and_stops_its_instances():
    s = Scheduler()
    install(s, "lib")
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy = of(DeployInstance, s.submit(calls("lib", 100)))[0]
    s.instance_ready(deploy.instance_id)
    actions = s.remove("lib")
    assert of(StopInstanceAction, actions) == [StopInstanceAction("w1", deploy.instance_id)]
    failed = of(CallsFailed, actions)[0]
    assert len(failed.calls) == 100 and isinstance(failed.error, UnknownLibrary)


def test_shutdown_fails_every_unfinished_call_with_manager_closed():
    s = Scheduler()
    install(s, "lib")
    s.worker_joined("w1", cores=1, memory_mb=1000)
    deploy = of(DeployInstance, s.submit(calls("lib", 50)))[0]
    s.instance_ready(deploy.instance_id)
    failed = of(CallsFailed, s.shutdown())
    assert sum(len(f.calls) for f in failed) == 50
    assert all(isinstance(f.error, ManagerClosed) for f in failed)


def test_max_instances_caps_deployment():
    s = Scheduler()
    install(s, "lib", max_instances=1)
    s.worker_joined("w1", cores=8, memory_mb=1000)
    assert len(of(DeployInstance, s.submit(calls("lib", 10_000)))) == 1
