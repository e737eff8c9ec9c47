"""The shared secret and the CURVE keys derived from it.

Pickles run code, so over TCP only peers holding the user's secret may talk to each other.
The secret never travels and never appears on a command line or in a log: the manager and
each worker read it (from memory or a 0600 file) and derive the same two CURVE keypairs::

    secret --scrypt(n=2**14)--> 32-byte master --HKDF-SHA256 "server"--> server keypair
                                               --HKDF-SHA256 "client"--> client keypair

The manager serves with the server keypair and accepts only connections that present the
client public key (its ZAP handler, :mod:`serverless.transport`); a worker connects with
the client keypair and, knowing the server public key, authenticates the manager in turn.
scrypt makes each guess at a secret cost about 0.1 s and 16 MB, which matters only for
secrets people chose themselves; generated ones (:func:`generate_secret`) are 256 bits.

This module owns: reading, checking, generating and writing secrets (:class:`SecretFile`),
the rule that a manager binding anything but loopback needs one (:func:`require_secret`),
and key derivation (:func:`derive_keys`). See docs/security.md for the threat model.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from .errors import SecurityError

__all__ = [
    "SECRET_FILE_ENV",
    "MIN_SECRET_LENGTH",
    "CurveKeys",
    "ManagerSecret",
    "derive_keys",
    "generate_secret",
    "is_loopback",
    "read_secret_file",
    "require_secret",
    "write_secret_file",
]

SECRET_FILE_ENV = "SERVERLESS_SECRET_FILE"  # names a file; the secret itself is never in env
MIN_SECRET_LENGTH = 16
_SALT = b"serverless CURVE keys v1"
_SECRET_NAME = "serverless.secret"
_HOW_TO = "see docs/security.md"


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


@functools.lru_cache(maxsize=8)
def derive_keys(secret: str | bytes) -> CurveKeys:
    """The CURVE keypairs for ``secret`` (deterministic: every holder derives the same)."""
    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE security; install pyzmq "
                            "from its wheels (they include libsodium/tweetnacl)")
    stretched = hashlib.scrypt(_clean(secret), salt=_SALT, n=2**14, r=8, p=1, dklen=32)
    master = hmac.new(_SALT, stretched, hashlib.sha256).digest()  # HKDF extract

    def keypair(role: bytes) -> tuple[bytes, bytes]:
        secret_key = z85.encode(_hkdf(master, role))
        return zmq.curve_public(secret_key), secret_key

    server_public, server_secret = keypair(b"server")
    client_public, client_secret = keypair(b"client")
    return CurveKeys(server_public, server_secret, client_public, client_secret)


def generate_secret() -> str:
    """A new random secret: 256 bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def write_secret_file(path: str | os.PathLike, secret: str | bytes) -> Path:
    """Write ``secret`` to a new file readable by its owner only (mode 0600).

    A missing parent directory is made, readable by its owner only (mode 0700).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = _clean(secret)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data + b"\n")
    finally:
        os.close(fd)
    return path


def read_secret_file(path: str | os.PathLike) -> bytes:
    """The secret in ``path``; refused if other users could read or change the file."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SecurityError(f"cannot read the secret file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecurityError(f"the secret file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SecurityError(
                f"the secret file {path} is open to other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(1 << 16)
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
        f"refusing to listen on {host!r} without a secret: anyone who can reach that port "
        "could run code in this process. Pass secret=True (generate one; workers read "
        "Manager.secret_file), secret='...' or secret_file=PATH, and start workers with "
        f"`serverless-worker HOST:PORT --secret-file PATH` ({_HOW_TO}); or listen on "
        "127.0.0.1 only.")


class ManagerSecret:
    """The manager's secret: its keys and the file its workers read.

    ``secret``: None (no secret), True (generate one), or the secret (str or bytes).
    ``secret_file``: a file to read the secret from; if it does not exist, a new secret is
    generated and written there (mode 0600). A secret given in memory or generated without a
    file is written to a private temporary directory, removed by :meth:`cleanup`.
    """

    def __init__(self, secret: str | bytes | bool | None, secret_file: str | os.PathLike | None) -> None:
        self._private_dir: Path | None = None
        self.file: Path | None = None
        if secret is not None and secret is not False and secret_file is not None:
            raise ValueError("give secret or secret_file, not both")
        if secret_file is not None:
            self.file = Path(secret_file).expanduser()
            if not self.file.exists():
                write_secret_file(self.file, generate_secret())
            value: bytes | None = read_secret_file(self.file)
        elif secret is True:
            value = _clean(generate_secret())
        elif secret is None or secret is False:
            value = None
        else:
            value = _clean(secret)
        self.keys: CurveKeys | None = derive_keys(value) if value is not None else None
        if value is not None and self.file is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="serverless-secret-"))  # 0700
            self.file = write_secret_file(self._private_dir / _SECRET_NAME, value)

    def __repr__(self) -> str:
        return f"ManagerSecret(file={self.file})"

    def cleanup(self) -> None:
        """Remove the private copy of the secret, if this object wrote one."""
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
