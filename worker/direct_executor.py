"""Direct mode: calls run one after another inside the library process itself.

No fork, so a call costs microseconds; the price is no isolation (a call that changes
global state changes it for the next). A call with a timeout runs under an alarm that
interrupts it (:func:`serverless.worker.limits.run_with_alarm`). A function that raises
only fails its own call. Results are handed to ``emit`` after each call; the library loop
sends them in batches. ``running`` is told which call runs (0: none), so that a call that
kills the process is known to be that call (:mod:`.journal`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from serverless.protocol import CallStatus

from .call_runner import run_call
from .limits import run_with_alarm

__all__ = ["DirectExecutor"]

_CANCELLED = int(CallStatus.CANCELLED)


class DirectExecutor:
    """Runs queued calls in this process, a bounded run of them per loop turn."""

    def __init__(
        self,
        functions: Mapping[str, Callable[..., Any]],
        emit: Callable[[tuple], None],
        turn_seconds: float = 0.002,
        running: Callable[[int], None] = lambda call_id: None,
    ) -> None:
        self._functions = functions
        self._emit = emit
        self._running = running
        self._queue: deque[tuple] = deque()
        self._turn_seconds = turn_seconds

    def submit(self, entries: list[tuple]) -> None:
        self._queue.extend(entries)

    def cancel(self, call_ids: set[int]) -> None:
        kept = deque()
        for entry in self._queue:
            if entry[0] in call_ids:
                self._emit((entry[0], _CANCELLED, b"", 0.0))
            else:
                kept.append(entry)
        self._queue = kept

    def run_turn(self, clock: Callable[[], float]) -> None:
        """Run queued calls until the queue is empty or a turn's time is used up."""
        queue, functions, emit, running = self._queue, self._functions, self._emit, self._running
        stop_at = clock() + self._turn_seconds
        try:
            while queue:
                entry = queue.popleft()
                running(entry[0])
                emit(run_with_alarm(functions, entry) if entry[3] else run_call(functions, entry))
                if clock() >= stop_at:
                    return
        finally:
            running(0)

    def busy(self) -> bool:
        return bool(self._queue)
