"""The zmq sockets between the manager and its workers, set up in one place.

The manager binds a ROUTER; each worker connects a DEALER whose identity is its name.
Both sides set unlimited high-water marks (flow is bounded by the scheduler's per-instance
windows, not by zmq dropping messages) and the ROUTER is ``ROUTER_MANDATORY``, so a send to
a peer that is gone raises instead of vanishing. Sockets close with ``linger=0``.
"""

from __future__ import annotations

import uuid

import zmq

__all__ = ["Endpoint", "bind_router", "connect_dealer", "parse_address", "new_context"]


def new_context() -> zmq.Context:
    return zmq.Context()


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"tcp://host:port"``) -> ``(host, port)``."""
    text = address.removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class Endpoint:
    """Where a manager listens, as ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def _common_options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def bind_router(context: zmq.Context, host: str, port: int, max_message_bytes: int) -> tuple[zmq.Socket, Endpoint]:
    """The manager's socket, bound to ``host:port`` (port 0: any free port)."""
    sock = context.socket(zmq.ROUTER)
    _common_options(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if port == 0:
        port = sock.bind_to_random_port(f"tcp://{host}")
    else:
        sock.bind(f"tcp://{host}:{port}")
    return sock, Endpoint(host, port)


def connect_dealer(context: zmq.Context, address: str, name: str | None, max_message_bytes: int) -> tuple[zmq.Socket, str]:
    """A worker's socket to the manager at ``address``; returns it and the identity used."""
    host, port = parse_address(address)
    # a random suffix keeps identities unique even when two workers are given one name
    identity = f"{name or 'worker'}.{uuid.uuid4().hex[:6]}"
    sock = context.socket(zmq.DEALER)
    _common_options(sock)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(Endpoint(host, port).url())
    return sock, identity
