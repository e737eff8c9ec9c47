"""The agent's side of the data plane: Calls messages held until their files are cached.

    manager --Gate(instance, specs)--> arm: the next Calls for that instance is held
            --Calls------------------> held (or forwarded at once when nothing is armed)
            --Fetch------------------> to the data thread
    data thread --ready(gate)--------> forward the held Calls to its instance; its calls'
                                       files stay pinned until their results pass by
                --failed(gate, exc)--> a Results batch failing those calls (RAISED, exc)
    library --Results----------------> calls of gated batches that ended: unpin

The manager sends a gated call in a Calls message of its own, right after its Gate, so
only that call waits for its files: calls of the same instance that need none, or need
files already here, go on. Pins are per gate (owner), released when every call of the
gate has a result or its instance is gone.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from pathlib import Path

import zmq

from serverless.data.file import CACHE_DIR_ENV, FOREVER_DIR_ENV
from serverless.protocol import (
    CallStatus,
    Calls,
    Fetch,
    Gate,
    Message,
    Results,
    batch_entries,
    encode,
    results_messages,
)
from serverless.security import CurveKeys
from serverless.transport import parse_address

from .cache import Cache
from .service import DataService

__all__ = ["DataPlane"]

log = logging.getLogger("serverless.worker.data")

_RAISED = int(CallStatus.RAISED)
_CANCELLED = int(CallStatus.CANCELLED)


class DataPlane:
    """Created by the agent; :attr:`sock` goes in its poller."""

    def __init__(self, context: zmq.Context, manager: str, keys: CurveKeys | None,
                 cache_dir: Path, forever_dir: Path | None, disk_bytes: int | None,
                 stall_timeout: float) -> None:
        manager_host = parse_address(manager)[0]
        self.cache = Cache(cache_dir, forever_dir, disk_bytes)
        # library processes inherit these: a File's reference resolves to a path under them
        os.environ[CACHE_DIR_ENV] = str(self.cache.root)
        os.environ[FOREVER_DIR_ENV] = str(self.cache.forever_root)
        self.service = DataService(context, self.cache, keys, _local_host_for(manager_host),
                                   manager_host, stall_timeout)
        self.sock = self.service.sock
        self._gate_ids = itertools.count(1)
        self._armed: dict[int, int] = {}  # instance -> gate whose Calls comes next
        self._held: dict[int, tuple[int, list]] = {}  # gate -> (instance, Calls frames)
        self._ready: set[int] = set()  # gates ready before their Calls arrived
        self._calls: dict[int, set[int]] = {}  # gate -> its calls without a result yet
        self._by_instance: dict[int, dict[int, int]] = {}  # instance -> call -> gate
        self._failed_early: dict[int, bytes] = {}  # gates failed before their Calls came
        self._deploys: dict[int, tuple[int, object]] = {}  # gate -> (instance, held Deploy)
        self._deploy_pins: dict[int, int] = {}  # instance -> gate pinning its environment
        self.deploys_done: list[tuple[object, bytes | None]] = []  # (Deploy, failure or None)
        self._dropped: set[int] = set()  # deploy gates let go before their outcome came

    # --- from the manager -------------------------------------------------------------

    def on_manager(self, msg: Message) -> None:
        if isinstance(msg, Gate):
            gate = next(self._gate_ids)
            self._armed[msg.instance_id] = gate
            self.service.tell(("gate", gate, msg.files))
        elif isinstance(msg, Fetch):
            self.service.tell(("fetch", msg.content_id, msg.size, msg.source))

    def hold_deploy(self, instance_id: int, spec: tuple, deploy: object) -> None:
        """Hold ``deploy`` (of an instance in a packed environment) until the environment's
        archive ``spec`` is in the cache; it then appears in :attr:`deploys_done`, and the
        archive stays pinned until :meth:`deploy_started` or :meth:`instance_gone`."""
        gate = next(self._gate_ids)
        self._deploys[gate] = (instance_id, deploy)
        self._deploy_pins[instance_id] = gate
        self.service.tell(("gate", gate, (tuple(spec),)))

    def deploy_started(self, instance_id: int) -> None:
        """The instance is up: its environment is unpacked, the archive may be evicted."""
        gate = self._deploy_pins.pop(instance_id, None)
        if gate is not None:
            if self._deploys.pop(gate, None) is not None:
                self._dropped.add(gate)  # its ready/failed may still come: unpin then too
            self.service.tell(("unpin", gate))

    def hold(self, instance_id: int, msg: Calls, frames: list) -> tuple[list | None, list[list]]:
        """``(frames to forward now or None, frames for the manager)`` for a Calls message:
        None when it waits for its gate; a Results failing it when its gate failed."""
        gate = self._armed.pop(instance_id, None)
        if gate is None:
            return frames, []
        calls = {entry[0] for entry in batch_entries(msg)}
        failed = self._failed_early.pop(gate, None)
        if failed is not None:
            return None, _failure(instance_id, calls, failed)
        self._calls[gate] = calls
        self._by_instance.setdefault(instance_id, {}).update(dict.fromkeys(calls, gate))
        if gate in self._ready:
            self._ready.discard(gate)
            return frames, []
        self._held[gate] = (instance_id, frames)
        return None, []

    # --- from the data thread ---------------------------------------------------------

    def on_events(self) -> tuple[list[tuple[int, list]], list[list]]:
        """``(calls to forward as (instance, frames), frames to send the manager)``."""
        forward: list[tuple[int, list]] = []
        to_manager: list[list] = []
        for event in self.service.events():
            kind = event[0]
            if kind == "send":
                to_manager.append(encode(event[1]))
            elif event[1] in self._dropped:
                self._dropped.discard(event[1])
                self.service.tell(("unpin", event[1]))
            elif event[1] in self._deploys:
                _, deploy = self._deploys.pop(event[1])
                self.deploys_done.append((deploy, event[2] if kind == "failed" else None))
            elif kind == "ready":
                held = self._held.pop(event[1], None)
                if held is None:
                    self._ready.add(event[1])
                else:
                    forward.append(held)
            elif kind == "failed":
                gate, payload = event[1], event[2]
                held = self._held.pop(gate, None)
                calls = self._calls.pop(gate, set())
                if held is None:  # failed before its Calls arrived: fail it on arrival
                    self._failed_early[gate] = payload
                    continue
                instance_id = held[0]
                self._forget_calls(instance_id, calls)
                to_manager += _failure(instance_id, calls, payload)
        return forward, to_manager

    # --- from library processes -------------------------------------------------------

    def on_results(self, instance_id: int, msg: Results) -> None:
        waiting = self._by_instance.get(instance_id)
        if not waiting:
            return
        for entry in batch_entries(msg):
            gate = waiting.pop(entry[0], None)
            if gate is None:
                continue
            calls = self._calls.get(gate)
            if calls is not None:
                calls.discard(entry[0])
                if not calls:
                    del self._calls[gate]
                    self.service.tell(("unpin", gate))

    def cancel(self, instance_id: int, call_ids: tuple) -> list[list]:
        """Cancelled calls still held for their files end here, as CANCELLED results
        (the library never saw them); frames for the manager."""
        out: list[list] = []
        for gate, (instance, _) in list(self._held.items()):
            calls = self._calls.get(gate, set())
            if instance != instance_id or not calls or not calls <= set(call_ids):
                continue
            del self._held[gate]
            del self._calls[gate]
            self._forget_calls(instance_id, calls)
            self.service.tell(("unpin", gate))
            entries = [(call_id, _CANCELLED, b"", 0.0) for call_id in sorted(calls)]
            out += [encode(message) for message in results_messages(instance_id, entries)]
        return out

    def instance_gone(self, instance_id: int) -> None:
        """Its held and running calls are the manager's to retry: let their files go."""
        self._armed.pop(instance_id, None)
        self.deploy_started(instance_id)  # a held Deploy is dropped with its pin
        gates = set(self._by_instance.pop(instance_id, {}).values())
        gates |= {g for g, (i, _) in self._held.items() if i == instance_id}
        for gate in gates:
            self._held.pop(gate, None)
            self._calls.pop(gate, None)
            self._ready.discard(gate)
            self.service.tell(("unpin", gate))

    def _forget_calls(self, instance_id: int, calls: set[int]) -> None:
        waiting = self._by_instance.get(instance_id)
        if waiting:
            for call_id in calls:
                waiting.pop(call_id, None)

    def close(self) -> None:
        self.service.close()


def _failure(instance_id: int, calls: set[int], payload: bytes) -> list[list]:
    """Results frames failing ``calls`` with the encoded exception ``payload``."""
    entries = [(call_id, _RAISED, payload, 0.0) for call_id in sorted(calls)]
    return [encode(message) for message in results_messages(instance_id, entries)]


def _local_host_for(manager_host: str) -> str:
    """The address of this node on the route to the manager (peers reach us the same way)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((manager_host, 9))  # no packet is sent for a UDP connect
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
