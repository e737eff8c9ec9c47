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
* the manager loop ends it with :meth:`CallFuture._finish`, which takes one lock shared
  by all call futures (:data:`_CREATE_LOCK`) instead: a future that has no condition yet
  has no waiter and no callback, so setting its state under that lock is all it takes;
  one that has a condition is set under it, and its waiters are told, as ``set_result``
  does;
* ``done()``, ``cancelled()``, ``result()`` and ``exception()`` of a finished future read
  its state without locking (a single attribute read is atomic).

Why it is race-free: a condition is only created under :data:`_CREATE_LOCK`, and whoever
creates it checks the state only after acquiring it, so either ``_finish`` saw the
condition (and notifies through it) or the waiter sees the finished state.

Done-callbacks never run on the manager's I/O thread: a callback may block, submit more
calls, or shut the manager down (Parsl's DataFlowKernel launches dependent tasks from
them). :func:`run_callbacks` hands the future to one daemon thread,
``serverless-callbacks``, which runs its callbacks in the order the futures ended; an
exception a callback raises (even a ``BaseException``) is logged there and the next
callback runs. A callback added to a future that has already ended runs at once in the
thread that adds it, and a cancel runs them in the cancelling thread, as
``concurrent.futures`` does.
"""

from __future__ import annotations

import logging
import queue
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

__all__ = ["CallFuture", "PENDING", "run_callbacks", "on_callback_thread"]

log = logging.getLogger("serverless.manager")

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
        """Cancel the call unless it has finished; waiters and callbacks are told at once.

        ``concurrent.futures.Future.cancel`` leaves the state CANCELLED and tells no
        waiter: only an executor's ``set_running_or_notify_cancel`` would, and a call's
        future is never run that way. So this goes straight to CANCELLED_AND_NOTIFIED and
        notifies the waiters of ``wait()`` and ``as_completed()`` itself.
        """
        if self._state == FINISHED:  # final: no lock needed to say no
            return False
        with self._condition:
            if self._state in (FINISHED, RUNNING):
                return False
            if self._state in _CANCELLED:
                return True
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        on_cancel, self._on_cancel = self._on_cancel, None
        if on_cancel is not None:
            on_cancel(self)
        self._invoke_callbacks()  # in the cancelling thread, as concurrent.futures does
        return True

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

    def _finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """End the future with ``value`` or ``error`` unless it has ended (cancelled).

        Waiters are woken here; done-callbacks run on the callback thread (see
        :func:`run_callbacks`), never in the caller, which is the manager's I/O thread.
        """
        if self._state != PENDING:
            return
        with _CREATE_LOCK:
            if "_lazy_condition" not in self.__dict__:  # no waiter, no callback: just set it
                if self._state != PENDING:
                    return
                if error is None:
                    self._result = value
                else:
                    self._exception = error
                self._state = FINISHED
                return
        with self._condition:
            if self._state != PENDING:
                return
            if error is None:
                self._result = value
            else:
                self._exception = error
            self._state = FINISHED
            for waiter in self._waiters:
                if error is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            self._condition.notify_all()
        # once FINISHED, add_done_callback runs a new callback itself: this list is final
        if self.__dict__.get("_lazy_done_callbacks"):
            run_callbacks(self)

    def __repr__(self) -> str:
        return f"<CallFuture #{self.call_id} {self.library}.{self.function} {self._state.lower()}>"


class _CallbackThread:
    """The thread that runs done-callbacks of futures the manager loop ended."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, future: Future) -> None:
        self._queue.put(future)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="serverless-callbacks",
                                                    daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            future = get()
            for callback in future._done_callbacks:
                try:
                    callback(future)
                except BaseException:  # a callback's SystemExit must not end this thread
                    log.exception("a done-callback of %r raised", future)
            del future


_CALLBACKS = _CallbackThread()


def run_callbacks(future: Future) -> None:
    """Run ``future``'s done-callbacks on the callback thread (it has ended)."""
    _CALLBACKS.submit(future)


def on_callback_thread() -> bool:
    """Whether the caller runs on the done-callback thread (a callback that makes calls)."""
    return threading.current_thread() is _CALLBACKS._thread
