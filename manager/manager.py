"""The :class:`Manager`: what a user's program talks to.

``Manager.call`` pickles the arguments in the caller's thread (so a bad argument raises at
once), creates a :class:`~concurrent.futures.Future` and queues the call for the loop
thread (:mod:`serverless.manager.loop`), which batches calls to workers and settles the
futures as results come back. The functions themselves travel once per library instance
(``install`` serializes the library once), never per call.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import shutil
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from serverless.errors import (
    ArgumentsTooLarge,
    ManagerClosed,
    SerializationError,
    UnknownFunction,
    UnknownLibrary,
)
from serverless.data.file import find_files
from serverless.library import CHUNK_FUNCTION, Library
from serverless.tempdirs import run_directory
from serverless.protocol import arguments_size, call_budget, call_size
from serverless.safe_files import private_dir
from serverless.security import ManagerSecret
from serverless.serialization import dumps_args
from serverless.transport import raise_descriptor_limit

from .config import ManagerConfig
from .future import CallFuture
from .local_workers import LocalWorkers
from .loop import ManagerLoop
from .queue_limit import QueueLimit
from .records import CallRecord, WorkerRecord
from .scheduler import Scheduler

__all__ = ["Manager"]

log = logging.getLogger("serverless.manager")


class Manager:
    """Routes calls to library instances on workers; returns futures.

    ``Manager()`` starts local workers using this machine's cores (the embedded default).
    ``Manager(port=9123, local_workers=0)`` serves only remote workers, started with
    ``serverless-worker HOST:PORT``. Further settings: see :class:`ManagerConfig`.
    Every manager has a secret (generated unless given; ``insecure=True`` is the loopback-only
    opt-out): workers started by hand need ``--secret-file`` naming :attr:`secret_file`, or
    a file with the same secret (docs/security.md).

    Use it as a context manager: leaving the block waits for the calls made in it, then
    stops the workers it started (or, when the block raised, fails the unfinished calls
    with :class:`~serverless.ManagerClosed` at once).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 local_workers: int | None = None, **options: Any) -> None:
        unknown = set(options) - ManagerConfig.names()
        if unknown:
            raise TypeError(f"unknown Manager options: {', '.join(sorted(unknown))}")
        self.config = ManagerConfig(host=host, port=port, local_workers=local_workers, **options)
        self._libraries: dict[str, Library] = {}
        self._call_ids = itertools.count(1)
        # arguments up to this size fit any call's entry: longer ones are measured exactly
        self._argument_room = call_budget(self.config.max_message_bytes) - 65536
        self._lock = threading.Lock()
        self._closed = False
        raise_descriptor_limit()  # idle connections must not keep our own workers out
        made_log_dir = self.config.log_dir is None
        self._log_dir = (private_dir(self.config.log_dir, "log_dir") if self.config.log_dir
                         else run_directory("manager"))
        self._secret: ManagerSecret | None = None
        try:  # a constructor that fails leaves no directory, socket, thread or process
            self._secret = ManagerSecret(self.config.secret, self.config.secret_file,
                                         self.config.insecure)
            count = 1 if self.config.local_workers is None else self.config.local_workers
            local = None
            if count:
                local = LocalWorkers(count, self.config.local_cores, self.config.local_memory_mb,
                                     self._log_dir, connect_timeout=self.config.heartbeat_timeout,
                                     secret_file=self._secret.file)
            self._scheduler = Scheduler(self.config.policy, self.config.max_retries,
                                        self.config.max_start_failures, self.config.start_backoff,
                                        self.config.call_grace)
            self._loop = ManagerLoop(self.config, self._scheduler, local, keys=self._secret.keys)
        except BaseException:
            self._closed = True
            if self._secret is not None:
                self._secret.cleanup()
            if made_log_dir:
                shutil.rmtree(self._log_dir, ignore_errors=True)
            raise
        # one callable shared by every future (not a bound method each), holding the loop only
        self._on_cancel = functools.partial(_tell_loop_cancelled, self._loop)
        self._queue_limit: QueueLimit | None = None  # ManagerConfig.max_queued
        if self.config.max_queued is not None:
            self._queue_limit = QueueLimit(self.config.max_queued,
                                           self.config.queue_full == "block", self._loop.thread)
        self._loop.start()
        # a Manager dropped or left open at exit stops its loop without joining it from the
        # garbage collector (which may run on the loop thread itself); see _abandon
        self._finalizer = weakref.finalize(self, _abandon, self._loop, self._secret)
        self._finalizer.atexit = False  # at exit, _stop_at_exit joins with a bound instead
        _LIVE.add(self._loop)

    # --- properties -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` for ``serverless-worker`` to connect to."""
        return str(self._loop.endpoint)

    @property
    def log_dir(self) -> Path:
        """Where local workers write library logs: ``worker-N/<library>-<instance>.log``
        holds what that instance and its calls printed to stdout and stderr."""
        return self._log_dir

    @property
    def secret_file(self) -> Path | None:
        """The file holding the secret, for ``serverless-worker --secret-file`` (None only
        with ``insecure=True``). A secret given in memory or generated is written there with
        mode 0600, in a private directory removed at shutdown."""
        return self._secret.file if self._secret is not None else None

    def libraries(self) -> list[str]:
        return sorted(self._libraries)

    def workers(self) -> list[WorkerRecord]:
        """The workers connected now (``worker_id`` is the raw identity, ``name`` its text)."""
        return self._loop.workers()

    def warnings(self) -> list[str]:
        """What library instances reported once (also logged as warnings), oldest first:
        e.g. an instance that forks calls while it has several threads."""
        return list(self._loop.warnings)

    def learned_imports(self, library: str) -> dict[str, Any]:
        """What the fork-mode instances of ``library`` learned to import between forks
        (``"learned"``: module names) and refused to (``"rejected"``: name -> reason);
        see ``Library(learn_imports=...)``."""
        return self._loop.learned_imports.snapshot(library)

    def local_worker_pids(self) -> list[int]:
        local = self._loop.local_workers
        return local.pids() if local is not None else []

    # --- libraries --------------------------------------------------------------------

    def install(self, library: Library) -> None:
        """Make ``library`` callable. Instances are deployed when calls need them.

        Installing a library again under the same name replaces it: running instances are
        stopped and new ones get the new code; calls already queued stay queued.
        """
        if not isinstance(library, Library):
            raise TypeError(f"install() takes a serverless.Library, not {type(library).__name__}")
        self._check_open()
        if library.environment is not None:  # its archive is served like a File's
            library.environment.resolve(self._loop.data.local)
        blob = library.serialize()
        if len(blob) > call_budget(self.config.max_message_bytes):
            raise SerializationError(
                f"library {library.name!r} pickles to {len(blob):,} bytes, over the manager's "
                f"limit of {self.config.max_message_bytes:,} (max_message_bytes): a worker could "
                "not receive it; load large data in setup() instead, or raise the limit")
        with self._lock:
            self._libraries[library.name] = library
        self._loop.command("install", (library.name, library, blob))

    def remove(self, name: str) -> None:
        """Uninstall a library: stop its instances; its unfinished calls fail with UnknownLibrary."""
        with self._lock:
            if self._libraries.pop(name, None) is None:
                raise UnknownLibrary(f"no library named {name!r} is installed")
        self._loop.command("remove", name)

    # --- calls ------------------------------------------------------------------------

    def call(self, library: str, function: str, /, *args: Any, **kwargs: Any) -> CallFuture:
        """Run ``library.function(*args, **kwargs)`` remotely; returns a future at once
        (with ``max_queued`` set, it may first wait for room, or raise QueueFull)."""
        record = self._new_limited_call(library, function, args, kwargs, None)
        self._loop.command("call", record)
        return record.future

    def submit(self, library: str, function: str, args: tuple = (), kwargs: dict | None = None,
               *, timeout: float | None = None) -> CallFuture:
        """Like :meth:`call`, with the arguments given explicitly and per-call options.

        ``timeout`` (seconds) overrides the library's timeout for this call only.
        """
        record = self._new_limited_call(library, function, args, kwargs or {}, timeout)
        self._loop.command("call", record)
        return record.future

    def map(self, library: str, function: str, *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """Like ``Executor.map``: submit every call at once, yield results in order.

        ``chunksize`` > 1 sends the items in chunks of that many, each chunk one remote call
        (fewer messages, one fork per chunk in fork mode): as with ``ProcessPoolExecutor``,
        an exception fails its whole chunk, and the library's ``timeout`` applies per chunk.
        With ``max_queued`` it submits what has room, waiting for more (or raising
        QueueFull, then submitting none)."""
        futures = self._map_futures(library, function, iterables, chunksize)
        results = _results_in_order(futures, timeout)
        return results if chunksize == 1 else itertools.chain.from_iterable(results)

    def _map_futures(self, library: str, function: str, iterables: tuple[Iterable[Any], ...],
                     chunksize: int) -> list[Future]:
        """Submit a map's calls (``chunksize`` items per call); their futures, in order."""
        if self._queue_limit is None:
            records = self._map_records(library, function, iterables, chunksize)
            self._send_records(records)
            return [r.future for r in records]
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        calls = list(zip(*iterables))
        if chunksize == 1:
            return self._limited_map(library, function, calls)
        self._check_function(library, function)
        chunks = [(function, calls[i:i + chunksize]) for i in range(0, len(calls), chunksize)]
        return self._limited_map(library, CHUNK_FUNCTION, chunks)

    def _new_limited_call(self, library: str, function: str, args: tuple, kwargs: dict,
                          timeout: float | None) -> CallRecord:
        limit = self._queue_limit
        if limit is None:
            return self._new_call(library, function, args, kwargs, timeout)
        limit.take(1, self._check_open)
        try:
            record = self._new_call(library, function, args, kwargs, timeout)
        except BaseException:
            limit.give_back()
            raise
        record.future.add_done_callback(limit.give_back)
        return record

    def _limited_map(self, library: str, function: str, arguments: list[tuple]) -> list[Future]:
        limit = self._queue_limit
        assert limit is not None
        futures: list[Future] = []
        batch: list[CallRecord] = []

        def hand_over() -> None:
            if batch:
                self._loop.command("calls", list(batch))
                batch.clear()

        if not limit.block:
            limit.take(len(arguments), self._check_open)  # all or none
        for index, args in enumerate(arguments):
            if limit.block:
                limit.take(1, self._check_open, before_wait=hand_over)
            try:
                record = self._new_call(library, function, args, {}, None)
            except BaseException:  # e.g. an argument that cannot be pickled
                limit.give_back(n=1 if limit.block else len(arguments) - index)
                for record in batch:  # made, never queued: they end cancelled
                    record.future.cancel()
                raise
            record.future.add_done_callback(limit.give_back)
            batch.append(record)
            futures.append(record.future)
        hand_over()
        return futures

    def cancel(self, future: Future) -> bool:
        """Cancel a call (queued or running); same as ``future.cancel()``."""
        return future.cancel()

    def _map_records(self, library: str, function: str, iterables: tuple[Iterable[Any], ...],
                     chunksize: int) -> list[CallRecord]:
        """The calls of a map, ``chunksize`` items per call (checked, not yet sent)."""
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return [self._new_call(library, function, args, {}, None) for args in zip(*iterables)]
        self._check_function(library, function)
        items = zip(*iterables)
        records = []
        while chunk := list(itertools.islice(items, chunksize)):
            records.append(self._new_call(library, CHUNK_FUNCTION, (function, chunk), {}, None))
        return records

    def _send_records(self, records: list[CallRecord]) -> None:
        self._loop.command("calls", records)

    def _barrier(self, timeout: float | None = None) -> bool:
        """Wait until the loop has carried out every command given before (calls
        submitted so far are queued or sent to an instance)."""
        done = threading.Event()
        self._loop.command("barrier", done)
        return done.wait(timeout)

    def _check_function(self, library: str, function: str) -> Library:
        self._check_open()
        spec = self._libraries.get(library)
        if spec is None:
            raise UnknownLibrary(f"no library named {library!r} is installed "
                                 f"(installed: {', '.join(sorted(self._libraries)) or 'none'})")
        if function not in spec.functions and function != CHUNK_FUNCTION:
            raise UnknownFunction(f"library {library!r} has no function {function!r} "
                                  f"(it has: {', '.join(sorted(spec.functions))})")
        return spec

    def _new_call(self, library: str, function: str, args: tuple, kwargs: dict,
                  timeout: float | None) -> CallRecord:
        spec = self._check_function(library, function)
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive seconds")
        if type(args) is not tuple:
            args = tuple(args)
        files = self._declare_files(args, kwargs)
        blob = dumps_args(args, kwargs)
        if type(blob) is not bytes or len(blob) > self._argument_room:  # else: it fits
            size = call_size(function, blob)
            if size > call_budget(self.config.max_message_bytes):
                raise ArgumentsTooLarge(
                    f"{library}.{function}: the pickled arguments are {arguments_size(blob):,} "
                    f"bytes, over the manager's limit of {self.config.max_message_bytes:,} "
                    "(max_message_bytes): pass less, or raise the limit", arguments_size(blob),
                    self.config.max_message_bytes)
        call_id = next(self._call_ids)
        future = CallFuture(call_id, library, function, self._on_cancel)
        record = CallRecord(call_id, library, function, blob,
                            timeout if timeout is not None else spec.timeout, future)
        future.record = record
        record.files = files
        return record

    def _declare_files(self, args: tuple, kwargs: dict) -> tuple:
        """The FileSpecs of the serverless.File arguments, resolved now (hashed once per
        stat identity), so a missing path raises here and nothing is queued."""
        if not args and not kwargs:
            return ()
        found = list(find_files(args))
        if kwargs:
            found += find_files(kwargs)
        if not found:
            return ()
        specs = {}
        for file in found:
            spec, _ = file.resolve(self._loop.data.local)
            specs[spec.content_id] = tuple(spec)
        return tuple(specs.values())

    # --- shutting down ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosed("the manager is shut down")
        reason = self._loop.closed_reason
        if reason is not None:  # the loop ended on its own (it failed)
            raise ManagerClosed(reason)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: float | None = None) -> None:
        """Stop the manager and the workers it started.

        With ``wait`` (and not ``cancel_futures``), first wait up to ``timeout`` seconds
        for every call made so far to finish. Whatever is still unfinished then fails
        with :class:`~serverless.ManagerClosed`; no future is left pending. Safe to call
        from any thread, from a done-callback, and more than once; it never waits forever
        for the loop thread (at most :data:`JOIN_TIMEOUT` seconds).
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        if threading.current_thread() is self._loop.thread:
            self._loop.stop("the manager shut down")  # it cannot wait for itself
            return
        if first and wait and not cancel_futures:
            self._loop.wait_idle(timeout)
        _stop_and_join(self._loop, "the manager shut down")
        assert self._secret is not None
        self._secret.cleanup()
        self._finalizer.detach()

    close = shutdown

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)


JOIN_TIMEOUT = 30.0  # seconds: the loop stops local workers within about 10 s (grace, SIGKILL)

_LIVE: set[ManagerLoop] = set()  # loops not yet stopped by shutdown(), for _stop_at_exit


def _stop_and_join(loop: ManagerLoop, reason: str) -> None:
    loop.stop(reason)
    if not loop.join(JOIN_TIMEOUT):
        log.error("the manager loop did not stop within %.0f s; giving up on it", JOIN_TIMEOUT)
    _LIVE.discard(loop)


def _abandon(loop: ManagerLoop, secret: ManagerSecret) -> None:
    """A Manager was garbage-collected without shutdown(): stop its loop, do not wait.

    This may run in any thread (the loop's own included), so it only queues the stop;
    the loop fails what is unfinished and stops its local workers by itself.
    """
    loop.stop("the Manager was garbage-collected without shutdown()")
    _LIVE.discard(loop)
    secret.cleanup()


@atexit.register
def _stop_at_exit() -> None:
    """At interpreter exit, stop every manager left open, each within JOIN_TIMEOUT.

    Like ProcessPoolExecutor's exit hook, except that unfinished calls are not waited
    for: they fail with ManagerClosed and the local workers are stopped, so a script that
    never calls shutdown() exits at once and leaves no process behind.
    """
    for loop in list(_LIVE):
        _stop_and_join(loop, "the program exited without Manager.shutdown()")


def _tell_loop_cancelled(loop: ManagerLoop, future: CallFuture) -> None:
    try:
        loop.command("cancel", future.record)
    except ManagerClosed:
        pass  # the loop has ended: it failed or dropped the call already


def _results_in_order(futures: list[Future], timeout: float | None) -> Iterator[Any]:
    end = None if timeout is None else time.monotonic() + timeout
    try:
        for future in futures:
            remaining = None if end is None else max(0.0, end - time.monotonic())
            yield future.result(remaining)
    finally:
        for future in futures:
            future.cancel()
