"""The library process: a fresh interpreter that loads one library and serves its calls.

Started by the worker agent as ``python -m serverless.worker.library_runtime FD AGENT_PID
JOURNAL_FD``, where FD is one end of a local stream socket to the agent and JOURNAL_FD the
crash journal (:mod:`.journal`: the calls running, the results not yet sent)::

    agent --Deploy--> load functions, import modules, run setup, gc.freeze()
          <--InstanceReady (or InstanceFailed with the traceback, then exit 3)
    agent --Calls---> executor (fork: a child per call; direct: run here)
          <--Results   batches: what is ready at the end of a loop pass (see below)
          <--ImportsLearned  fork mode: modules calls imported, now imported here between
                             forks (or refused, once each): see import_learning
    agent --Cancel--> kill those calls' children / drop them from the queue
    agent --StopInstance, or EOF on the socket--> kill children, exit 0

The loop is single-threaded (it forks) and waits in one ``epoll`` on the agent's socket
and the result pipes of children. It never polls its parent: EOF on the socket means the
agent is gone, and the kernel kills this process if the agent dies (PR_SET_PDEATHSIG).

Results leave at the end of each loop pass. In fork mode, while enough calls are still
queued here to keep every slot busy for a while (at least :data:`RESULT_HOLD_QUEUE` per
slot), results are held up to :data:`RESULT_HOLD_SECONDS` (or :data:`RESULT_HOLD_COUNT` of
them) so that one message carries several: every message costs the agent and the manager
a wake-up each (docs/performance.md has the cost measured). Once the queue runs low they leave
at once, so the manager's refill arrives before the slots idle, and a lone call is never
held. Every result is also written to the crash journal until it is sent, and the journal
names the calls running, so that an instance that dies loses no result and the manager
charges the crash to the calls that were running only.

Exit codes: 0 stopped as asked or agent gone; 2 bad command line or protocol;
3 the library failed to start (the traceback was sent in InstanceFailed).
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from serverless.context import InstanceContext, set_current_instance
from serverless.errors import ProtocolError
from serverless.library import LibraryPayload
from serverless.protocol import (
    Calls,
    Cancel,
    Deploy,
    ImportsLearned,
    InstanceFailed,
    InstanceReady,
    InstanceWarning,
    Message,
    Output,
    StopInstance,
    StreamDecoder,
    batch_entries,
    clip_text,
    decode,
    encode,
    pack_stream,
    results_messages,
)
from serverless.serialization import loads_by_value

from .call_runner import with_chunks
from .direct_executor import DirectExecutor
from .fork_executor import ForkExecutor
from .journal import Journal, create_journal
from .processes import THREAD_VARIABLES, die_with_parent, set_title
from .import_learning import ImportLearner
from .output_forward import OutputForwarder

__all__ = ["main", "LibraryRuntime"]

EXIT_OK, EXIT_USAGE, EXIT_START_FAILED = 0, 2, 3
RESULT_HOLD_SECONDS = 0.025
RESULT_HOLD_COUNT = 256
RESULT_HOLD_QUEUE = 2  # queued calls per slot below which results are not held


class _Stop(Exception):
    """Leave the loop (asked to stop, or the agent is gone)."""


class LibraryRuntime:
    """One library instance: start-up, then the serving loop."""

    def __init__(self, sock: socket.socket, journal: Journal | None = None) -> None:
        self._sock = sock
        # without one from the agent (run by hand), a private one: the same code path
        self._journal = journal or Journal(create_journal("serverless-journal"))
        self._decoder = StreamDecoder()
        self._poller = select.epoll()
        self._results: list[tuple] = []
        self._held_since = 0.0  # when the oldest result not yet sent arrived (fork mode)
        self._instance_id = -1
        self._output: OutputForwarder | None = None  # Manager(forward_output=True)
        self._library = ""
        self._executor: ForkExecutor | DirectExecutor | None = None

    # --- start-up ---------------------------------------------------------------------

    def start(self) -> None:
        deploy = self._receive_deploy()
        self._instance_id = deploy.instance_id
        self._library = deploy.library
        set_title(f"library {deploy.library}#{deploy.instance_id} ({deploy.mode})")
        try:
            payload = loads_by_value(deploy.payload)
            if not isinstance(payload, LibraryPayload):
                raise TypeError(f"the deploy payload is a {type(payload).__name__}")
            for module in payload.imports:
                importlib.import_module(module)
            for module in payload.discovered_imports:
                try:
                    importlib.import_module(module)
                except Exception as exc:  # found in a function body; maybe never runs
                    print(f"serverless: could not import {module!r} ahead of calls "
                          f"({type(exc).__name__}: {exc}); calls that need it will fail",
                          file=sys.stderr, flush=True)
            _import_learned(deploy.options.get("learned_imports", ()))
            state: Any = payload.setup(*payload.setup_args) if payload.setup else None
        except BaseException as exc:
            self._send(InstanceFailed(
                deploy.instance_id,
                clip_text(f"library {deploy.library!r} failed to start: {type(exc).__name__}: {exc}"),
                clip_text(traceback.format_exc(), keep_end=True),
                True,
            ))
            raise SystemExit(EXIT_START_FAILED) from None
        set_current_instance(InstanceContext(
            deploy.library, deploy.instance_id, deploy.mode, state, payload.setup is not None
        ))
        if deploy.options.get("forward_output") is True:
            instance_id = deploy.instance_id
            self._output = OutputForwarder(lambda data: self._send(Output(instance_id, data)))
        self._executor = self._make_executor(deploy, payload)
        gc.collect()
        gc.freeze()  # children then leave the library's objects' pages shared
        self._send(InstanceReady(deploy.instance_id, os.getpid()))

    def _receive_deploy(self) -> Deploy:
        while True:
            messages = self._decoder.receive(self._sock)
            if messages is None:
                raise _Stop()
            for frames in messages:
                msg = decode(frames)
                if not isinstance(msg, Deploy):
                    raise ProtocolError(f"expected deploy first, got {msg.TAG}")
                return msg

    def _make_executor(self, deploy: Deploy, payload: LibraryPayload):
        if deploy.mode == "direct":
            return DirectExecutor(with_chunks(payload.functions), self._emit,
                                  running=self._journal.running_one)
        return ForkExecutor(
            with_chunks(payload.functions),
            deploy.slots,
            self._poller,
            self._emit,
            inherited_fds=(self._sock.fileno(), self._poller.fileno(),
                           *((self._output.fd,) if self._output is not None else ())),
            memory_mb=deploy.memory_mb,
            journal=self._journal,
            on_threads=self._threads_at_fork,
            learner=ImportLearner() if getattr(payload, "learn_imports", True) else None,
        )

    def _threads_at_fork(self, count: int) -> None:
        """The library forks with other threads: say so once, in its log and to the manager."""
        text = threads_warning(self._library, self._instance_id, count)
        print(f"serverless: warning: {text}", file=sys.stderr, flush=True)
        self._send(InstanceWarning(self._instance_id, text))

    def _emit(self, entry: tuple) -> None:
        """A call ended: its result waits in the batch, and in the journal until sent."""
        self._results.append(entry)
        if not self._journal.record(entry):
            self._flush_results()  # too large to journal: it leaves now

    # --- serving ----------------------------------------------------------------------

    def serve(self) -> None:
        executor = self._executor
        assert executor is not None
        agent_fd = self._sock.fileno()
        self._poller.register(agent_fd, select.EPOLLIN)
        output = self._output
        if output is not None:
            self._poller.register(output.fd, select.EPOLLIN)
        output_fd = output.fd if output is not None else -1
        poll = self._poller.poll
        try:
            if isinstance(executor, DirectExecutor):
                while True:
                    for fd, _ in poll(0 if executor.busy() else -1):
                        if fd == agent_fd:
                            self._read_agent()
                    executor.run_turn(time.perf_counter)
                    if output is not None:  # a call's output leaves before its result
                        output.drain()
                    self._flush_results()
            else:
                while True:
                    for fd, _ in poll(self._fork_timeout(executor)):
                        if fd == agent_fd:
                            self._read_agent()
                        elif fd != output_fd:
                            executor.on_readable(fd)
                    executor.reap()
                    executor.expire(time.monotonic())
                    if output is not None:  # a call's output leaves before its result
                        output.drain()
                    self._flush_or_hold(executor)
                    self._learn_imports(executor)
                    executor.keep_spare()
        except _Stop:
            pass
        finally:
            if isinstance(executor, ForkExecutor):
                executor.kill_all()

    def _learn_imports(self, executor: ForkExecutor) -> None:
        outcome = executor.learn_imports()
        if outcome is None:
            return
        learned, rejected = outcome
        if learned:
            print(f"serverless: learned imports {', '.join(learned)} (calls imported them; "
                  "imported here so later calls start with them)", file=sys.stderr, flush=True)
        for name, reason in rejected.items():
            print(f"serverless: not learning import {name!r}: {reason}", file=sys.stderr, flush=True)
        self._send(ImportsLearned(self._instance_id, tuple(learned), tuple(rejected.items())))

    def _fork_timeout(self, executor: ForkExecutor) -> float:
        """Seconds until a deadline, a reap or the held results are due (-1: none)."""
        wakeup = executor.next_wakeup()
        if self._results:
            release = self._held_since + RESULT_HOLD_SECONDS
            wakeup = release if wakeup is None else min(wakeup, release)
        return -1 if wakeup is None else max(0.0, wakeup - time.monotonic())

    def _flush_or_hold(self, executor: ForkExecutor) -> None:
        results = self._results
        if not results:
            return
        if executor.queued() >= RESULT_HOLD_QUEUE * executor.slots and len(results) < RESULT_HOLD_COUNT:
            now = time.monotonic()
            if not self._held_since:
                self._held_since = now
            if now - self._held_since < RESULT_HOLD_SECONDS:
                return  # busy anyway: let more results join this batch
        self._flush_results()

    def _read_agent(self) -> None:
        try:
            messages = self._decoder.receive(self._sock)
        except ConnectionError:
            messages = None
        if messages is None:
            raise _Stop()
        assert self._executor is not None
        for frames in messages:
            msg = decode(frames)
            if isinstance(msg, Calls):
                self._executor.submit(batch_entries(msg))
            elif isinstance(msg, Cancel):
                self._executor.cancel(set(msg.call_ids))
            elif isinstance(msg, StopInstance):
                self._flush_results()
                raise _Stop()
            else:
                raise ProtocolError(f"a library does not expect {msg.TAG}")

    def _flush_results(self) -> None:
        results = self._results
        if results:
            messages = results_messages(self._instance_id, results)
            results.clear()  # the executors hold its append method: keep the same list
            self._held_since = 0.0
            for message in messages:
                self._send(message)
            self._journal.sent()

    def _send(self, msg: Message) -> None:
        self._sock.sendall(b"".join(pack_stream(encode(msg))))


def threads_warning(library: str, instance_id: int, count: int) -> str:
    """What to tell the user when a fork-mode library forks with several threads."""
    names = ", ".join(t.name for t in threading.enumerate())
    limits = ", ".join(f"{name}={os.environ[name]}" for name in THREAD_VARIABLES
                       if name in os.environ)
    return (f"library {library!r} instance {instance_id} has {count} threads when it forks "
            f"(Python threads: {names}). A forked call gets only the forking thread, and a "
            "lock another thread held stays locked in the child (a hang). Threads are usually "
            "started by imports or setup(): BLAS/OpenMP pools (limited here: "
            f"{limits or 'none set'}), gRPC, logging handlers, clients with background "
            "threads. Start them inside the call instead, set the library's env= to keep "
            "thread pools at 1, or use mode='direct'. See docs/reliability.md (threads).")


def _import_learned(modules: object) -> None:
    """Modules other instances of the library learned (from the manager): best effort."""
    if not isinstance(modules, (list, tuple)):
        return
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # learned elsewhere; this node may lack it
            print(f"serverless: could not import learned module {module!r} "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m serverless.worker.library_runtime FD AGENT_PID [JOURNAL_FD]",
              file=sys.stderr)
        return EXIT_USAGE
    die_with_parent(int(argv[1]))
    faulthandler.enable()
    # the agent decides when we stop; blocked, not ignored: a forked call unblocks it cheaply
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    sock = socket.socket(fileno=int(argv[0]))
    sock.set_inheritable(False)  # processes the setup starts must not hold the agent's socket
    sock.setblocking(True)
    journal = Journal(int(argv[2])) if len(argv) == 3 else None
    runtime = LibraryRuntime(sock, journal)
    try:
        runtime.start()
        runtime.serve()
    except _Stop:
        return EXIT_OK
    except ProtocolError as exc:
        print(f"serverless library: protocol error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
