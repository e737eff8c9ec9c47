"""The worker's data thread: serves its cache to peers, fetches what its calls need.

    agent --("gate", gate_id, specs)---> is each file cached? pin it : start a fetch
          --("fetch", id, size, source)> (the manager's Fetch) fetch from that source
          --("unpin", gate_id)---------> its calls ended: entries may be evicted now
          <--("ready", gate_id)--------- every file of the gate is in the cache, pinned
          <--("failed", gate_id, exc)--- a file could not be had (CacheFull, a bad hash,
                                         a bad archive, no source): its calls fail
          <--("send", message)---------- Want / Fetched / Holdings for the manager

A fetch, per missing file: reserve room (evicting unpinned entries least recently used;
"never" fails the gate with CacheFull, "later" waits for pins to go), ask the manager for
a source (``Want``), receive chunks into ``<cache>/.incoming`` (the manager's or a peer's
:class:`~serverless.data.transfer.ChunkServer`) or download the URL in a helper thread,
check the hash, then commit (unpack, read-only, rename) in a helper thread. A source that
fails or stalls for ``stall_timeout`` seconds is reported (``Fetched(..., "failed")``);
the manager names another and the fetch resumes at the byte it reached. "forever" entries
are fetched under the node-wide lock of :meth:`Cache.forever_lock`; a worker that finds
it taken waits for the other to finish and then uses its entry.

The thread owns the :class:`~.cache.Cache` and its sockets; the agent talks to it only
through the inproc PAIR socket (Python objects, same process).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import queue
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from serverless.data.file import FileSpec
from serverless.data.transfer import ChunkFetch, ChunkServer
from serverless.errors import CacheFull, DataError, FileIntegrityError, TransferFailed
from serverless.protocol import Fetched, Holdings, Want
from serverless.security import CurveKeys
from serverless.serialization import encode_exception

from .cache import Cache, ForeverLock, remove_tree

__all__ = ["DataService"]

log = logging.getLogger("serverless.worker.data")

_ids = itertools.count()
_RETRY = 0.2  # seconds between looks at a taken "forever" lock or a full cache


@dataclass
class _Need:
    """One file this worker is getting, and the gates waiting for it."""

    spec: FileSpec
    gates: set = field(default_factory=set)
    state: str = "new"  # lock-wait, room-wait, want, fetching, downloading, committing
    fetch: ChunkFetch | None = None
    fd: int = -1
    temp: Path | None = None
    lock: ForeverLock | None = None
    source: str = ""


class DataService:
    """See the module docstring. Created and driven by the agent's thread."""

    def __init__(self, context: zmq.Context, cache: Cache, keys: CurveKeys | None,
                 host: str, manager_host: str, stall_timeout: float = 10.0) -> None:
        self.cache = cache
        self._keys = keys
        self._manager_host = manager_host
        self.stall_timeout = stall_timeout
        endpoint = f"inproc://serverless-data-{os.getpid()}-{next(_ids)}"
        self.sock = context.socket(zmq.PAIR)  # the agent's end
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self._peer = context.socket(zmq.PAIR)  # this thread's end
        self._peer.setsockopt(zmq.LINGER, 0)
        self._peer.connect(endpoint)
        self._context = zmq.Context()  # fetch sockets (the server has its own)
        # a node with a per-worker key (serverless.worker_keys) holds no server key: it
        # fetches from peers but serves none (an empty address tells the manager so).
        # The manager keeps uploads per source under its upload_cap; max_clients is a backstop
        serves = keys is None or bool(keys.server_secret)
        self.server = (ChunkServer(host, self._lookup_path, keys, max_clients=64) if serves
                       else None)
        self.address = self.server.address if self.server is not None else ""
        self._needs: dict[str, _Need] = {}
        self._gates: dict[object, set[str]] = {}  # gate -> ids not yet here
        self._gate_specs: dict[object, tuple[FileSpec, ...]] = {}
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="serverless-data-io")
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # finished helper jobs
        self._wake_r, self._wake_w = os.pipe()
        self._poller = zmq.Poller()
        self._poller.register(self._peer, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="serverless-data", daemon=True)
        self._thread.start()

    # --- the agent's side -------------------------------------------------------------

    def tell(self, command: tuple) -> None:
        self.sock.send_pyobj(command)

    def events(self) -> list[tuple]:
        out = []
        while self.sock.get(zmq.EVENTS) & zmq.POLLIN:
            out.append(self.sock.recv_pyobj())
        return out

    def close(self) -> None:
        self.tell(("stop",))
        self._thread.join(10)
        self.sock.close(linger=0)

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._send(Holdings(self.address, tuple(self._forever_ids()), ()))
            while not self._stop:
                timeout = 0 if any(n.state == "present" for n in self._needs.values()) \
                    else _RETRY if self._needs else 1.0
                events = dict(self._poller.poll(int(timeout * 1000)))
                if self._peer in events:
                    while self._peer.get(zmq.EVENTS) & zmq.POLLIN:
                        command = self._peer.recv_pyobj()
                        try:
                            self._command(command)
                        except Exception as exc:  # one bad request must not stop the thread
                            log.exception("data command %r failed", command[0])
                            if command[0] == "gate":
                                self._fail_gate(command[1], _as_data_error(exc))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                while True:
                    try:
                        job = self._done.get_nowait()
                    except queue.Empty:
                        break
                    self._job_done(*job)
                for need in list(self._needs.values()):
                    if need.fetch is not None and need.fetch.sock is not None and \
                            need.fetch.sock in events:
                        try:
                            self._on_chunks(need)
                        except OSError as exc:  # the disk is full, the cache dir is gone...
                            self._fail_need(need, _as_data_error(exc))
                self._tick()
        except Exception:
            log.exception("the data thread failed; calls needing files will fail")
            for gate in list(self._gates):
                self._fail_gate(gate, TransferFailed("the worker's data thread failed"))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for need in self._needs.values():
            self._discard(need)
        if self.server is not None:
            self.server.close()
        self._peer.close(linger=0)
        self._context.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.cache.close()

    def _command(self, command: tuple) -> None:
        kind = command[0]
        if kind == "gate":
            self._gate(command[1], tuple(FileSpec(*s) for s in command[2]))
        elif kind == "fetch":
            self._fetch_from(command[1], command[2], command[3])
        elif kind == "unpin":
            self.cache.unpin(command[1])  # "call" level entries go: _tick tells the manager
        elif kind == "stop":
            self._stop = True

    def _emit(self, event: tuple) -> None:
        self._peer.send_pyobj(event)

    def _send(self, message: object) -> None:
        self._emit(("send", message))

    def _lookup_path(self, content_id: str) -> str | None:
        """For the chunk server's thread: the file holding ``content_id`` (None: not here).

        Reads the filesystem only, never the books, which belong to this thread.
        """
        for root in (self.cache.root, self.cache.forever_root):
            entry = Path(root, content_id)
            try:
                names = [p for p in entry.iterdir() if p.name != "unpacked" and not p.is_symlink()]
            except OSError:
                continue
            if names:
                return str(names[0])
        return None

    def _forever_ids(self) -> list[str]:
        try:
            return [p.name for p in self.cache.forever_root.iterdir()
                    if p.is_dir() and not p.name.startswith(".")][:10000]
        except OSError:
            return []

    # --- gates ------------------------------------------------------------------------

    def _gate(self, gate: object, specs: tuple[FileSpec, ...]) -> None:
        total = sum(max(s.size, 0) for s in specs if s.level != "forever")
        if not self.cache.can_ever_fit(total):
            self._emit(("failed", gate, encode_exception(CacheFull(
                f"the call's input files ({_size(total)}) cannot fit in this worker's cache "
                f"of {_size(self.cache.limit or 0)} (serverless-worker --disk)",
                total, self.cache.limit or 0))))
            return
        missing = self._gates[gate] = set()
        self._gate_specs[gate] = specs
        for spec in specs:
            if self.cache.lookup(spec.content_id) is not None:
                self.cache.ensure_name(spec.content_id, spec.name)
                self.cache.pin(gate, [spec.content_id])
                continue
            missing.add(spec.content_id)
            need = self._needs.get(spec.content_id)
            if need is None:
                need = self._needs[spec.content_id] = _Need(spec, {gate})
                self._advance(need)
            else:
                need.gates.add(gate)
            if gate not in self._gates:
                return  # failed (CacheFull): said so already
        if not missing:
            del self._gates[gate]
            del self._gate_specs[gate]
            self._emit(("ready", gate))

    def _file_arrived(self, content_id: str) -> None:
        need = self._needs.pop(content_id, None)
        if need is None:
            return
        for gate in need.gates:
            waiting = self._gates.get(gate)
            if waiting is None:
                continue
            self.cache.ensure_name(content_id, next(
                s.name for s in self._gate_specs[gate] if s.content_id == content_id))
            self.cache.pin(gate, [content_id])
            waiting.discard(content_id)
            if not waiting:
                del self._gates[gate]
                del self._gate_specs[gate]
                self._emit(("ready", gate))

    def _fail_gate(self, gate: object, error: BaseException) -> None:
        ids = self._gates.pop(gate, set())
        self._gate_specs.pop(gate, None)
        self.cache.unpin(gate)
        self._emit(("failed", gate, encode_exception(error)))
        for content_id in ids:
            need = self._needs.get(content_id)
            if need is not None:
                need.gates.discard(gate)

    def _fail_need(self, need: _Need, error: BaseException) -> None:
        self._needs.pop(need.spec.content_id, None)
        self._discard(need)
        if need.state not in ("new", "lock-wait", "room-wait"):
            self._send(Fetched(need.spec.content_id, need.source, "gave-up", 0))
        for gate in list(need.gates):
            self._fail_gate(gate, error)

    def _discard(self, need: _Need) -> None:
        if need.fetch is not None:
            self._poller_forget(need.fetch)
            need.fetch.close_socket()
        if need.fd >= 0:
            os.close(need.fd)
            need.fd = -1
        if need.temp is not None:
            remove_tree(need.temp)
        if need.lock is not None:
            need.lock.release()
            need.lock = None
        self.cache.unreserve(need.spec.content_id)

    # --- one file's fetch -------------------------------------------------------------

    def _advance(self, need: _Need) -> None:
        """Move a new, lock-waiting or room-waiting fetch as far as it can go now."""
        spec = need.spec
        forever = spec.level == "forever"
        if forever and need.lock is None:
            need.lock = self.cache.forever_lock(spec.content_id)
            if need.lock is None:
                need.state = "lock-wait"  # another worker of this node is fetching it
                return
            if self.cache.lookup(spec.content_id) is not None:  # it finished meanwhile
                need.lock.release()
                need.lock = None
                need.state = "present"  # _tick hands it over (never inside a gate's setup)
                return
        room = self.cache.reserve(spec.content_id, max(spec.size, 0), forever)
        if room == "never":
            self._fail_need(need, CacheFull(
                f"{spec.name} ({_size(spec.size)}) cannot fit in this worker's cache of "
                f"{_size(self.cache.limit or 0)} (serverless-worker --disk)",
                spec.size, self.cache.limit or 0))
            return
        if room == "later":
            need.state = "room-wait"
            return
        need.state = "want"
        self._send(Want(tuple(spec)))

    def _fetch_from(self, content_id: str, size: int, source: str) -> None:
        need = self._needs.get(content_id)
        if need is None or need.state not in ("want",):
            return  # done already, or failed: the manager learns from Fetched
        need.source = source
        if need.spec.size < 0 and size >= 0:
            need.spec = need.spec._replace(size=size)
        if source == "url":
            need.state = "downloading"
            need.temp = self.cache.incoming(content_id, need.spec.level == "forever")
            self._pool.submit(self._job, "downloaded", need, self._download, need.spec, need.temp)
            return
        address = "tcp://" + (self._manager_host + source[len("manager"):]
                              if source.startswith("manager:") else source.removeprefix("tcp://"))
        if need.fetch is None:
            need.temp = self.cache.incoming(content_id, need.spec.level == "forever")
            try:
                need.fd = os.open(need.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                self._fail_need(need, _as_data_error(exc))
                return
            need.fetch = ChunkFetch(self._context, content_id, need.spec.size, need.fd, self._keys)
        need.state = "fetching"
        need.fetch.resume(address)
        if need.fetch.sock is None:  # nothing to fetch (an empty file)
            self._received(need)
        else:
            self._poller.register(need.fetch.sock, zmq.POLLIN)

    def _on_chunks(self, need: _Need) -> None:
        fetch = need.fetch
        assert fetch is not None and fetch.sock is not None
        sock = fetch.sock
        outcome = fetch.on_readable()
        if outcome is None:
            return
        self._poller.unregister(sock)
        if outcome == "done":
            self._received(need)
        else:
            self._source_failed(need, fetch.why)

    def _source_failed(self, need: _Need, why: str) -> None:
        log.warning("fetching %s from %s failed (%s); asking for another source",
                    need.spec.content_id[:16], need.source, why)
        assert need.fetch is not None
        self._poller_forget(need.fetch)
        need.fetch.close_socket()
        need.state = "want"
        self._send(Fetched(need.spec.content_id, need.source, "failed", 0))
        self._send(Want(tuple(need.spec)))

    def _poller_forget(self, fetch: ChunkFetch) -> None:
        if fetch.sock is not None:
            try:
                self._poller.unregister(fetch.sock)
            except KeyError:
                pass

    def _received(self, need: _Need) -> None:
        fetch = need.fetch
        assert fetch is not None
        if not fetch.digest_ok():  # a peer served bad bytes: start over elsewhere
            log.warning("%s from %s does not match its hash; fetching it again",
                        need.spec.content_id[:16], need.source)
            os.ftruncate(need.fd, 0)
            need.fetch = ChunkFetch(self._context, need.spec.content_id, need.spec.size,
                                    need.fd, self._keys)
            need.state = "want"
            self._send(Fetched(need.spec.content_id, need.source, "failed", 0))
            self._send(Want(tuple(need.spec)))
            return
        os.close(need.fd)
        need.fd = -1
        self._commit(need)

    def _commit(self, need: _Need) -> None:
        need.state = "committing"
        self._pool.submit(self._job, "committed", need, self.cache.commit, need.spec, need.temp)

    def _job(self, kind: str, need: _Need, function, *args) -> None:
        """Run ``function`` in a helper thread; the data thread gets its outcome."""
        try:
            outcome = (kind, need, function(*args), None)
        except BaseException as exc:
            outcome = (kind, need, None, exc)
        self._done.put(outcome)
        os.write(self._wake_w, b"x")

    def _job_done(self, kind: str, need: _Need, value, error: BaseException | None) -> None:
        if self._needs.get(need.spec.content_id) is not need:
            return
        if kind == "downloaded":
            if error is not None:
                why = error if isinstance(error, DataError) else TransferFailed(
                    f"downloading {need.spec.url} failed: {type(error).__name__}: {error}")
                self._fail_need(need, why)
                return
            need.spec = need.spec._replace(size=value)
            self._commit(need)
        elif kind == "committed":
            need.temp = None  # moved into place (or removed)
            if error is not None:
                self._fail_need(need, _as_data_error(error, f"could not store {need.spec.name}"))
                return
            path, size = value
            self.cache.added(need.spec, path, size)
            if need.lock is not None:
                need.lock.release()
                need.lock = None
            self._send(Fetched(need.spec.content_id, need.source, "ok", need.spec.size))
            self._file_arrived(need.spec.content_id)

    def _download(self, spec: FileSpec, temp: Path) -> int:
        """Download a URL into ``temp``, checking its sha256 when the File gave one."""
        sha = hashlib.sha256()
        size = 0
        with urllib.request.urlopen(spec.url, timeout=self.stall_timeout) as response, \
                open(temp, "xb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
        if spec.content_id.startswith("sha256-"):
            expected = spec.content_id.removeprefix("sha256-")
            if sha.hexdigest() != expected:
                os.unlink(temp)
                raise FileIntegrityError(
                    f"{spec.url}: sha256 mismatch: expected {expected}, received "
                    f"{sha.hexdigest()} ({size:,} bytes)", expected, sha.hexdigest())
        return size

    def _tick(self) -> None:
        now = time.monotonic()
        for need in list(self._needs.values()):
            if need.state in ("lock-wait", "room-wait"):
                self._advance(need)
            if need.state == "present":
                self._file_arrived(need.spec.content_id)
                continue
            elif need.state == "fetching" and need.fetch is not None and \
                    need.fetch.stalled(now, self.stall_timeout):
                self._source_failed(need, f"nothing received for {self.stall_timeout:g} s")
            if not need.gates and need.state in ("lock-wait", "room-wait"):
                self._needs.pop(need.spec.content_id, None)  # nobody waits for it any more
                self._discard(need)
        adopted, dropped = self.cache.take_changes()
        if adopted or dropped:
            self._send(Holdings(self.address, tuple(adopted), tuple(dropped)))


def _as_data_error(exc: BaseException, what: str = "") -> DataError:
    """A typed error for a call whose input failed: the disk full is CacheFull."""
    if isinstance(exc, DataError):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return CacheFull(f"{prefix}the worker's disk is full ({exc})")
    return TransferFailed(f"{prefix}{type(exc).__name__}: {exc}")


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n:,} bytes"
