"""The exceptions serverless raises, all derived from :class:`ServerlessError`.

A call's future ends in one of three ways: its value; the function's own exception
(re-raised with the remote traceback as ``__cause__``); or one of the typed errors below,
which say what went wrong outside the function (its process died, its worker vanished, the
manager shut down...). Errors raised by ``Manager.call`` itself (unknown names, arguments
that cannot be pickled) are raised at once and nothing is queued.
"""

from __future__ import annotations

import signal

__all__ = [
    "AddressInUse",
    "ServerlessError",
    "UnknownLibrary",
    "UnknownFunction",
    "SerializationError",
    "ArgumentNotSerializable",
    "ArgumentsTooLarge",
    "ResultNotSerializable",
    "ResultTooLarge",
    "FunctionError",
    "RemoteTraceback",
    "CallCrashed",
    "CallTimeout",
    "CallOutOfMemory",
    "LibraryFailed",
    "WorkerLost",
    "ManagerClosed",
    "QueueFull",
    "ProtocolError",
    "ProtocolVersionError",
    "SecurityError",
    "describe_exit",
    "DataError",
    "CacheFull",
    "FileIntegrityError",
    "ArchiveError",
    "TransferFailed",
]


class ServerlessError(Exception):
    """Base class of every error serverless raises."""


class UnknownLibrary(ServerlessError, LookupError):
    """No library of that name is installed on the manager."""


class UnknownFunction(ServerlessError, LookupError):
    """The library has no function of that name."""


class SerializationError(ServerlessError):
    """Something could not be pickled or unpickled."""


class ArgumentNotSerializable(SerializationError, TypeError):
    """A call's arguments cannot be pickled (raised by ``call()``; nothing is queued)."""


class _OverLimit(Exception):
    """An error about something ``size`` bytes long against a ``limit`` (both kept when pickled)."""

    def __init__(self, message: str, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit

    def __reduce__(self):
        return (type(self), (str(self), self.size, self.limit))


class ArgumentsTooLarge(_OverLimit, ArgumentNotSerializable):
    """A call's pickled arguments are over the largest message allowed on its way.

    ``call()`` raises it when they are over the manager's ``max_message_bytes``; the call's
    future raises it when they fit the manager's limit but not the smaller one of the worker
    chosen to run it (``serverless-worker --max-message-bytes``). Nothing else fails.
    ``size`` and ``limit`` are in bytes.
    """


class ResultNotSerializable(SerializationError):
    """The function ran but its return value could not be pickled or unpickled."""


class ResultTooLarge(_OverLimit, ResultNotSerializable):
    """The function ran but its pickled result is over the manager's ``max_message_bytes``.

    The call fails; the worker and the library instance keep serving. ``size`` and ``limit``
    are in bytes.
    """


class RemoteTraceback(Exception):
    """Carries the traceback text of a remote exception; set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class FunctionError(ServerlessError):
    """The function raised an exception that could not travel back as itself.

    ``type_name`` is the qualified name of the original exception type and
    ``remote_traceback`` its formatted traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self):  # keep it picklable with its fields
        return (FunctionError, (self.type_name, self.message, self.remote_traceback))


def describe_exit(exit_code: int) -> str:
    """Say in words how a process ended, from a decoded exit code (negative: a signal)."""
    if exit_code >= 0:
        return f"exit code {exit_code}"
    signum = -exit_code
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = {
        signal.SIGSEGV: " (segmentation fault)",
        signal.SIGKILL: " (killed: out of memory, a timeout or an operator)",
        signal.SIGABRT: " (aborted)",
        signal.SIGBUS: " (bus error)",
        signal.SIGFPE: " (arithmetic error)",
    }.get(signum, "")  # type: ignore[call-overload]
    return f"{name}({exit_code}){hint}"


class CallCrashed(ServerlessError):
    """The process running the call died before it returned a result.

    ``exit_code`` is the process's exit code, negative for the signal that killed it.
    The library instance itself lives on.
    """

    def __init__(self, exit_code: int, detail: str = "") -> None:
        text = f"the call's process ended with {describe_exit(exit_code)}"
        super().__init__(text + (f": {detail}" if detail else ""))
        self.exit_code = exit_code
        self.signal = -exit_code if exit_code < 0 else None

    def __reduce__(self):
        return (CallCrashed, (self.exit_code,))


class CallTimeout(ServerlessError, TimeoutError):
    """The call ran longer than its timeout; its process was killed."""


class CallOutOfMemory(ServerlessError, MemoryError):
    """The call went over its library's memory limit; its process was killed."""


class LibraryFailed(ServerlessError):
    """The library could not start (an import or its setup failed), so its calls cannot run.

    ``remote_traceback`` holds the traceback of the failure on the worker.
    """

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message + (f"\n{remote_traceback}" if remote_traceback else ""))
        self.remote_traceback = remote_traceback


class WorkerLost(ServerlessError):
    """The worker (or library process) holding the call was lost more often than retries allow."""


class ManagerClosed(ServerlessError):
    """The manager shut down before the call finished, or was already shut down."""


class QueueFull(ServerlessError):
    """``Manager.call`` (or ``submit``, ``map``) found ``max_queued`` calls unfinished and the
    manager was set to refuse rather than wait (``queue_full="raise"``); nothing was queued."""


class ProtocolError(ServerlessError):
    """A message could not be decoded or is not valid in this protocol version."""


class ProtocolVersionError(ProtocolError):
    """A peer speaks another version of the protocol (``version`` is the peer's)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version

    def __reduce__(self):
        return (ProtocolVersionError, (str(self), self.version))


class AddressInUse(ServerlessError, OSError):
    """The manager cannot listen on the address asked for: another process holds the port
    (or the host is not an address of this machine). The message names the address."""


class SecurityError(ServerlessError, ValueError):
    """A setting that would be unsafe: listening beyond loopback without a secret, a secret
    file other users can read, a secret too short to resist guessing. The message says what
    to do instead (see docs/security.md)."""


class DataError(ServerlessError):
    """A call's input file could not be made available on its worker (see docs/data.md)."""


class CacheFull(_OverLimit, DataError, OSError):
    """A call's input files cannot fit in the worker's cache (``--disk``); names the sizes.

    Raised only for inputs that could never fit (larger than the whole cache); a call whose
    inputs fit once other calls release theirs waits instead. ``size`` and ``limit`` are in
    bytes.
    """


class FileIntegrityError(DataError):
    """Downloaded or received bytes do not have the declared hash; names both hashes."""

    def __init__(self, message: str, expected: str = "", received: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.received = received

    def __reduce__(self):
        return (type(self), (str(self), self.expected, self.received))


class ArchiveError(DataError):
    """An input archive (``File(..., unpack=True)``) is corrupt, truncated or unsupported."""


class TransferFailed(DataError):
    """An input file could not be fetched from any source (the URL, the manager, peers)."""
