"""Per-worker keys: one CURVE keypair per worker node, on an allow-list the manager checks.

With the shared secret alone, every worker holds the same client key, and whoever holds
the secret can also derive the manager's server key. A *worker key file* instead holds the
manager's server public key (so the worker still verifies the manager) and a keypair of
the worker's own, and nothing from which the secret or the server's secret key follows::

    # serverless worker key (keep it private: mode 0600)
    server-public <z85>
    public <z85>
    secret <z85>

The manager admits, besides the shared secret's client key (its local workers use it),
the public keys listed in an *allow-list* file (``Manager(worker_keys=PATH)``), one per
line, optionally followed by a name; a line starting with ``#`` is a comment. The ZAP handler re-reads the
file when it changes, so deleting a line revokes that node for every new connection at
once, without touching the other nodes or the secret.

Make a key: ``python -m serverless.worker_keys new KEYFILE --secret-file SECRET
--allow-list LIST [--name NODE]``; start the node's worker with ``serverless-worker
HOST:PORT --key-file KEYFILE`` (or ``SERVERLESS_KEY_FILE``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import zmq
from zmq.utils import z85

from .errors import SecurityError
from .safe_files import check_dir, open_private_file
from .security import CurveKeys, derive_keys, read_secret_file

__all__ = ["KEY_FILE_ENV", "AllowList", "new_worker_key", "read_worker_key", "main"]

KEY_FILE_ENV = "SERVERLESS_KEY_FILE"
_HEADER = "# serverless worker key (keep it private: mode 0600)\n"


def new_worker_key(path: str | os.PathLike, server: CurveKeys,
                   allow_list: str | os.PathLike | None = None, name: str = "") -> str:
    """Write a new worker key file at ``path`` (mode 0600, never overwritten) for the
    manager whose keys are ``server``; add its public key to ``allow_list`` if given.
    Returns the new public key (z85 text)."""
    path = Path(path).expanduser()
    public, secret = zmq.curve_keypair()
    text = (f"{_HEADER}server-public {server.server_public.decode()}\n"
            f"public {public.decode()}\nsecret {secret.decode()}\n")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path.parent, "the directory of the key file", sticky_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    if allow_list is not None:
        allow = Path(allow_list).expanduser()
        fd = os.open(allow, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, f"{public.decode()} {name}".rstrip().encode() + b"\n")
        finally:
            os.close(fd)
    return public.decode()


def read_worker_key(path: str | os.PathLike) -> CurveKeys:
    """The keys in a worker key file: the manager's public key and the worker's pair (the
    server's secret key is not there: :attr:`CurveKeys.server_secret` is empty)."""
    path = Path(path).expanduser()
    fd = open_private_file(path, "the worker key file")
    try:
        text = os.read(fd, 1 << 16).decode(errors="replace")
    finally:
        os.close(fd)
    fields: dict[str, bytes] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and not words[0].startswith("#"):
            fields[words[0]] = words[1].encode()
    try:
        server_public, public, secret = (fields["server-public"], fields["public"],
                                         fields["secret"])
        if zmq.curve_public(secret) != public or len(z85.decode(server_public)) != 32:
            raise ValueError
    except (KeyError, ValueError, zmq.ZMQError):
        raise SecurityError(f"{path} is not a serverless worker key file "
                            "(python -m serverless.worker_keys new ...)") from None
    return CurveKeys(server_public, b"", public, secret)


class AllowList:
    """The public keys in an allow-list file, re-read whenever the file changes.

    Called by the ZAP handler with a client's raw 32-byte public key. The file must belong
    to the user and not be writable by others (whoever can write it can admit a key).
    A file that is missing or refused admits no key (and says why, once per change).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._keys: frozenset[bytes] = frozenset()
        self.error: str | None = None
        self._load()

    def __call__(self, key: bytes) -> bool:
        self._load()
        return key in self._keys

    def keys(self) -> frozenset[bytes]:
        self._load()
        return self._keys

    def _load(self) -> None:
        try:
            info = os.stat(self.path)
            stamp: tuple = (info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError as exc:
            stamp = ("missing", exc.errno)
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                fd = open_private_file(self.path, "the worker allow-list", others_may_read=True)
            except SecurityError as exc:
                self._keys, self.error = frozenset(), str(exc)
                return
            try:
                text = os.read(fd, 1 << 22).decode(errors="replace")
            finally:
                os.close(fd)
            keys = set()
            for line in text.splitlines():
                word = line.split()[:1]  # z85 has "#" in its alphabet: comments are whole lines
                if word and not word[0].startswith("#"):
                    try:
                        keys.add(z85.decode(word[0].encode()))
                    except (ValueError, TypeError):
                        continue
            self._keys = frozenset(k for k in keys if len(k) == 32)
            self.error = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless.worker_keys",
                                     description="Make a per-worker key file.")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="write a new worker key file and list its public key")
    new.add_argument("key_file", type=Path)
    new.add_argument("--secret-file", type=Path, required=True,
                     help="the manager's secret (only its public key goes into the key file)")
    new.add_argument("--allow-list", type=Path, default=None,
                     help="the manager's allow-list file (Manager(worker_keys=...)) to add it to")
    new.add_argument("--name", default="", help="a name for the node, written beside its key")
    args = parser.parse_args(argv)
    try:
        server = derive_keys(read_secret_file(args.secret_file))
        public = new_worker_key(args.key_file, server, args.allow_list, args.name)
    except (SecurityError, OSError) as exc:
        print(f"serverless.worker_keys: {exc}", file=sys.stderr)
        return 2
    print(public)
    return 0


if __name__ == "__main__":
    sys.exit(main())
