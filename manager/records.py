"""The scheduler's records (calls, workers, instances, libraries) and the actions it returns.

Records are plain mutable objects owned by the scheduler; actions are what the manager
loop must carry out (send a message, resolve a future). None of them does I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serverless.protocol import arguments_size

if TYPE_CHECKING:
    from serverless.serialization import Arguments

__all__ = [
    "CallRecord",
    "WorkerRecord",
    "InstanceRecord",
    "LibraryRecord",
    "STARTING",
    "READY",
    "STOPPING",
    "DRAINING",
    "Action",
    "DeployInstance",
    "SendCalls",
    "StopInstanceAction",
    "CancelCalls",
    "CallsFinished",
    "CallsFailed",
]

STARTING, READY, DRAINING, STOPPING = "starting", "ready", "draining", "stopping"


class CallRecord:
    """One call from submission to its end. ``future`` is opaque to the scheduler."""

    __slots__ = ("call_id", "library", "function", "args", "size", "timeout", "future",
                 "attempts", "instance_id", "cancelled", "files")

    def __init__(self, call_id: int, library: str, function: str, args: Arguments,
                 timeout: float | None, future: Any) -> None:
        self.call_id = call_id
        self.library = library
        self.function = function
        self.args = args
        self.size = len(args) if type(args) is bytes else arguments_size(args)  # on the wire
        self.timeout = timeout
        self.future = future
        self.attempts = 0  # times it may have been running when its instance was lost
        self.instance_id: int | None = None  # where it runs now, if dispatched
        self.cancelled = False
        self.files: tuple = ()  # FileSpecs of the serverless.File inputs (manager.data)

    def entry(self) -> tuple:
        """Its entry in a Calls batch."""
        return (self.call_id, self.function, self.args, self.timeout)


@dataclass
class WorkerRecord:
    worker_id: str
    cores: float
    memory_mb: int
    hostname: str = ""
    used_cores: float = 0.0
    used_memory_mb: int = 0
    instances: set[int] = field(default_factory=set)
    outstanding_bytes: int = 0  # arguments of the calls its instances hold
    byte_blocked: bool = False  # a dispatch stopped at its byte budget: reschedule on results

    def fits(self, cores: float, memory_mb: int) -> bool:
        return (self.used_cores + cores <= self.cores + 1e-9
                and self.used_memory_mb + memory_mb <= self.memory_mb)


@dataclass
class InstanceRecord:
    instance_id: int
    library: str
    worker_id: str
    cores: float
    memory_mb: int
    state: str = STARTING
    outstanding: dict[int, CallRecord] = field(default_factory=dict)
    window: int = 1  # how many calls it may hold: its slots plus the calls queued ahead
    outstanding_bytes: int = 0  # their arguments' size, bounded too (SchedulingPolicy)
    served: int = 0

    def room(self) -> int:
        """Calls it may still be sent (by count; the scheduler also checks bytes)."""
        return self.window - len(self.outstanding) if self.state == READY else 0


@dataclass
class LibraryRecord:
    """An installed library: its spec, its queue of calls not yet sent, its instances."""

    name: str
    spec: Any  # serverless.Library
    blob: bytes
    pending: deque[CallRecord] = field(default_factory=deque)
    instances: set[int] = field(default_factory=set)
    start_failures: int = 0
    crash_streak: int = 0  # instances that died after starting, with no result in between
    failed: BaseException | None = None
    deploy_not_before: float = 0.0
    mean_duration: float | None = None  # moving average of a call's run time (seconds)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the manager loop must do."""


@dataclass(frozen=True, slots=True)
class DeployInstance(Action):
    worker_id: str
    instance_id: int
    library: str


@dataclass(frozen=True, slots=True)
class SendCalls(Action):
    worker_id: str
    instance_id: int
    calls: list


@dataclass(frozen=True, slots=True)
class StopInstanceAction(Action):
    worker_id: str
    instance_id: int


@dataclass(frozen=True, slots=True)
class CancelCalls(Action):
    worker_id: str
    instance_id: int
    call_ids: tuple


@dataclass(frozen=True, slots=True)
class CallsFinished(Action):
    """Results arrived: ``results`` holds ``(call, status, payload, duration)``."""

    results: list


@dataclass(frozen=True, slots=True)
class CallsFailed(Action):
    """These calls end with ``error`` (an exception instance, shared)."""

    calls: list
    error: BaseException
