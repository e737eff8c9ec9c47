"""Scheduling policy: which instance gets the next calls, which worker gets a new instance.

Each is one method behind a tiny interface so it can be swapped
(``Manager(..., policy=SchedulingPolicy(...))``) without touching the scheduler's
bookkeeping. The defaults spread load: calls go to the instance with the most room, new
instances to the worker with the most free cores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from .records import InstanceRecord, WorkerRecord

__all__ = [
    "InstanceChooser",
    "MostRoomFirst",
    "Placement",
    "MostFreeCores",
    "SchedulingPolicy",
]


class InstanceChooser(ABC):
    @abstractmethod
    def choose(self, candidates: Sequence[InstanceRecord]) -> InstanceRecord:
        """Pick the instance (all have room) that gets the next batch of calls."""


class MostRoomFirst(InstanceChooser):
    def choose(self, candidates: Sequence[InstanceRecord]) -> InstanceRecord:
        return max(candidates, key=InstanceRecord.room)


class Placement(ABC):
    @abstractmethod
    def choose(self, candidates: Sequence[WorkerRecord], cores: float, memory_mb: int) -> WorkerRecord:
        """Pick the worker (all have room for ``cores`` and ``memory_mb``) for a new instance."""


class MostFreeCores(Placement):
    def choose(self, candidates: Sequence[WorkerRecord], cores: float, memory_mb: int) -> WorkerRecord:
        return max(candidates, key=lambda w: (w.cores - w.used_cores, w.memory_mb - w.used_memory_mb))


@dataclass
class SchedulingPolicy:
    """The two choices the scheduler delegates, plus how deep it pipelines calls.

    ``queue_seconds``: how much work (in seconds of measured run time) an instance may
    hold beyond what it is running, so that it never waits for the manager; the window is
    bounded by ``min_prefetch`` and ``max_prefetch`` calls per slot.

    ``window_bytes`` and ``worker_bytes`` bound the same in bytes of arguments: beyond
    ``slots + 1`` calls (every slot busy and one call ready), an instance is sent no call
    that would take what it holds over ``window_bytes``, nor what all instances of its
    worker hold over ``worker_bytes``. So fast calls with large arguments cannot pile up
    in an agent or a library (docs/performance.md, memory under bursts).

    ``transfer_bytes_per_second``: a call with input files goes to the instance where the
    seconds to fetch what its worker lacks plus the seconds of work queued there are least.
    """

    instances: InstanceChooser = field(default_factory=MostRoomFirst)
    placement: Placement = field(default_factory=MostFreeCores)
    queue_seconds: float = 0.01
    min_prefetch: int = 1
    initial_prefetch: int = 4
    max_prefetch: int = 1024
    window_bytes: int = 16 << 20
    worker_bytes: int = 64 << 20
    transfer_bytes_per_second: float = 200e6  # prices a missing input file (locality)
