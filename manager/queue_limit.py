"""``ManagerConfig.max_queued``: a cap on the calls unfinished at once.

A call takes a place when it is made (in the caller's thread, before anything is queued)
and gives it back when its future ends, whatever the ending (a done-callback, which the
future runs exactly once, on the manager's callback thread just after the future ends).
At the cap, a caller waits for a place or gets :class:`~serverless.QueueFull`, as
configured. The manager's loop thread and its callback thread never wait: a done-callback
that makes calls (Parsl's DataFlowKernel does) runs on the callback thread, which is the
thread that gives places back; it is let through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from serverless.errors import QueueFull

from .future import on_callback_thread

__all__ = ["QueueLimit"]

_WAIT_SLICE = 0.25  # seconds between checks that the manager is still open while waiting


class QueueLimit:
    """Counts unfinished calls against ``limit``."""

    def __init__(self, limit: int, block: bool, loop_thread: threading.Thread) -> None:
        self.limit = limit
        self.block = block
        self._loop_thread = loop_thread
        self._count = 0
        self._changed = threading.Condition(threading.Lock())

    def take(self, n: int, check_open: Callable[[], None],
             before_wait: Callable[[], None] | None = None) -> None:
        """Take ``n`` places (all or none); at the cap, raise QueueFull or wait (after
        calling ``before_wait`` once, outside the lock: ``map()`` hands over its calls)."""
        with self._changed:
            while self._count + n > self.limit:
                if threading.current_thread() is self._loop_thread or on_callback_thread():
                    break  # they end the calls that would free a place: never wait there
                if not self.block or n > self.limit:
                    raise QueueFull(
                        f"{self._count:,} calls are unfinished and max_queued is {self.limit:,}"
                        + (f" (this needs {n:,} places)" if n > 1 else ""))
                if before_wait is not None:
                    self._changed.release()
                    try:
                        before_wait()
                    finally:
                        self._changed.acquire()
                    before_wait = None
                    continue
                self._changed.wait(_WAIT_SLICE)
                check_open()
            self._count += n

    def give_back(self, _future: Any = None, n: int = 1) -> None:
        """A call ended (a done-callback), or places taken were not used."""
        with self._changed:
            self._count -= n
            self._changed.notify_all()

    @property
    def unfinished(self) -> int:
        return self._count
