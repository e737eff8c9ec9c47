"""The shared secret and the CURVE keys derived from it.

Pickles run code, so only peers holding the user's secret may talk to each other, on
loopback as over a network (the default: ``Manager()`` generates a secret and hands its
local workers the file; ``insecure=True`` is the named opt-out). The secret never travels
and never appears on a command line or in a log: the manager and each worker read it (from
memory or a private file) and derive the same two CURVE keypairs::

    generated secret "sls2-..."  --HKDF-SHA256 extract--> 32-byte master
    chosen phrase / old file     --scrypt(n=2**14)------> 32-byte master
    master --HKDF-SHA256 expand "server"--> server keypair
           --HKDF-SHA256 expand "client"--> client keypair

A generated secret (:func:`generate_secret`) is 256 random bits, unique to its deployment:
nothing can be precomputed against it and guessing it is hopeless, so it needs no
stretching and its derivation costs microseconds (no scrypt when ``Manager()`` starts). Any other
secret (a phrase someone chose, or a file written by an older version) is stretched with
scrypt (about 0.1 s and 16 MB per guess) under a fixed salt, as before, so old secret
files keep working; a warning says to replace it with a generated one.

The manager serves with the server keypair and accepts only connections that present the
client public key, or a per-worker key on its allow-list (its ZAP handler,
:mod:`serverless.transport`); a worker connects with the client keypair (or its own key,
:mod:`serverless.worker_keys`) and, knowing the server public key, authenticates the
manager in turn, so a worker never talks to anyone who has not proved the server key.

This module owns: reading, checking, generating and writing secrets, the rule that a
manager binding anything but loopback needs one (:func:`require_secret`), and key
derivation (:func:`derive_keys`). File checks are :mod:`serverless.safe_files`'. See
docs/security.md for the threat model.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from .errors import SecurityError
from .safe_files import check_dir, open_private_file

__all__ = [
    "SECRET_FILE_ENV",
    "MIN_SECRET_LENGTH",
    "GENERATED_PREFIX",
    "is_generated",
    "CurveKeys",
    "ManagerSecret",
    "derive_keys",
    "generate_secret",
    "is_loopback",
    "read_secret_file",
    "require_secret",
    "write_secret_file",
    "check_secret_options",
    "INSECURE_WARNING",
]

SECRET_FILE_ENV = "SERVERLESS_SECRET_FILE"  # names a file; the secret itself is never in env
MIN_SECRET_LENGTH = 16
_SALT = b"serverless CURVE keys v1"  # chosen phrases and old files only (see above)
_SALT_V2 = b"serverless CURVE keys v2"
GENERATED_PREFIX = "sls2-"  # marks a secret made by generate_secret(): 256 random bits
_SECRET_NAME = "serverless.secret"
_HOW_TO = "see docs/security.md"

log = logging.getLogger("serverless.security")


@dataclass(frozen=True)
class CurveKeys:
    """Both CURVE keypairs, z85-encoded (40 bytes each), as pyzmq's socket options take them."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    def __repr__(self) -> str:  # never print secret keys
        return "CurveKeys(...)"


def _clean(secret: str | bytes) -> bytes:
    """The secret as bytes, surrounding whitespace (a file's newline) removed, checked."""
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes):
        raise TypeError(f"a secret is str or bytes, not {type(secret).__name__}")
    secret = secret.strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise SecurityError(
            f"the secret is too short ({len(secret)} bytes; at least {MIN_SECRET_LENGTH}): use "
            "serverless.security.generate_secret() or `python -c \"import secrets; "
            "print(secrets.token_urlsafe(32))\"`")
    return secret


def _hkdf(master: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) expand step for one 32-byte block."""
    return hmac.new(master, info + b"\x01", hashlib.sha256).digest()


def is_generated(secret: bytes) -> bool:
    """True if ``secret`` was made by :func:`generate_secret` (prefix, then 32+ random bytes)."""
    if not secret.startswith(GENERATED_PREFIX.encode()):
        return False
    body = secret[len(GENERATED_PREFIX):]
    try:
        return len(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))) >= 32
    except (binascii.Error, ValueError):
        return False


@functools.lru_cache(maxsize=8)
def derive_keys(secret: str | bytes) -> CurveKeys:
    """The CURVE keypairs for ``secret`` (deterministic: every holder derives the same)."""
    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE security; install pyzmq "
                            "from its wheels (they include libsodium/tweetnacl)")
    cleaned = _clean(secret)
    if is_generated(cleaned):  # 256 random bits: HKDF extract alone (RFC 5869)
        master = hmac.new(_SALT_V2, cleaned, hashlib.sha256).digest()
    else:
        log.warning("this secret was not made by serverless.security.generate_secret(): it "
                    "is stretched with scrypt under a salt every deployment shares; replace "
                    "it with a generated one (docs/security.md, key rotation)")
        stretched = hashlib.scrypt(cleaned, salt=_SALT, n=2**14, r=8, p=1, dklen=32)
        master = hmac.new(_SALT, stretched, hashlib.sha256).digest()  # HKDF extract

    def keypair(role: bytes) -> tuple[bytes, bytes]:
        secret_key = z85.encode(_hkdf(master, role))
        return zmq.curve_public(secret_key), secret_key

    server_public, server_secret = keypair(b"server")
    client_public, client_secret = keypair(b"client")
    return CurveKeys(server_public, server_secret, client_public, client_secret)


def generate_secret() -> str:
    """A new random secret: 256 bits, URL-safe text, marked as generated."""
    return GENERATED_PREFIX + secrets.token_urlsafe(32)


def write_secret_file(path: str | os.PathLike, secret: str | bytes) -> Path:
    """Write ``secret`` to a new file readable by its owner only (mode 0600).

    A missing parent directory is made, readable by its owner only (mode 0700); an
    existing one must not be open to other users' writes (sticky ones like /tmp aside).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path.parent, "the directory of the secret file", sticky_ok=True)
    data = _clean(secret)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data + b"\n")
    finally:
        os.close(fd)
    return path


def read_secret_file(path: str | os.PathLike) -> bytes:
    """The secret in ``path``; refused unless it is a private regular file of ours.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked on the descriptor, so neither a
    symlink, a FIFO (which would hang the read) nor another user's file is ever trusted.
    """
    path = Path(path).expanduser()
    fd = open_private_file(path, "the secret file")
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        return _clean(data)
    except SecurityError as exc:
        raise SecurityError(f"{path}: {exc}") from None


def is_loopback(host: str) -> bool:
    """True if ``host`` names only loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host in ("*", ""):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # an interface name or an unknown host: not provably loopback
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def require_secret(host: str, has_secret: bool) -> None:
    """Refuse to serve ``host`` without a secret unless it is loopback-only."""
    if has_secret or is_loopback(host):
        return
    raise SecurityError(
        f"refusing to listen on {host!r} without a secret (insecure=True): anyone who can "
        "reach that port could run code in this process. Drop insecure=True (a secret is "
        "generated; workers read Manager.secret_file) or pass secret_file=PATH, and start "
        f"workers with `serverless-worker HOST:PORT --secret-file PATH` ({_HOW_TO}); or "
        "listen on 127.0.0.1 only.")


INSECURE_WARNING = (
    "INSECURE: this manager runs without a secret (insecure=True). Every local user of this "
    "machine can connect to its port, register as a worker, receive your libraries' code and "
    "your calls' arguments, and send results that run code in this program. Use it only on "
    "a machine no one else logs into (docs/security.md).")


class ManagerSecret:
    """The manager's secret: its keys and the file its workers read.

    ``secret``: None (generate one: the default), True (the same, said explicitly), or the
    secret (str or bytes). ``secret_file``: a file to read the secret from; if it does not
    exist, a new secret is generated and written there (mode 0600). A secret given in
    memory or generated without a file is written to a private temporary directory (mode
    0700), removed by :meth:`cleanup`. ``insecure``: no secret at all (loopback only; a
    loud warning is logged).
    """

    def __init__(self, secret: str | bytes | bool | None, secret_file: str | os.PathLike | None,
                 insecure: bool = False) -> None:
        self._private_dir: Path | None = None
        self.file: Path | None = None
        self.keys: CurveKeys | None = None
        check_secret_options(secret, secret_file, insecure)
        if insecure:
            log.warning(INSECURE_WARNING)
            return
        if secret_file is not None:
            self.file = Path(secret_file).expanduser()
            if not self.file.exists():
                write_secret_file(self.file, generate_secret())
            value: bytes = read_secret_file(self.file)
        elif secret is None or secret is True:
            value = _clean(generate_secret())
        else:
            value = _clean(secret)  # type: ignore[arg-type]
        self.keys = derive_keys(value)
        if self.file is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="serverless-secret-"))  # 0700
            self.file = write_secret_file(self._private_dir / _SECRET_NAME, value)

    def __repr__(self) -> str:
        return f"ManagerSecret(file={self.file})"

    def cleanup(self) -> None:
        """Remove the private copy of the secret, if this object wrote one."""
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None


def check_secret_options(secret: object, secret_file: object, insecure: bool) -> None:
    """Refuse contradictory settings (ValueError): a secret and a file, a secret and
    insecure, or ``secret=False`` (which once meant "none"; now that is ``insecure=True``)."""
    if secret is False:
        raise ValueError("secret=False does not turn security off: a secret is always used "
                         "unless you pass insecure=True (loopback only; docs/security.md)")
    if secret is not None and secret_file is not None:
        raise ValueError("give secret or secret_file, not both")
    if insecure and (secret is not None or secret_file is not None):
        raise ValueError("insecure=True means no secret: do not also give secret or secret_file")
