"""The zmq sockets between the manager and its workers (and between peers), set up in one place.

The manager binds a ROUTER; each worker connects a DEALER whose identity is its name.
Both sides set unlimited high-water marks (flow is bounded by the scheduler's windows, in
calls and in bytes per instance and per worker, not by zmq dropping messages) and the
ROUTER is ``ROUTER_MANDATORY``, so a send to a peer that is gone raises instead of
vanishing. Sockets close with ``linger=0``.
Both set MAXMSGSIZE: a peer that sends a larger frame has its connection dropped by zmq
(that bound holds before authentication too, so it is sized for calls, not bulk data),
and a short HANDSHAKE_IVL: a connection that has not finished its handshake in
:data:`HANDSHAKE_SECONDS` is closed, so idle or half-open connections cannot hold memory
or descriptors for long.

Security (see :mod:`serverless.security` and docs/security.md). With keys, the ROUTER is a
CURVE server and each DEALER a CURVE client: traffic is encrypted, the worker knows it talks
to the manager (it holds the server public key), and the ZAP handler admits only clients
presenting the client public key or a key on the router's allow-list (per-worker keys).
Both handshake checks happen inside libzmq before a single message reaches the manager
loop::

    peer --TCP--> ROUTER --ZMTP greeting + CURVE handshake--> ZAP request ----> _ZapHandler
                                                              (client key)     allow / deny
                  ROUTER --monitor events (handshake failed)----------------> _Monitor: log

One :class:`_ZapHandler` thread serves every authenticated ROUTER of a context (libzmq has
one ZAP endpoint per context); each router has its own ZAP domain and its own allow
policy, so a worker's peer server (:func:`bind_router` again, on any host and port, with
the same keys) shares it. Each router has a :class:`_Monitor` thread that logs refused
connections (rate-limited, with the peer's address when zmq gives it). Both close their
sockets when the context is terminated. Without keys (``insecure=True``, loopback only, see
:func:`serverless.security.require_secret`) the monitor still logs connections dropped for
speaking something other than ZMTP.

:func:`probe_handshake` lets a worker learn before it starts whether the manager accepts
its key, so a wrong or missing secret is reported in words, not as a silent timeout.
"""

from __future__ import annotations

import errno

import hmac
import itertools
import logging
import resource
import threading
import time
import uuid
import weakref
from collections.abc import Callable

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .errors import AddressInUse, SecurityError
from .security import CurveKeys

__all__ = [
    "Endpoint",
    "bind_router",
    "connect_dealer",
    "parse_address",
    "new_context",
    "probe_handshake",
    "raise_descriptor_limit",
    "HANDSHAKE_SECONDS",
]

log = logging.getLogger("serverless.transport")

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_DOMAIN = b"serverless"
_domains = itertools.count(1)
HANDSHAKE_SECONDS = 5.0  # a connection must finish its handshake within this (zmq: 30 s)
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


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open descriptors to its hard limit, so that a
    flood of idle connections meets the hard limit, not a low default; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # Linux's usual fs.nr_open; an unlimited soft limit is refused
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    except (ValueError, OSError):
        return soft
    return hard


def _common_options(sock: zmq.Socket, max_message_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_SECONDS * 1000))


def bind_router(context: zmq.Context, host: str, port: int, max_message_bytes: int,
                keys: CurveKeys | None = None,
                allowed: Callable[[bytes], bool] | None = None,
                role: str = "the manager") -> tuple[zmq.Socket, Endpoint]:
    """An authenticated ROUTER bound to ``host:port`` (port 0: any free port).

    With ``keys`` it is a CURVE server with the server keypair and accepts only clients
    presenting the client public key, or a key ``allowed(public_key_bytes)`` accepts (the
    per-worker allow-list; called in the ZAP thread, keep it cheap). Used by the manager,
    and by anything else that serves peers holding the same secret (a worker's peer
    server): several routers may share a context. ``role`` names it in refusal logs.
    """
    if keys is not None and not keys.server_secret:
        raise SecurityError(f"{role} cannot serve: this node holds a per-worker key, not the "
                            "deployment's secret (a server needs the server key)")
    sock = context.socket(zmq.ROUTER)
    _common_options(sock, max_message_bytes)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if keys is not None:
        domain = _ZAP_DOMAIN + b"-%d" % next(_domains)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.server_public)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)
        # registered before the socket can accept anyone
        _ZapHandler.of(context).admit(domain, z85.decode(keys.client_public), allowed, role)
    monitor = _Monitor(sock, keys is not None, role)
    try:
        if port == 0:
            port = sock.bind_to_random_port(f"tcp://{host}")
        else:
            sock.bind(f"tcp://{host}:{port}")
    except BaseException as exc:
        monitor.close()
        sock.close(linger=0)
        if isinstance(exc, zmq.ZMQError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            what = "is in use" if exc.errno == errno.EADDRINUSE else "is not an address of this machine"
            raise AddressInUse(f"cannot listen on {host}:{port}: {what} ({exc.strerror}); "
                               "pick another port, or port=0 for any free one") from None
        raise
    monitor.start()
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
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_SECONDS * 1000))
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


class _ZapHandler(threading.Thread):
    """Answers ZAP requests (RFC 27) for every CURVE ROUTER of one context.

    Each router registers its ZAP domain with the client key every secret holder derives and
    an optional ``allowed`` check (per-worker keys). Runs until the context is terminated.
    """

    _lock = threading.Lock()
    _by_context: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(name="serverless-zap", daemon=True)
        self._zap = context.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(_ZAP_ENDPOINT)
        self._domains: dict[bytes, tuple[bytes, Callable[[bytes], bool] | None,
                                         _RateLimitedWarning, str]] = {}

    @classmethod
    def of(cls, context: zmq.Context) -> _ZapHandler:
        """The context's handler, started on first use."""
        with cls._lock:
            handler = cls._by_context.get(context)
            if handler is None or not handler.is_alive():
                handler = cls(context)
                cls._by_context[context] = handler
                handler.start()
            return handler

    def admit(self, domain: bytes, client_key: bytes, allowed: Callable[[bytes], bool] | None,
              role: str) -> None:
        self._domains[domain] = (client_key, allowed, _RateLimitedWarning(), role)

    def run(self) -> None:
        try:
            while True:
                self._answer(self._zap.recv_multipart())
        except zmq.ContextTerminated:
            pass
        except Exception:  # never leave ZAP requests unanswered silently
            log.exception("the ZAP handler failed; new connections will be refused")
        finally:
            self._zap.close(linger=0)

    def _answer(self, request: list[bytes]) -> None:
        """Reply to one ZAP request: 200 for an admitted key, 400 for anything else."""
        request = request + [b""] * (6 - len(request))  # libzmq always sends 6+; be safe
        version, request_id, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        entry = self._domains.get(domain)
        allowed = False
        if entry is not None and mechanism == b"CURVE" and len(credentials) == 1:
            client_key, check, _warn, _role = entry
            key = credentials[0]
            allowed = hmac.compare_digest(key, client_key)
            if not allowed and check is not None:
                try:
                    allowed = bool(check(key))
                except Exception:
                    log.exception("the worker key allow-list failed; refusing the key")
        if allowed:
            self._zap.send_multipart([version, request_id, b"200", b"OK",
                                      z85.encode(credentials[0]), b""])
            return
        if entry is not None:
            key = z85.encode(credentials[0]).decode() if len(credentials) == 1 and len(
                credentials[0]) == 32 else "none"
            entry[2](f"{entry[3]} refused a connection from "
                     f"{address.decode(errors='replace')}: its key ({key}) is not a worker's "
                     "(wrong or missing secret, or a revoked worker key)")
        self._zap.send_multipart([version, request_id, b"400", b"unknown key", b"", b""])


class _Monitor(threading.Thread):
    """Logs the connections one ROUTER refused (rate-limited). Runs until the context is
    terminated or the router is closed, then closes its socket."""

    def __init__(self, router: zmq.Socket, secured: bool, role: str) -> None:
        super().__init__(name="serverless-guard", daemon=True)
        self._monitor = router.get_monitor_socket(_HANDSHAKE_FAILED)
        self._secured = secured
        self._role = role
        self._warn_protocol = _RateLimitedWarning()

    def run(self) -> None:
        try:
            while self._on_event(self._monitor.recv_multipart()):
                pass
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("the connection monitor failed")
        finally:
            self.close()

    def close(self) -> None:
        self._monitor.close(linger=0)

    def _on_event(self, frames: list[bytes]) -> bool:
        """Log one event; False once the router is closed (the monitor stopped)."""
        try:
            event = parse_monitor_message(frames)
        except Exception:
            return True
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            return False
        if not event["event"] & _HANDSHAKE_FAILED or event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return True  # AUTH was logged with its address by the ZAP handler
        if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            why = "it does not hold the secret (wrong key)"
        elif event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            why = ("it has no secret, and a secret is required" if self._secured
                   else "it uses a secret, and this one runs insecure")
        else:
            why = ("its handshake failed (a stray client, another program, or a worker whose "
                   "secret setting differs)")
        self._warn_protocol(f"{self._role} refused a connection: {why}")
        return True
