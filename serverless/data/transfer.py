"""The one transfer path: a chunk server and a chunk fetch, over authenticated zmq.

The manager runs a :class:`ChunkServer` for its declared local files; every worker runs one
for its cache. Workers fetch with :class:`ChunkFetch`. Both ends use
:func:`serverless.transport.bind_router` / :func:`~serverless.transport.connect_dealer`, so
with a secret they are CURVE-encrypted and ZAP-authenticated exactly like the manager link
(the server holds the derived server keypair, fetchers the client keypair)::

    fetch DEALER --("get", id, offset, length)--> server ROUTER   (WINDOW requests in flight)
                 <--("ok", id, offset, bytes)----                  one CHUNK per reply
                 <--("no", id, why)--------------                  not here / too many clients

Memory is bounded on both sides: the server reads one chunk per request (``os.pread``) and
answers at most the requests it was sent, a fetch keeps at most ``window`` chunks
requested, and each arriving chunk is written at its offset and hashed, so no file ever
sits whole in memory. Chunks on one connection arrive in order, so the hash runs over the
contiguous prefix and a fetch can resume from ``offset`` at another source after a failure.
A server answers at most ``max_clients`` fetchers at once (the manager directs transfers
within its ``upload_cap``; this is the backstop) and says ``no`` to the others; a fetch
says ``bye`` when it ends, which frees its place at once.

A fetch that hears nothing for ``stall_timeout`` seconds is a failed source: the caller
asks for another one and calls :meth:`ChunkFetch.resume` (never a hang).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq

from serverless.security import CurveKeys
from serverless.transport import bind_router, connect_dealer

from .hashing import hasher_for

__all__ = ["ChunkServer", "ChunkFetch", "CHUNK", "WINDOW", "MAX_CLIENTS", "TEST_DELAY_ENV"]

log = logging.getLogger("serverless.data")

CHUNK = int(os.environ.get("SERVERLESS_CHUNK_BYTES") or 1 << 20)  # bytes per chunk
WINDOW = int(os.environ.get("SERVERLESS_CHUNK_WINDOW") or 8)  # chunks a fetch keeps requested
MAX_CLIENTS = 4  # fetchers one server answers at once
_ACTIVE_SECONDS = 5.0  # a fetcher silent this long no longer counts against max_clients
TEST_DELAY_ENV = "SERVERLESS_TEST_CHUNK_DELAY"  # tests: seconds a server waits per chunk
_MAX_MESSAGE = CHUNK * 2 + 4096
_OFFSET = struct.Struct(">QI")


class ChunkServer:
    """Serves content by name from ``lookup(content_id) -> path or None``, in its own thread."""

    def __init__(self, host: str, lookup: Callable[[str], str | None],
                 keys: CurveKeys | None = None, max_clients: int = MAX_CLIENTS) -> None:
        self._lookup = lookup
        self._max_clients = max_clients
        self._context = zmq.Context()  # its own: bind_router puts a ZAP handler on it
        self._sock, endpoint = bind_router(self._context, host, 0, _MAX_MESSAGE, keys)
        self.port = endpoint.port
        self.address = endpoint.url()
        self._active: dict[bytes, float] = {}
        self._files: dict[str, tuple[int, float]] = {}  # content id -> (fd, last used)
        self._delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
        self.bytes_sent = 0
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="serverless-chunks", daemon=True)
        self._thread.start()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(1000))
                if self._stop_r in events:
                    return
                if self._sock in events:
                    for _ in range(64):
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._answer(frames)
                self._close_idle_files()
        except Exception:
            log.exception("the chunk server failed")
        finally:
            for fd, _ in self._files.values():
                os.close(fd)
            self._sock.close(linger=0)
            self._context.term()

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) == 2 and frames[1] == b"bye":  # a fetch ended: its slot is free
            self._active.pop(frames[0], None)
            return
        if len(frames) != 4 or frames[1] != b"get" or len(frames[3]) != _OFFSET.size:
            return  # not a fetcher of ours: nothing to say
        identity, content_id = frames[0], frames[2].decode(errors="replace")
        offset, length = _OFFSET.unpack(frames[3])
        now = time.monotonic()
        if identity not in self._active:
            for peer, seen in list(self._active.items()):
                if now - seen > _ACTIVE_SECONDS:
                    del self._active[peer]
            if len(self._active) >= self._max_clients:
                self._send(identity, [b"no", frames[2], b"busy"])
                return
        self._active[identity] = now
        fd = self._open(content_id)
        if fd is None:
            self._send(identity, [b"no", frames[2], b"missing"])
            return
        if self._delay:
            time.sleep(self._delay)
        data = os.pread(fd, min(length, CHUNK), offset)
        self.bytes_sent += len(data)
        self._send(identity, [b"ok", frames[2], frames[3], data])

    def _open(self, content_id: str) -> int | None:
        known = self._files.get(content_id)
        if known is not None:
            self._files[content_id] = (known[0], time.monotonic())
            return known[0]
        path = self._lookup(content_id)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        self._files[content_id] = (fd, time.monotonic())
        return fd

    def _close_idle_files(self) -> None:
        now = time.monotonic()
        for content_id, (fd, used) in list(self._files.items()):
            if now - used > _ACTIVE_SECONDS:  # an evicted file's space is freed soon after
                os.close(fd)
                del self._files[content_id]

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError:
            self._active.pop(identity, None)  # gone: its fetch will try elsewhere


class ChunkFetch:
    """One content fetch into ``fd``, from one source at a time (see the module docstring).

    The owner polls :attr:`sock` (None between sources) and calls :meth:`on_readable`;
    it returns ``"done"`` (every byte arrived; :meth:`digest_ok` says if the hash matches),
    ``"failed"`` (the source refused or misbehaved) or None (more to come).
    """

    def __init__(self, context: zmq.Context, content_id: str, size: int, fd: int,
                 keys: CurveKeys | None, window: int = WINDOW) -> None:
        self.content_id, self.size, self.fd = content_id, size, fd
        self.offset = 0  # bytes received, in order, written and hashed
        self.source = ""
        self.sock: zmq.Socket | None = None
        self.why = ""
        self.received_from: dict[str, int] = {}
        self._context, self._keys, self._window = context, keys, window
        self._hasher = hasher_for(content_id)
        self._requested = 0  # the next offset to ask for
        self._inflight: deque[int] = deque()
        self.last_progress = time.monotonic()

    def resume(self, source: str) -> None:
        """Fetch what is missing from ``source`` (``tcp://host:port``)."""
        self.close_socket()
        self.source = source
        self.sock, _ = connect_dealer(self._context, source.removeprefix("tcp://"), "fetch",
                                      _MAX_MESSAGE, self._keys)
        self._requested = self.offset
        self._inflight.clear()
        self.last_progress = time.monotonic()
        self._request_more()
        if self.offset >= self.size:
            self.close_socket()

    def _request_more(self) -> None:
        assert self.sock is not None
        key = self.content_id.encode()
        while len(self._inflight) < self._window and self._requested < self.size:
            length = min(CHUNK, self.size - self._requested)
            self.sock.send_multipart([b"get", key, _OFFSET.pack(self._requested, length)])
            self._inflight.append(self._requested)
            self._requested += length

    def on_readable(self) -> str | None:
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            status = self._on_reply([f.buffer for f in frames])
            if status is not None:
                self.close_socket()
                return status

    def _on_reply(self, frames: list[memoryview]) -> str | None:
        if len(frames) == 3 and bytes(frames[0]) == b"no":
            self.why = bytes(frames[2]).decode(errors="replace")
            return "failed"
        if len(frames) != 4 or bytes(frames[0]) != b"ok" or not self._inflight:
            self.why = "a malformed reply"
            return "failed"
        offset, _length = _OFFSET.unpack(frames[2])
        data = frames[3]
        if offset != self._inflight[0] or offset != self.offset or not data:
            self.why = "a chunk out of order"
            return "failed"
        self._inflight.popleft()
        os.pwrite(self.fd, data, offset)
        if self._hasher is not None:
            self._hasher.update(data)
        self.offset += len(data)
        self.received_from[self.source] = self.received_from.get(self.source, 0) + len(data)
        self.last_progress = time.monotonic()
        if self.offset >= self.size:
            return "done"
        self._request_more()
        return None

    def digest_ok(self) -> bool:
        if self._hasher is None:
            return True
        return self.content_id.split("-", 1)[1] == self._hasher.hexdigest()

    def received_digest(self) -> str:
        return self._hasher.hexdigest() if self._hasher is not None else ""

    def stalled(self, now: float, timeout: float) -> bool:
        return self.sock is not None and now - self.last_progress > timeout

    def close_socket(self) -> None:
        if self.sock is not None:
            try:  # frees our slot at the server at once (else it expires after a while)
                self.sock.send(b"bye", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self.sock.close(linger=100)
            self.sock = None
