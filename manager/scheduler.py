"""The manager's scheduling state machine: events in, actions out, no I/O.

Events are method calls (``submit``, ``worker_joined``, ``results``, ``instance_failed``,
...); each returns the list of :mod:`~serverless.manager.records` actions the loop must
carry out. That keeps routing, slot accounting, deployment, retries and failure handling
testable with no sockets and no processes.

A call's life::

    pending (library queue) --dispatch--> outstanding at an instance --results--> finished
        ^                                     |
        +---- instance or worker lost --------+   (attempts += 1; past max_retries: WorkerLost)

An instance holds at most ``window`` outstanding calls: its slots plus enough queued work
(from measured call durations) that it never idles waiting for the manager. When calls are
pending and no instance has room, a new instance is deployed on a worker with free cores
and memory; if none has room, idle instances of other libraries are stopped to make it.
A library whose instances keep failing to start is marked failed after
``max_start_failures`` attempts (with exponential backoff between them), and its calls fail
with :class:`~serverless.LibraryFailed` carrying the start-up traceback.

An instance that dies after it started (killed, or a direct-mode call crashed it) is
replaced by deploying a new one; its calls go back to the front of the queue. The first
replacement is immediate; if instances of the library keep dying with no result in
between, each further one waits ``start_backoff * 2**(n-1)`` seconds (at most
``MAX_BACKOFF``), so a library that crashes as soon as it serves never spins.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable
from typing import Any

from serverless.errors import LibraryFailed, ManagerClosed, UnknownLibrary, WorkerLost

from serverless.data.file import FileSpec

from .policy import SchedulingPolicy
from .records import (
    DRAINING,
    READY,
    STARTING,
    STOPPING,
    Action,
    CallRecord,
    CallsFailed,
    CallsFinished,
    CancelCalls,
    DeployInstance,
    InstanceRecord,
    LibraryRecord,
    SendCalls,
    StopInstanceAction,
    WorkerRecord,
)

__all__ = ["Scheduler", "InvariantViolation", "EVENTS", "MAX_BACKOFF"]

# the scheduler's events: its public methods that change its state and return actions
EVENTS = ("install", "remove", "submit", "results", "cancel", "worker_joined", "worker_lost",
          "instance_ready", "instance_failed", "instance_stopped", "tick", "shutdown")

MAX_BACKOFF = 30.0  # seconds: the longest wait before deploying after repeated failures
_FOREVER = 1e9  # seconds: a call duration reported above this is not a measurement


class InvariantViolation(AssertionError):
    """The scheduler's state broke one of its invariants (a bug): see Scheduler.validate."""


class Scheduler:
    """All scheduling state of one manager. Not thread-safe: the manager loop owns it."""

    def __init__(
        self,
        policy: SchedulingPolicy | None = None,
        max_retries: int = 3,
        max_start_failures: int = 3,
        start_backoff: float = 0.5,
        call_grace: float = 30.0,
    ) -> None:
        self.policy = policy or SchedulingPolicy()
        self.max_retries = max_retries
        self.max_start_failures = max_start_failures
        self.start_backoff = start_backoff
        self.call_grace = call_grace
        self.libraries: dict[str, LibraryRecord] = {}
        self.workers: dict[Hashable, WorkerRecord] = {}
        self.instances: dict[int, InstanceRecord] = {}
        self.now = 0.0
        self._instance_ids = itertools.count(1)
        self._waiting: set[str] = set()  # libraries with calls but no room for an instance
        self.data = None  # manager.data.DataDirectory: who holds which input file (locality)

    # --- libraries --------------------------------------------------------------------

    def install(self, name: str, spec: object, blob: bytes) -> list[Action]:
        """A library was installed (or replaced: its instances stop, its queue stays)."""
        old = self.libraries.get(name)
        actions: list[Action] = []
        record = LibraryRecord(name, spec, blob)
        if old is not None:  # reinstall: new instances get the new code; queued calls stay
            record.pending = old.pending
            record.instances = old.instances
            actions += self._stop_instances(list(old.instances))
        self.libraries[name] = record
        return actions + self._schedule(record)

    def remove(self, name: str) -> list[Action]:
        """A library was removed: stop its instances, fail its calls with UnknownLibrary."""
        record = self.libraries.pop(name, None)
        if record is None:
            return []
        stranded = [c for c in record.pending if not c.cancelled]
        for instance_id in record.instances:
            instance = self.instances[instance_id]
            stranded += self._take_outstanding(instance)  # stop now, do not drain
        actions = self._stop_instances(list(record.instances))
        if stranded:
            actions.append(CallsFailed(stranded, UnknownLibrary(f"library {name!r} was removed")))
        return actions

    # --- calls ------------------------------------------------------------------------

    def submit(self, calls: Iterable[CallRecord]) -> list[Action]:
        """New calls: queue each on its library, then dispatch or deploy for them."""
        touched: dict[str, LibraryRecord] = {}
        failed: dict[str, list[CallRecord]] = {}
        for call in calls:
            record = self.libraries.get(call.library)
            if record is None or record.failed is not None:
                failed.setdefault(call.library, []).append(call)
                continue
            record.pending.append(call)
            touched[call.library] = record
        actions: list[Action] = []
        for name, stranded in failed.items():
            record = self.libraries.get(name)
            error = record.failed if record else UnknownLibrary(f"library {name!r} is not installed")
            actions.append(CallsFailed(stranded, error))
        for record in touched.values():
            if not record.instances:  # about to need room: others must leave it some
                self._waiting.add(record.name)
        for record in sorted(touched.values(), key=lambda r: len(r.instances)):
            actions += self._schedule(record)
        return actions

    def results(self, instance_id: int, entries: list[tuple]) -> list[Action]:
        """An instance reported ``(call_id, status, payload, duration)`` entries: finish
        those calls, update the measured call duration (and so the window), refill it."""
        instance = self.instances.get(instance_id)
        if instance is None:
            return []  # a stale batch from an instance already written off
        finished = []
        total = 0.0
        ran = 0  # calls that ran: a call refused before running (duration 0) says nothing
        freed = 0
        outstanding = instance.outstanding
        try:
            for call_id, status, payload, duration in entries:
                call = outstanding.pop(call_id, None)
                if call is None:
                    continue  # already retried elsewhere or cancelled
                finished.append((call, status, payload, duration))
                freed += call.size
                # only a sane measurement counts (NaN and inf fail these comparisons)
                if duration.__class__ is float and 0.0 < duration < _FOREVER:
                    total += duration
                    ran += 1
        except Exception:  # a malformed entry: the batch changes nothing, its sender is dropped
            for call, *_ in finished:
                outstanding[call.call_id] = call
            raise
        if not finished:
            return []
        instance.last_progress = self.now
        instance.outstanding_bytes -= freed
        worker = self.workers.get(instance.worker_id)
        unblocked = False
        if worker is not None:
            worker.outstanding_bytes -= freed
            unblocked, worker.byte_blocked = worker.byte_blocked, False
        record = self.libraries.get(instance.library)
        if record is not None:
            record.crash_streak = 0
        actions: list[Action] = [CallsFinished(finished)]
        if instance.state == DRAINING:
            if not outstanding:
                actions += self._stop_instances([instance_id])
        elif self._waiting and not outstanding and not (record and record.pending):
            actions += self._schedule_waiting()
        if record is not None:
            if ran:  # the measured run time sizes how far calls are queued ahead (_window)
                mean = total / ran
                previous = record.mean_duration
                record.mean_duration = mean if previous is None else 0.8 * previous + 0.2 * mean
                instance.window = self._window(record)
            actions += self._schedule(record)
        if unblocked:  # other libraries' instances there may have waited for these bytes
            actions += self._schedule_all()
        return actions

    def cancel(self, call: CallRecord) -> list[Action]:
        """The call's future was cancelled: drop it, or stop it where it runs."""
        if call.cancelled:
            return []
        call.cancelled = True
        instance = self.instances.get(call.instance_id) if call.instance_id is not None else None
        if instance is not None and call.call_id in instance.outstanding:
            return [CancelCalls(instance.worker_id, instance.instance_id, (call.call_id,))]
        return []  # still pending: skipped when its turn comes

    # --- workers ----------------------------------------------------------------------

    def worker_joined(self, worker_id: Hashable, cores: float, memory_mb: int, hostname: str = "",
                      **details: Any) -> list[Action]:
        """A worker registered, offering ``cores`` and ``memory_mb``; ``details`` fill the
        rest of its :class:`WorkerRecord` (pid, name, max_message_bytes, last_heard...)."""
        self.workers[worker_id] = WorkerRecord(worker_id, cores, memory_mb, hostname, **details)
        return self._schedule_all()

    def worker_lost(self, worker_id: Hashable, reason: str) -> list[Action]:
        """A worker left or was declared lost: what its instances held is retried."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        actions: list[Action] = []
        for instance_id in list(worker.instances):
            actions += self._instance_gone(instance_id, f"worker {worker.name or worker_id} lost: {reason}")
        return actions + self._schedule_all()

    # --- instances --------------------------------------------------------------------

    def instance_ready(self, instance_id: int) -> list[Action]:
        """An instance finished starting: size its window and send it calls."""
        instance = self.instances.get(instance_id)
        if instance is None or instance.state != STARTING:
            return []
        instance.state = READY
        record = self.libraries.get(instance.library)
        if record is None:
            return self._stop_instances([instance_id])
        record.start_failures = 0
        instance.window = self._window(record)
        return self._schedule(record)

    def instance_failed(self, instance_id: int, reason: str, traceback: str, during_start: bool,
                        running: tuple[int, ...] | None = None) -> list[Action]:
        """An instance died, or failed to start: retry what it held and replace it, after
        a backoff if this keeps happening; past max_start_failures the library fails.
        ``running``: the calls it was running, as its worker read them from its crash
        journal (None: unknown)."""
        instance = self.instances.get(instance_id)
        if instance is None:
            return []
        actions = self._instance_gone(instance_id, reason, running)
        record = self.libraries.get(instance.library)
        if record is None:
            pass
        elif during_start:
            record.start_failures += 1
            if record.start_failures >= self.max_start_failures:
                record.failed = LibraryFailed(
                    f"library {record.name!r} failed to start {record.start_failures} times; "
                    f"last: {reason}", traceback)
                stranded = [c for c in record.pending if not c.cancelled]
                record.pending.clear()
                if stranded:
                    actions.append(CallsFailed(stranded, record.failed))
            else:
                self._back_off(record, record.start_failures)
        else:
            record.crash_streak += 1
            if record.crash_streak > 1:  # the first replacement goes at once
                self._back_off(record, record.crash_streak - 1)
        return actions + self._schedule_all()

    def _back_off(self, record: LibraryRecord, failures: int) -> None:
        delay = min(MAX_BACKOFF, self.start_backoff * 2 ** (failures - 1))
        record.deploy_not_before = self.now + delay

    def instance_stopped(self, instance_id: int) -> list[Action]:
        """An instance stopped as asked: its room goes to whoever waits for it."""
        actions = self._instance_gone(instance_id, "stopped")
        return actions + self._schedule_all()

    def tick(self, now: float) -> list[Action]:
        """Time passed: deployments waiting out a backoff may go ahead, and an instance
        that has returned nothing for longer than its running calls' timeout plus
        ``call_grace`` is written off as hung (stopped; its calls retried)."""
        self.now = now
        waiting = [r for r in self.libraries.values() if r.pending and r.deploy_not_before > 0]
        actions: list[Action] = []
        for record in waiting:
            if record.deploy_not_before <= now:
                record.deploy_not_before = 0.0
                actions += self._schedule(record)
        for instance in [i for i in self.instances.values() if i.outstanding]:
            overdue = self._overdue(instance, now)
            if overdue is not None:
                actions.append(StopInstanceAction(instance.worker_id, instance.instance_id))
                actions += self._instance_gone(instance.instance_id, overdue)
                actions += self._schedule_all()
        return actions

    def _overdue(self, instance: InstanceRecord, now: float) -> str | None:
        """Why ``instance`` counts as hung, or None while it may still be working."""
        record = self.libraries.get(instance.library)
        slots = record.spec.slots if record is not None else len(instance.outstanding)
        timeouts = [c.timeout for c in itertools.islice(instance.outstanding.values(), slots)]
        if None in timeouts:  # a call with no timeout may run for ever
            return None
        waited = now - instance.last_progress
        if waited <= max(timeouts) + self.call_grace:
            return None
        return (f"instance {instance.instance_id} returned nothing for {waited:.1f} s, over its "
                f"calls' timeout of {max(timeouts):g} s plus {self.call_grace:g} s (hung)")

    def shutdown(self) -> list[Action]:
        """The manager is stopping: fail every call not finished with ManagerClosed."""
        stranded: list[CallRecord] = []
        for record in self.libraries.values():
            stranded += (c for c in record.pending if not c.cancelled)
            record.pending.clear()
        for instance in self.instances.values():
            stranded += self._take_outstanding(instance)
        if not stranded:
            return []
        return [CallsFailed(stranded, ManagerClosed("the manager shut down before the call finished"))]

    # --- invariants -------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant of the state; raise InvariantViolation naming the first
        one broken. Tests run it after every event (the manager loop does too when the
        environment sets SERVERLESS_VALIDATE=1), so a bug shows at the event that caused it.
        """
        def check(condition: bool, what: str) -> None:
            if not condition:
                raise InvariantViolation(what)

        seen: dict[int, str] = {}  # call_id -> where it is

        def place(call: CallRecord, where: str) -> None:
            check(call.call_id not in seen,
                  f"call {call.call_id} is in two places: {seen.get(call.call_id)} and {where}")
            seen[call.call_id] = where

        for name, record in self.libraries.items():
            check(record.name == name, f"library {name!r} is filed under another name")
            check(record.failed is None or not record.pending,
                  f"failed library {name!r} still queues calls")
            for call in record.pending:
                place(call, f"the queue of {name!r}")
                check(call.library == name, f"call {call.call_id} of {call.library!r} queued on {name!r}")
                check(call.instance_id is None, f"queued call {call.call_id} names an instance")
            for instance_id in record.instances:
                instance = self.instances.get(instance_id)
                check(instance is not None and instance.library == name,
                      f"library {name!r} lists instance {instance_id}, not one of its own")
        used: dict[Hashable, list[float]] = {w: [0.0, 0, 0] for w in self.workers}
        for instance_id, instance in self.instances.items():
            where = f"instance {instance_id}"
            check(instance.instance_id == instance_id, f"{where} is filed under another id")
            check(instance.state in (STARTING, READY, DRAINING, STOPPING),
                  f"{where} is in an unknown state {instance.state!r}")
            check(instance.state in (READY, DRAINING) or not instance.outstanding,
                  f"{where} holds calls while {instance.state}")
            worker = self.workers.get(instance.worker_id)
            check(worker is not None and instance_id in worker.instances,
                  f"{where} is on worker {instance.worker_id!r}, which does not list it")
            used[instance.worker_id][0] += instance.cores
            used[instance.worker_id][1] += instance.memory_mb
            record = self.libraries.get(instance.library)
            # (a stopping one may belong to a library removed, then installed again)
            check(record is None or instance_id in record.instances or instance.state == STOPPING,
                  f"{where} is not listed by its library {instance.library!r}")
            check(instance.outstanding_bytes == sum(c.size for c in instance.outstanding.values()),
                  f"{where} counts {instance.outstanding_bytes} bytes outstanding, not its calls'")
            used[instance.worker_id][2] += instance.outstanding_bytes
            for call_id, call in instance.outstanding.items():
                place(call, where)
                check(call.call_id == call_id, f"call {call.call_id} filed as {call_id} at {where}")
                check(call.instance_id == instance_id,
                      f"call {call_id} at {where} names instance {call.instance_id}")
                check(call.library == instance.library,
                      f"call {call_id} of {call.library!r} at {where} of {instance.library!r}")
        for worker_id, worker in self.workers.items():
            check(worker.worker_id == worker_id, f"worker {worker_id!r} is filed under another id")
            for instance_id in worker.instances:
                check(instance_id in self.instances and
                      self.instances[instance_id].worker_id == worker_id,
                      f"worker {worker_id!r} lists instance {instance_id}, not one of its own")
            cores, memory, outstanding_bytes = used[worker_id]
            check(worker.outstanding_bytes == outstanding_bytes,
                  f"worker {worker_id!r} counts {worker.outstanding_bytes} bytes outstanding; "
                  f"its instances hold {outstanding_bytes}")
            check(abs(worker.used_cores - cores) < 1e-6 and worker.used_memory_mb == memory,
                  f"worker {worker_id!r} counts {worker.used_cores} cores and "
                  f"{worker.used_memory_mb} MB used; its instances hold {cores} and {memory}")
            check(worker.used_cores <= worker.cores + 1e-6 and worker.used_memory_mb <= worker.memory_mb,
                  f"worker {worker_id!r} holds more than it offers")

    # --- inside -----------------------------------------------------------------------

    def _window(self, record: LibraryRecord) -> int:
        """How many calls an instance of ``record`` may hold: its slots, each with enough
        calls queued behind it to cover ``policy.queue_seconds`` of measured run time."""
        policy = self.policy
        slots = record.spec.slots
        if record.mean_duration is None:
            prefetch = policy.initial_prefetch
        else:
            wanted = math.ceil(policy.queue_seconds / max(record.mean_duration, 1e-7))
            prefetch = min(policy.max_prefetch, max(policy.min_prefetch, wanted))
        return slots * (1 + prefetch)

    def _schedule_waiting(self) -> list[Action]:
        actions: list[Action] = []
        for name in list(self._waiting):
            record = self.libraries.get(name)
            if record is None or not record.pending:
                self._waiting.discard(name)
            else:
                actions += self._schedule(record)
        return actions

    def _schedule_all(self) -> list[Action]:
        actions: list[Action] = []
        # libraries with the fewest instances first, so none starves another
        for record in sorted(self.libraries.values(), key=lambda r: len(r.instances)):
            if record.pending:
                actions += self._schedule(record)
        return actions

    def _schedule(self, record: LibraryRecord) -> list[Action]:
        actions = self._dispatch(record)
        if record.pending:
            actions += self._deploy(record)
        return actions

    def _dispatch(self, record: LibraryRecord) -> list[Action]:
        pending = record.pending
        actions: list[Action] = []
        if not pending:
            return actions
        candidates = [self.instances[i] for i in record.instances]
        candidates = [i for i in candidates if i.room() > 0]
        chooser = self.policy.instances
        window_bytes, worker_bytes = self.policy.window_bytes, self.policy.worker_bytes
        slots = record.spec.slots
        while pending and candidates:
            head = pending[0]
            if head.files and self.data is not None and len(candidates) > 1:
                instance = self._nearest(candidates, head.files, record)
            else:
                instance = chooser.choose(candidates)
            room = instance.room()
            worker = self.workers.get(instance.worker_id)
            if worker is None:  # cannot happen: a lost worker's instances are gone with it
                candidates.remove(instance)
                continue
            if not instance.outstanding:  # idle until now: its calls' clocks start here
                instance.last_progress = self.now
            # calls up to slots + 1 go whatever their size; beyond, within both byte budgets
            free = slots + 1 - len(instance.outstanding)
            budget = min(window_bytes - instance.outstanding_bytes,
                         worker_bytes - worker.outstanding_bytes)
            batch = []
            sent = 0
            while pending and len(batch) < room:
                call = pending.popleft()
                if call.cancelled:
                    continue
                if len(batch) >= free and sent + call.size > budget:
                    pending.appendleft(call)
                    if worker_bytes - worker.outstanding_bytes < window_bytes - instance.outstanding_bytes:
                        worker.byte_blocked = True
                    break
                call.instance_id = instance.instance_id
                instance.outstanding[call.call_id] = call
                batch.append(call)
                sent += call.size
            if batch:
                instance.outstanding_bytes += sent
                worker.outstanding_bytes += sent
                actions.append(SendCalls(instance.worker_id, instance.instance_id, batch))
            candidates.remove(instance)
        return actions

    def _nearest(self, candidates: list[InstanceRecord], files: tuple,
                 record: LibraryRecord) -> InstanceRecord:
        """The instance whose worker gets a call with input files soonest: the seconds to
        fetch what it lacks (its size over ``policy.transfer_bytes_per_second``) plus the
        seconds of work queued there before it."""
        rate = self.policy.transfer_bytes_per_second
        per_call = record.mean_duration or 0.0
        specs = [FileSpec(*f) for f in files]

        def cost(instance: InstanceRecord) -> float:
            queued = len(instance.outstanding) / max(1, record.spec.slots)
            return self.data.missing_bytes(instance.worker_id, specs) / rate + queued * per_call

        return min(candidates, key=cost)

    def _holding(self, record: LibraryRecord, fitting: list) -> list:
        """Of the workers with room, those lacking the fewest bytes of the next call's
        input files (all of them when it has none): a new instance goes where data is."""
        head = record.pending[0] if record.pending else None
        if head is None or not head.files or self.data is None or len(fitting) < 2:
            return fitting
        specs = [FileSpec(*f) for f in head.files]
        missing = {w.worker_id: self.data.missing_bytes(w.worker_id, specs) for w in fitting}
        least = min(missing.values())
        return [w for w in fitting if missing[w.worker_id] == least]

    def _deploy(self, record: LibraryRecord) -> list[Action]:
        if record.failed is not None or record.deploy_not_before > self.now:
            return []
        spec = record.spec
        actions: list[Action] = []
        live = [self.instances[i] for i in record.instances]
        coming = sum(self._window(record) for i in live if i.state == STARTING)
        count = sum(1 for i in live if i.state in (STARTING, READY))
        while len(record.pending) > coming:
            if spec.max_instances is not None and count >= spec.max_instances:
                break
            if count and self._someone_starves(record.name):
                break  # leave the room to a library that has no instance at all
            fitting = [w for w in self.workers.values() if w.fits(spec.cores, spec.memory_mb)]
            if not fitting:
                if not count:
                    self._waiting.add(record.name)
                    actions += self._make_room(record)
                break
            worker = self.policy.placement.choose(self._holding(record, fitting),
                                                  spec.cores, spec.memory_mb)
            instance = InstanceRecord(next(self._instance_ids), record.name, worker.worker_id,
                                      spec.cores, spec.memory_mb)
            instance.window = self._window(record)
            self.instances[instance.instance_id] = instance
            record.instances.add(instance.instance_id)
            worker.instances.add(instance.instance_id)
            worker.used_cores += spec.cores
            worker.used_memory_mb += spec.memory_mb
            actions.append(DeployInstance(worker.worker_id, instance.instance_id, record.name))
            coming += instance.window
            count += 1
            self._waiting.discard(record.name)
        return actions

    def _someone_starves(self, name: str) -> bool:
        for other in self._waiting:
            record = self.libraries.get(other)
            if other != name and record is not None and record.pending and record.failed is None:
                return True
        return False

    def _make_room(self, record: LibraryRecord) -> list[Action]:
        """Free a worker for a library that has calls but no instance and no room.

        Idle instances of other libraries are stopped at once; failing that, one instance
        of the library holding the most is drained (it gets no new calls and stops when its
        outstanding calls are done), so that no library starves another.
        """
        spec = record.spec
        if any(i.state in (STOPPING, DRAINING) for i in self.instances.values()):
            return []  # room is already being made; wait for it
        best: tuple[int, list[InstanceRecord]] | None = None
        for worker in self.workers.values():
            if worker.cores < spec.cores or worker.memory_mb < spec.memory_mb:
                continue
            others = [self.instances[i] for i in worker.instances]
            # a starting instance is not a victim: it has calls coming (it was deployed for
            # them), and stopping it would only make its library take the room back, each
            # making room for the other in turn forever; once ready, it is idle or drains
            others = [i for i in others if i.library != record.name and i.state == READY]
            # idle first, then the instances of libraries holding many, then the least busy
            others.sort(key=lambda i: (bool(i.outstanding) or self._has_pending(i.library),
                                       -len(self.libraries[i.library].instances)
                                       if i.library in self.libraries else 0,
                                       len(i.outstanding)))
            victims, cores, memory = [], 0.0, 0
            for instance in others:
                victims.append(instance)
                cores += instance.cores
                memory += instance.memory_mb
                if worker.fits(spec.cores - cores, spec.memory_mb - memory):
                    break
            else:
                continue
            busy = sum(1 for v in victims if v.outstanding or self._has_pending(v.library))
            if best is None or busy < best[0]:
                best = (busy, victims)
        if best is None:
            return []
        actions: list[Action] = []
        for victim in best[1]:
            if victim.outstanding:
                victim.state = DRAINING
            else:
                actions += self._stop_instances([victim.instance_id])
        return actions

    def _has_pending(self, library: str) -> bool:
        record = self.libraries.get(library)
        return bool(record and record.pending)

    def _stop_instances(self, instance_ids: list[int]) -> list[Action]:
        actions: list[Action] = []
        for instance_id in instance_ids:
            instance = self.instances.get(instance_id)
            if instance is None or instance.state == STOPPING:
                continue
            if instance.outstanding:  # finish what it holds first
                instance.state = DRAINING
                continue
            instance.state = STOPPING
            actions.append(StopInstanceAction(instance.worker_id, instance_id))
        return actions

    def _take_outstanding(self, instance: InstanceRecord) -> list[CallRecord]:
        """Empty ``instance`` of the calls it holds (their bytes too); return them."""
        held = list(instance.outstanding.values())
        instance.outstanding.clear()
        worker = self.workers.get(instance.worker_id)
        if worker is not None:
            worker.outstanding_bytes -= instance.outstanding_bytes
        instance.outstanding_bytes = 0
        return held

    def _instance_gone(self, instance_id: int, reason: str,
                       running: tuple[int, ...] | None = None) -> list[Action]:
        """Forget an instance, free its resources, and retry (or fail) what it held.

        Only the calls that were running are charged an attempt: those named in
        ``running`` when the worker read them from the instance's crash journal; when
        nobody could tell (a whole worker lost), the oldest ``slots`` it held.
        """
        instance = self.instances.pop(instance_id, None)
        if instance is None:
            return []
        worker = self.workers.get(instance.worker_id)
        if worker is not None:
            worker.instances.discard(instance_id)
            worker.used_cores -= instance.cores
            worker.used_memory_mb -= instance.memory_mb
            worker.outstanding_bytes -= instance.outstanding_bytes
        instance.outstanding_bytes = 0
        record = self.libraries.get(instance.library)
        if record is not None:
            record.instances.discard(instance_id)
        held = list(instance.outstanding.values())  # in the order they were sent
        instance.outstanding.clear()
        # Without the journal's word: an instance runs its calls in the order it got them,
        # ``slots`` at a time, so only the oldest ``slots`` it held may have been running;
        # the others never started, and sending them again costs them no attempt.
        slots = record.spec.slots if record is not None else len(held)
        charged = (set(running) if running is not None
                   else {call.call_id for call in held[:slots]})
        retry, give_up = [], []
        for call in held:
            if call.cancelled:
                continue
            call.instance_id = None
            if call.call_id in charged:
                call.attempts += 1
            (give_up if call.attempts > self.max_retries or record is None else retry).append(call)
        if not retry and not give_up:
            return []
        actions: list[Action] = []
        if record is not None and retry:
            record.pending.extendleft(reversed(retry))
        if give_up:
            actions.append(CallsFailed(give_up, WorkerLost(
                f"{reason}; the call was lost {give_up[0].attempts} times "
                f"(max_retries={self.max_retries})")))
        return actions

