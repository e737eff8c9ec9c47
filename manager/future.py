"""The future ``Manager.call`` returns: a ``concurrent.futures.Future`` that can stop its call.

It is a real ``concurrent.futures.Future`` (``wait``, ``as_completed``, callbacks all work).
It stays PENDING until the call ends (it is never marked RUNNING), so ``cancel()`` works
on a queued call and on a running one alike: the manager drops the call or kills the
process running it, and the future ends CANCELLED.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["CallFuture"]


class CallFuture(Future):
    """A call's future; ``call_id`` names the call, ``library``/``function`` what it runs."""

    def __init__(self, call_id: int, library: str, function: str,
                 on_cancel: Callable[[CallFuture], None] | None) -> None:
        super().__init__()
        self.call_id = call_id
        self.library = library
        self.function = function
        self._on_cancel = on_cancel
        self.record: Any = None  # the manager's CallRecord

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            on_cancel, self._on_cancel = self._on_cancel, None
            on_cancel(self)
        return cancelled

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Finish the future unless it is already done (cancelled by the user)."""
        if self.done():
            return
        try:
            if error is None:
                self.set_result(value)
            else:
                self.set_exception(error)
        except Exception:  # InvalidStateError: cancelled in between
            pass

    def __repr__(self) -> str:
        return f"<CallFuture #{self.call_id} {self.library}.{self.function} {self._state.lower()}>"
