"""``serverless.Executor``: a drop-in ``concurrent.futures.Executor`` over a Manager.

    ex.submit(fn, *args) --> which library serves fn? (installed on first use)
                               fn seen before (same object) ---------> its library
                               else: fn pickled by value; the same bytes as a library
                               already made (an equal lambda, a closure over equal
                               values) ------------------------------> that library
                               else: a new Library("<name>-<hash>", {"fn": fn}, options)
                         --> manager.submit(library, "fn", args, kwargs) --> a Future
    ex.map(fn, *its, chunksize=n) --> manager.map(...): n items per remote call

Functions travel by value, so functions from ``__main__``, a notebook or a closure work.
A function is captured when the executor first sees it: changing the function's globals
afterwards does not reach instances already made. Each distinct function is one library
(its own instances, imports and setup); the ``Library`` options given to the executor
apply to each of them.

The executor owns the Manager it starts (``Executor(mode="fork", local_cores=4)``: the
Library and Manager options in one list) and shuts it down with itself; given one
(``Executor(manager)``, e.g. serving remote workers), it only removes the libraries it
installed and leaves the manager running.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import hashlib
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .library import Library
from .serialization import dumps_by_value

__all__ = ["Executor"]

_FUNCTION = "fn"
_LIBRARY_OPTIONS = ("imports", "setup", "mode", "slots", "cores", "memory_mb", "timeout",
                    "max_instances", "env", "python", "discover", "learn_imports",
                    "environment")


class Executor(concurrent.futures.Executor):
    """Runs callables on serverless library instances; see the module docstring.

    Args:
        manager: an existing :class:`serverless.Manager` to use (left running at shutdown);
            default: a new one, started with the Manager options among ``options``.
        max_workers: as for ``ProcessPoolExecutor``: with a manager of its own, the local
            worker's cores (``local_cores``); must be > 0.
        options: :class:`serverless.Library` options (``mode``, ``imports``, ``setup``,
            ``slots``, ``timeout``, ...) applied to each function's library, and
            :class:`serverless.Manager` options (``secret``, ``local_cores``, ...).
    """

    def __init__(self, manager: Any = None, *, max_workers: int | None = None,
                 **options: Any) -> None:
        from serverless.manager.manager import Manager

        library_options = {k: options.pop(k) for k in _LIBRARY_OPTIONS if k in options}
        if max_workers is not None:
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            if manager is not None:
                raise TypeError("max_workers applies to a manager the executor starts")
            options.setdefault("local_cores", max_workers)
        Library("probe", {_FUNCTION: len}, **library_options)  # bad options fail here
        self._library_options = library_options
        if manager is None:
            self._manager = Manager(**options)
            self._owns_manager = True
        else:
            if options:
                raise TypeError(f"Manager options given with a manager: {', '.join(options)}")
            self._manager = manager
            self._owns_manager = False
        self._lock = threading.Lock()
        self._shutdown = False
        self._by_object: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._by_value: dict[bytes, str] = {}  # digest of the pickled function -> library
        self._futures: weakref.WeakSet[concurrent.futures.Future] = weakref.WeakSet()
        self._releasing: threading.Thread | None = None
        # at exit, finish what was submitted (a weak reference: the executor may be freed)
        self._exit_hook = functools.partial(_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    @property
    def manager(self) -> Any:
        """The :class:`serverless.Manager` the calls go through."""
        return self._manager

    def libraries(self) -> list[str]:
        """The names of the libraries made so far, one per distinct function."""
        with self._lock:
            return sorted(set(self._by_value.values()))

    # --- the Executor interface -------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            library = self._library_for(fn)
            future = self._manager.submit(library, _FUNCTION, args, kwargs)
            self._futures.add(future)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Results in order; ``chunksize`` items travel and run as one remote call (as
        with ``ProcessPoolExecutor``, an exception fails its whole chunk)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            library = self._library_for(fn)
            futures = self._manager._map_futures(library, _FUNCTION, iterables, chunksize)
            self._futures.update(futures)
        return _in_order(futures, end, chunked=chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` cancels the calls not yet sent to an instance
        (those running finish); ``wait`` waits for the rest. Then the libraries it made
        are removed, and a manager it started is shut down (once its calls are done,
        even with ``wait=False``)."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            # what the manager has sent to instances runs on; the rest is cancelled
            if not self._manager._closed:
                self._manager._barrier(timeout=10)
            for future in futures:
                record = getattr(future, "record", None)
                if record is not None and record.instance_id is None:
                    future.cancel()
        if first:
            self._releasing = threading.Thread(target=self._release, args=(futures,),
                                               daemon=True, name="serverless-executor-shutdown")
            self._releasing.start()
        if wait:
            self._releasing.join()
            atexit.unregister(self._exit_hook)
        # else: the atexit hook still joins it, so the calls finish before the program ends

    # --- inside -----------------------------------------------------------------------

    def _library_for(self, fn: Callable[..., Any]) -> str:
        """The library serving ``fn``, made and installed on first use (under the lock)."""
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        try:
            return self._by_object[fn]
        except (KeyError, TypeError):  # new, or not weakly referenceable
            pass
        blob = dumps_by_value(fn, [fn])
        digest = hashlib.sha256(blob).digest()
        name = self._by_value.get(digest)
        if name is None:
            label = re.sub(r"[^A-Za-z0-9_.-]+", "_", getattr(fn, "__qualname__", "") or
                           getattr(fn, "__name__", "") or type(fn).__name__).strip("_.")
            name = f"{label or 'function'}-{digest.hex()[:12]}"
            library = _FunctionLibrary(name, {_FUNCTION: fn}, **self._library_options)
            library.capture()
            self._manager.install(library)
            self._by_value[digest] = name
        try:
            self._by_object[fn] = name
        except TypeError:
            pass
        return name

    def _release(self, futures: list[concurrent.futures.Future]) -> None:
        concurrent.futures.wait(futures)
        if self._owns_manager:
            self._manager.shutdown()
            return
        for name in set(self._by_value.values()):
            try:
                self._manager.remove(name)
            except Exception:  # the manager was shut down, or the library replaced
                pass



def _released(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this library's function was captured when it was installed")


class _FunctionLibrary(Library):
    """A library of one function, pickled once when it is made and then let go of, so
    that the executor keeps no reference to the function or what it holds (a bound
    method's object): the caller's objects are freed as with ``ProcessPoolExecutor``."""

    def capture(self) -> None:
        self._blob = super().serialize()
        self.functions = {_FUNCTION: _released}
        self.setup = None if self.setup is None else _released

    def serialize(self) -> bytes:
        return self._blob


def _at_exit(executor_ref: weakref.ref) -> None:
    """The program ends without shutdown(): finish the calls made, as
    ``ProcessPoolExecutor`` does, then stop."""
    executor = executor_ref()
    if executor is not None:
        try:
            executor.shutdown(wait=True)
        except Exception:
            pass


def _in_order(futures: list[concurrent.futures.Future], end: float | None,
              chunked: bool) -> Iterator[Any]:
    """Yield each future's result in order (each chunk's items, when chunked); the
    futures not reached are cancelled if the caller stops early. Nothing here keeps a
    reference to a result once it is handed out (as ``ProcessPoolExecutor.map``)."""
    futures.reverse()  # pop from the end
    try:
        while futures:
            remaining = None if end is None else max(0.0, end - time.monotonic())
            if chunked:
                values = _take(futures.pop(), remaining)
                values.reverse()
                while values:
                    yield values.pop()
            else:
                yield _take(futures.pop(), remaining)
    finally:
        for future in futures:
            future.cancel()


def _take(future: concurrent.futures.Future, timeout: float | None) -> Any:
    """The result of a future only the caller holds, which then lets go of it."""
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()  # timed out (or interrupted): the call is not wanted any more
        raise
    finally:
        future._result = None
