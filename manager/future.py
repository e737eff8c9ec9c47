"""The future ``Manager.call`` returns: a ``concurrent.futures.Future`` that can stop its call.

It is a real ``concurrent.futures.Future`` (``wait``, ``as_completed``, callbacks all work).
It stays PENDING until the call ends (it is never marked RUNNING), so ``cancel()`` works
on a queued call and on a running one alike: the manager drops the call or kills the
process running it, and the future ends CANCELLED.

It is built for the hot path, where a manager settles tens of thousands of futures a
second that nobody has waited on yet:

* its ``threading.Condition`` (with the ``RLock`` inside) is made on first use, by a
  thread that waits, cancels or adds a callback; most futures never need one; the same
  goes for its lists of waiters and callbacks;
* the manager loop settles it with :meth:`CallFuture._settle`, which takes one lock shared
  by all call futures (:data:`_CREATE_LOCK`) instead: a future that has no condition yet
  has no waiter and no callback, so setting its state under that lock is all it takes;
  one that has a condition goes the usual way (``set_result`` under the condition);
* ``done()``, ``cancelled()``, ``result()`` and ``exception()`` of a finished future read
  its state without locking (a single attribute read is atomic).

Why it is race-free: a condition is only created under :data:`_CREATE_LOCK`, and whoever
creates it checks the state only after acquiring it, so either ``_settle`` saw the
condition (and notifies through it) or the waiter sees the finished state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any

__all__ = ["CallFuture", "PENDING"]

_CREATE_LOCK = threading.Lock()  # guards creating a future's condition and the fast settle
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)


class CallFuture(Future):
    """A call's future; ``call_id`` names the call, ``library``/``function`` what it runs."""

    # Future.__init__ is not called: it would build a Condition per future (see above)
    def __init__(self, call_id: int, library: str, function: str,
                 on_cancel: Callable[[CallFuture], None] | None) -> None:
        self._state = PENDING
        self._result = None
        self._exception: BaseException | None = None
        self.call_id = call_id
        self.library = library
        self.function = function
        self._on_cancel = on_cancel
        self.record: Any = None  # the manager's CallRecord

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = self.__dict__.get("_lazy_condition")
        if condition is None:
            with _CREATE_LOCK:
                condition = self.__dict__.get("_lazy_condition")
                if condition is None:
                    condition = self.__dict__["_lazy_condition"] = threading.Condition()
        return condition

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]  # used by wait()/as_completed()
        return self.__dict__.setdefault("_lazy_waiters", [])  # atomic under the GIL

    @property
    def _done_callbacks(self) -> list[Callable[[Future], object]]:  # type: ignore[override]
        return self.__dict__.setdefault("_lazy_done_callbacks", [])

    def cancel(self) -> bool:
        if self._state == FINISHED:  # final: no lock needed to say no
            return False
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            on_cancel, self._on_cancel = self._on_cancel, None
            on_cancel(self)
        return cancelled

    # --- lock-free reads of a settled state -------------------------------------------

    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in _CANCELLED

    def running(self) -> bool:
        return self._state == RUNNING

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # break the traceback cycle
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    # --- settling (the manager loop) --------------------------------------------------

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Finish the future unless it is already done (cancelled by the user)."""
        if self._state in _DONE:
            return
        with _CREATE_LOCK:
            if "_lazy_condition" not in self.__dict__:  # no waiter, no callback: just set it
                if self._state in _DONE:
                    return
                if error is None:
                    self._result = value
                else:
                    self._exception = error
                self._state = FINISHED
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
