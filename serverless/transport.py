"""The zmq sockets between the manager and its workers, set up in one place.

The manager binds a ROUTER; each worker connects a DEALER whose identity is its name.
Both sides set unlimited high-water marks (flow is bounded by the scheduler's windows, in
calls and in bytes per instance and per worker, not by zmq dropping messages) and the
ROUTER is ``ROUTER_MANDATORY``, so a send to a peer that is gone raises instead of
vanishing. Sockets close with ``linger=0``.
Both set MAXMSGSIZE: a peer that sends a larger frame has its connection dropped by zmq.

Security (see :mod:`serverless.security` and docs/security.md). With keys, the ROUTER is a
CURVE server and each DEALER a CURVE client: traffic is encrypted, the worker knows it talks
to the manager (it holds the server public key), and the manager's ZAP handler admits only
clients presenting the client public key. Both handshake checks happen inside libzmq before
a single message reaches the manager loop::

    peer --TCP--> ROUTER --ZMTP greeting + CURVE handshake--> ZAP request ----> _Guard thread
                                                              (client key)     allow / deny
                  ROUTER --monitor events (handshake failed)----------------> _Guard: log

The :class:`_Guard` thread answers ZAP requests and logs refused connections (rate-limited,
with the peer's address when zmq gives it). It owns its two sockets and closes them when
the context is terminated, so the manager loop only passes ``keys`` to :func:`bind_router`.
Without keys (loopback only, see :func:`serverless.security.require_secret`) the guard
still logs connections dropped for speaking something other than ZMTP.

:func:`probe_handshake` lets a worker learn before it starts whether the manager accepts
its key, so a wrong or missing secret is reported in words, not as a silent timeout.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .security import CurveKeys

__all__ = [
    "Endpoint",
    "bind_router",
    "connect_dealer",
    "parse_address",
    "new_context",
    "probe_handshake",
]

log = logging.getLogger("serverless.transport")

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_DOMAIN = b"serverless"
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


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


def _common_options(sock: zmq.Socket, max_message_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)


def bind_router(context: zmq.Context, host: str, port: int, max_message_bytes: int,
                keys: CurveKeys | None = None) -> tuple[zmq.Socket, Endpoint]:
    """The manager's socket, bound to ``host:port`` (port 0: any free port).

    With ``keys`` it accepts only CURVE clients holding the derived client key.
    """
    sock = context.socket(zmq.ROUTER)
    _common_options(sock, max_message_bytes)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.server_public)
        sock.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN)
    guard = _Guard(context, sock, keys)  # binds ZAP before the socket can accept anyone
    try:
        if port == 0:
            port = sock.bind_to_random_port(f"tcp://{host}")
        else:
            sock.bind(f"tcp://{host}:{port}")
    except BaseException:
        guard.close()
        sock.close(linger=0)
        raise
    guard.start()
    return sock, Endpoint(host, port)


def _client_options(sock: zmq.Socket, keys: CurveKeys | None) -> None:
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)


def connect_dealer(context: zmq.Context, address: str, name: str | None, max_message_bytes: int,
                   keys: CurveKeys | None = None) -> tuple[zmq.Socket, str]:
    """A worker's socket to the manager at ``address``; returns it and the identity used."""
    host, port = parse_address(address)
    # a random suffix keeps identities unique even when two workers are given one name
    identity = f"{name or 'worker'}.{uuid.uuid4().hex[:6]}"
    sock = context.socket(zmq.DEALER)
    _common_options(sock, max_message_bytes)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    _client_options(sock, keys)
    sock.connect(Endpoint(host, port).url())
    return sock, identity


def probe_handshake(address: str, keys: CurveKeys | None, timeout: float) -> str | None:
    """Connect to the manager once and finish the zmq handshake; say why it failed.

    Returns None if the manager accepts these keys (or no keys, when it has no secret),
    else a sentence for the user. A manager that does not answer within ``timeout``
    seconds is not a failure here (the worker's own connect timeout reports it).
    """
    host, port = parse_address(address)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    _client_options(sock, keys)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
    try:
        sock.connect(Endpoint(host, port).url())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000) + 1):
                break
            event = parse_monitor_message(monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return None
            return _handshake_failure(address, keys is not None, event["event"], event["value"])
        return None
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        context.term()


def _handshake_failure(address: str, has_keys: bool, event: int, value: int) -> str:
    """A worker's handshake failed: say why, in words.

    The manager closes a refused connection at once, so the worker often learns no detail
    (``HANDSHAKE_FAILED_NO_DETAIL``); the sentences say what is most likely.
    """
    mismatch = (event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    if mismatch and has_keys:
        return (f"the manager at {address} has no secret, but this worker was given one: "
                "start it without --secret-file / SERVERLESS_SECRET_FILE")
    if not has_keys:
        return (f"the manager at {address} refused this worker; it most likely requires a "
                "secret: start the worker with --secret-file FILE (or SERVERLESS_SECRET_FILE="
                "FILE), FILE holding the manager's secret (Manager.secret_file)")
    return (f"the manager at {address} refused this worker's key: the secret differs from "
            "the manager's, or the manager has none (see docs/security.md)")


class _RateLimitedWarning:
    """Logs the first event at once, then at most one summary per ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.warning("%s%s", text, more)
        self._last, self._suppressed = now, 0


class _Guard(threading.Thread):
    """Answers ZAP requests for one CURVE ROUTER and logs connections it refused.

    Runs until the context is terminated (the manager loop's ``context.term()``), then
    closes its sockets.
    """

    def __init__(self, context: zmq.Context, router: zmq.Socket, keys: CurveKeys | None) -> None:
        super().__init__(name="serverless-guard", daemon=True)
        self._monitor = router.get_monitor_socket(_HANDSHAKE_FAILED)
        self._zap: zmq.Socket | None = None
        self._client_key = b""
        if keys is not None:
            self._client_key = z85.decode(keys.client_public)
            self._zap = context.socket(zmq.REP)
            self._zap.setsockopt(zmq.LINGER, 0)
            self._zap.bind(_ZAP_ENDPOINT)
        self._warn_denied = _RateLimitedWarning()
        self._warn_protocol = _RateLimitedWarning()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._zap is not None and self._zap in events:
                    self._answer(self._zap.recv_multipart())
                if self._monitor in events:
                    self._on_event(self._monitor.recv_multipart())
        except zmq.ContextTerminated:
            pass
        except Exception:  # never leave ZAP requests unanswered silently
            log.exception("the connection guard failed; new connections will be refused")
        finally:
            self.close()

    def close(self) -> None:
        self._monitor.close(linger=0)
        if self._zap is not None:
            self._zap.close(linger=0)

    def _answer(self, request: list[bytes]) -> None:
        """Reply to one ZAP request (RFC 27): 200 for the client key, 400 for anything else."""
        assert self._zap is not None
        request = request + [b""] * (6 - len(request))  # libzmq always sends 6+; be safe
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        allowed = (mechanism == b"CURVE" and len(credentials) == 1
                   and hmac.compare_digest(credentials[0], self._client_key))
        if allowed:
            self._zap.send_multipart([version, request_id, b"200", b"OK", b"worker", b""])
            return
        self._warn_denied(f"refused a connection from {address.decode(errors='replace')}: "
                          "its key is not a worker's (wrong or missing secret)")
        self._zap.send_multipart([version, request_id, b"400", b"unknown key", b"", b""])

    def _on_event(self, frames: list[bytes]) -> None:
        try:
            event = parse_monitor_message(frames)
        except Exception:
            return
        if not event["event"] & _HANDSHAKE_FAILED or event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # MONITOR_STOPPED at close; AUTH was logged with its address by _answer
        if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            why = "it does not hold the secret (wrong key)"
        elif event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            why = ("it has no secret, and this manager requires one" if self._zap is not None
                   else "it uses a secret, and this manager has none")
        else:
            why = ("its handshake failed (a stray client, another program, or a worker whose "
                   "secret setting differs from the manager's)")
        self._warn_protocol(f"refused a connection to the manager: {why}")
