"""The library process: a fresh interpreter that loads one library and serves its calls.

Started by the worker agent as ``python -m serverless.worker.library_runtime FD``, where
FD is one end of a local stream socket to the agent::

    agent --Deploy--> load functions, import modules, run setup, gc.freeze()
          <--InstanceReady (or InstanceFailed with the traceback, then exit 3)
    agent --Calls---> executor (fork: a child per call; direct: run here)
          <--Results   one batch per loop turn, as soon as results arrive
    agent --Cancel--> kill those calls' children / drop them from the queue
    agent --StopInstance, or EOF on the socket--> kill children, exit 0

The loop is single-threaded (it forks), waits on the socket, the result pipes of children
and a SIGCHLD wakeup fd, and never polls its parent: EOF on the socket means the agent is
gone, and the kernel kills this process if the agent dies (PR_SET_PDEATHSIG).

Exit codes: 0 stopped as asked or agent gone; 2 bad command line or protocol;
3 the library failed to start (the traceback was sent in InstanceFailed).
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
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
    InstanceFailed,
    InstanceReady,
    Message,
    Results,
    StopInstance,
    StreamDecoder,
    decode,
    decode_batch,
    encode,
    encode_batch,
    pack_stream,
)
from serverless.serialization import loads_by_value

from .direct_executor import DirectExecutor
from .fork_executor import ForkExecutor
from .processes import die_with_parent, set_title

__all__ = ["main", "LibraryRuntime"]

EXIT_OK, EXIT_USAGE, EXIT_START_FAILED = 0, 2, 3
_READ_SIZE = 1 << 20


class _Stop(Exception):
    """Leave the loop (asked to stop, or the agent is gone)."""


class LibraryRuntime:
    """One library instance: start-up, then the serving loop."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = StreamDecoder()
        self._selector = selectors.DefaultSelector()
        self._results: list[tuple] = []
        self._instance_id = -1
        self._executor: ForkExecutor | DirectExecutor | None = None
        self._wakeup_r = -1

    # --- start-up ---------------------------------------------------------------------

    def start(self) -> None:
        deploy = self._receive_deploy()
        self._instance_id = deploy.instance_id
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
            state: Any = payload.setup(*payload.setup_args) if payload.setup else None
        except BaseException as exc:
            self._send(InstanceFailed(
                deploy.instance_id,
                f"library {deploy.library!r} failed to start: {type(exc).__name__}: {exc}",
                traceback.format_exc(),
                True,
            ))
            raise SystemExit(EXIT_START_FAILED) from None
        set_current_instance(InstanceContext(
            deploy.library, deploy.instance_id, deploy.mode, state, payload.setup is not None
        ))
        self._executor = self._make_executor(deploy, payload)
        gc.collect()
        gc.freeze()  # children then leave the library's objects' pages shared
        self._send(InstanceReady(deploy.instance_id, os.getpid()))

    def _receive_deploy(self) -> Deploy:
        while True:
            data = self._sock.recv(_READ_SIZE)
            if not data:
                raise _Stop()
            for frames in self._decoder.feed(data):
                msg = decode(frames)
                if not isinstance(msg, Deploy):
                    raise ProtocolError(f"expected deploy first, got {msg.TAG}")
                return msg

    def _make_executor(self, deploy: Deploy, payload: LibraryPayload):
        if deploy.mode == "direct":
            return DirectExecutor(payload.functions, self._results.append)
        self._wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, "sigchld")
        return ForkExecutor(
            payload.functions,
            deploy.slots,
            self._selector,
            self._results.append,
            self._close_in_child,
            deploy.library,
            deploy.memory_mb,
        )

    def _close_in_child(self) -> None:
        self._selector.close()
        self._sock.close()
        os.close(self._wakeup_r)

    # --- serving ----------------------------------------------------------------------

    def serve(self) -> None:
        executor = self._executor
        assert executor is not None
        self._selector.register(self._sock, selectors.EVENT_READ, "agent")
        direct = isinstance(executor, DirectExecutor)
        try:
            while True:
                timeout = self._select_timeout(executor, direct)
                for key, _ in self._selector.select(timeout):
                    if key.data == "agent":
                        self._read_agent()
                    elif key.data == "sigchld":
                        self._drain_wakeup()
                        executor.reap()  # type: ignore[union-attr]
                    else:
                        executor.on_readable(key.data)  # type: ignore[union-attr]
                if direct:
                    executor.run_turn(time.perf_counter)  # type: ignore[union-attr]
                else:
                    executor.expire(time.monotonic())  # type: ignore[union-attr]
                self._flush_results()
        except _Stop:
            pass
        finally:
            if isinstance(executor, ForkExecutor):
                executor.kill_all()

    def _select_timeout(self, executor: Any, direct: bool) -> float | None:
        if direct:
            return 0 if executor.busy() else None
        deadline = executor.next_deadline()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _read_agent(self) -> None:
        try:
            data = self._sock.recv(_READ_SIZE)
        except ConnectionError:
            data = b""
        if not data:
            raise _Stop()
        assert self._executor is not None
        for frames in self._decoder.feed(data):
            msg = decode(frames)
            if isinstance(msg, Calls):
                self._executor.submit(decode_batch(msg.payload))
            elif isinstance(msg, Cancel):
                self._executor.cancel(set(msg.call_ids))
            elif isinstance(msg, StopInstance):
                self._flush_results()
                raise _Stop()
            else:
                raise ProtocolError(f"a library does not expect {msg.TAG}")

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _flush_results(self) -> None:
        if self._results:
            batch, self._results[:] = list(self._results), []
            self._send(Results(self._instance_id, len(batch), encode_batch(batch)))

    def _send(self, msg: Message) -> None:
        self._sock.sendall(b"".join(pack_stream(encode(msg))))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m serverless.worker.library_runtime FD AGENT_PID", file=sys.stderr)
        return EXIT_USAGE
    die_with_parent(int(argv[1]))
    faulthandler.enable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when we stop
    sock = socket.socket(fileno=int(argv[0]))
    sock.set_inheritable(False)  # processes the setup starts must not hold the agent's socket
    sock.setblocking(True)
    runtime = LibraryRuntime(sock)
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
