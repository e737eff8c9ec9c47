"""The manager's side of the data plane: who holds which file, who fetches from whom.

    Manager.call --File in the arguments--> LocalFiles (hash once per stat identity, tar
                                            a directory) -> CallRecord.files (FileSpecs)
    loop: SendCalls of a call with files --> Gate(instance, specs), then its own Calls
    worker --Want(spec)----------------> DataDirectory.want: name a source, or wait
           <--Fetch(id, size, source)--  a peer holding it (fewest uploads, under the cap),
                                         else the origin (this manager's chunk server or
                                         the URL) if nobody fetches from it yet, else wait
    worker --Fetched(id, source, ok)---> it holds the file now: a new source for the others
           --Fetched(..., failed)------> that source is avoided for a while; another is named
           --Holdings(address, +, -)---> what its cache holds (and its chunk server's address)

:class:`DataDirectory` is I/O-free (events in, ``(worker, message)`` out) so its choices
get unit tests. Its rule "one fetch from the origin at a time per file" is what makes the
manager send each byte about once whatever the number of workers: the first worker gets
it from the manager, every later one from a peer, each source serving at most
``upload_cap`` fetches at once. A source that failed is avoided for ``avoid_seconds``;
when no other is left the origin is tried again, so a transfer never waits forever.

:meth:`DataDirectory.missing_bytes` is the scheduler's locality cost: the bytes of a
call's inputs a worker does not hold yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from serverless.data.file import FileSpec
from serverless.data.local import LocalFiles
from serverless.data.transfer import MAX_CLIENTS, ChunkServer
from serverless.protocol import Fetch, Fetched, Holdings, Message, Want
from serverless.security import CurveKeys

__all__ = ["DataDirectory", "ManagerData", "ORIGIN"]

log = logging.getLogger("serverless.manager.data")

ORIGIN = ""  # the source key of the manager or the URL itself


@dataclass
class _Content:
    spec: FileSpec
    holders: set[str] = field(default_factory=set)
    fetching: dict[str, str] = field(default_factory=dict)  # worker -> source key
    waiting: list[str] = field(default_factory=list)  # workers waiting for a source


class DataDirectory:
    """Where every file is and which transfers run (see the module docstring)."""

    def __init__(self, manager_port: int, upload_cap: int = MAX_CLIENTS,
                 avoid_seconds: float = 30.0) -> None:
        self.manager_port = manager_port  # of the manager's chunk server
        self.upload_cap = upload_cap
        self.avoid_seconds = avoid_seconds
        self.contents: dict[str, _Content] = {}
        self.addresses: dict[str, str] = {}  # worker -> its chunk server
        self.uploads: dict[str, int] = {}  # source key -> fetches from it in progress
        self.avoid: dict[tuple[str, str], float] = {}  # (worker, source) -> until
        self.held: dict[str, set[str]] = {}  # worker -> content ids it holds
        self.origin_bytes = 0  # bytes the origin (manager or URL) was asked to send
        self.now = time.monotonic()

    def holds(self, worker: str, content_id: str) -> bool:
        return content_id in self.held.get(worker, ())

    def missing_bytes(self, worker: str, specs: Iterable[FileSpec]) -> int:
        held = self.held.get(worker, ())
        return sum(max(s.size, 0) for s in specs if s.content_id not in held)

    # --- events -----------------------------------------------------------------------

    def want(self, worker: str, spec: FileSpec) -> list[tuple[str, Message]]:
        content = self.contents.get(spec.content_id)
        if content is None:
            content = self.contents[spec.content_id] = _Content(FileSpec(*spec))
        elif content.spec.size < 0 <= spec.size:
            content.spec = FileSpec(*spec)
        self._end_fetch(content, worker)
        if worker not in content.waiting:
            content.waiting.append(worker)
        return self._assign(content)

    def fetched(self, worker: str, msg: Fetched) -> list[tuple[str, Message]]:
        content = self.contents.get(msg.content_id)
        if content is None:
            return []
        source = self._end_fetch(content, worker)
        if msg.outcome == "ok":
            content.holders.add(worker)
            self.held.setdefault(worker, set()).add(msg.content_id)
            if content.spec.size < 0:
                content.spec = content.spec._replace(size=msg.size)
        elif msg.outcome == "failed" and source is not None:
            self.avoid[(worker, source)] = self.now + self.avoid_seconds
        return self._assign_all()  # an upload slot freed may serve another file

    def holdings(self, worker: str, msg: Holdings) -> list[tuple[str, Message]]:
        if msg.address:
            self.addresses[worker] = msg.address
        held = self.held.setdefault(worker, set())
        actions: list[tuple[str, Message]] = []
        for content_id in msg.added:
            held.add(content_id)
            content = self.contents.get(content_id)
            if content is not None:
                content.holders.add(worker)
                actions += self._assign(content)
        for content_id in msg.removed:
            held.discard(content_id)
            content = self.contents.get(content_id)
            if content is not None:
                content.holders.discard(worker)
        return actions

    def worker_lost(self, worker: str) -> list[tuple[str, Message]]:
        self.addresses.pop(worker, None)
        self.held.pop(worker, None)
        for content in self.contents.values():
            content.holders.discard(worker)
            if worker in content.waiting:
                content.waiting.remove(worker)
            self._end_fetch(content, worker)
            # fetches from it fail at their receivers (no progress), which then ask again
        return self._assign_all()

    def tick(self, now: float) -> list[tuple[str, Message]]:
        """Expire avoidances; waiting workers may have a source now."""
        self.now = now
        expired = [key for key, until in self.avoid.items() if until <= now]
        for key in expired:
            del self.avoid[key]
        return self._assign_all() if expired else []

    def _assign_all(self) -> list[tuple[str, Message]]:
        actions: list[tuple[str, Message]] = []
        for content in self.contents.values():
            if content.waiting:
                actions += self._assign(content)
        return actions

    # --- choosing sources -------------------------------------------------------------

    def _end_fetch(self, content: _Content, worker: str) -> str | None:
        source = content.fetching.pop(worker, None)
        if source is not None:
            self.uploads[source] = max(0, self.uploads.get(source, 0) - 1)
        return source

    def _assign(self, content: _Content) -> list[tuple[str, Message]]:
        actions: list[tuple[str, Message]] = []
        for worker in list(content.waiting):
            source = self._choose(content, worker)
            if source is None:
                continue
            content.waiting.remove(worker)
            content.fetching[worker] = source
            self.uploads[source] = self.uploads.get(source, 0) + 1
            spec = content.spec
            if source == ORIGIN:
                where = "url" if spec.url else f"manager:{self.manager_port}"
                if not spec.url:
                    self.origin_bytes += max(spec.size, 0)
            else:
                where = self.addresses[source]
            actions.append((worker, Fetch(spec.content_id, max(spec.size, 0), where)))
        return actions

    def _choose(self, content: _Content, worker: str) -> str | None:
        others = [p for p in content.holders if p != worker and p in self.addresses
                  and (worker, p) not in self.avoid]
        free = [p for p in others if self.uploads.get(p, 0) < self.upload_cap]
        if free:
            return min(free, key=lambda p: self.uploads.get(p, 0))
        if others or ORIGIN in content.fetching.values():
            return None  # wait: a peer frees an upload, or the origin's fetch ends
        if self.uploads.get(ORIGIN, 0) >= self.upload_cap * 4:
            return None  # the manager's own link is the bottleneck: queue
        return ORIGIN


class ManagerData:
    """The manager loop's data plane: its local files, its chunk server, its directory."""

    def __init__(self, host: str, keys: CurveKeys | None, upload_cap: int = MAX_CLIENTS) -> None:
        self.local = LocalFiles()
        self.server = ChunkServer(host, self.local.path, keys, max_clients=upload_cap * 4)
        self.directory = DataDirectory(self.server.port, upload_cap)

    def on_message(self, worker: str, msg: Message) -> list[tuple[str, Message]] | None:
        """Actions for a data message from ``worker`` (None: not a data message)."""
        if isinstance(msg, Want):
            return self.directory.want(worker, FileSpec(*msg.file))
        if isinstance(msg, Fetched):
            return self.directory.fetched(worker, msg)
        if isinstance(msg, Holdings):
            return self.directory.holdings(worker, msg)
        return None

    @property
    def bytes_sent(self) -> int:
        """Bytes of file content this manager's chunk server sent (all workers)."""
        return self.server.bytes_sent

    def close(self) -> None:
        self.server.close()
        self.local.close()
