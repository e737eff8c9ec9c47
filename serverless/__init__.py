"""serverless: run Python functions remotely at high rate from warm library processes.

Public API::

    import serverless

    lib = serverless.Library("math", [add], imports=["numpy"], mode="fork", slots=2)
    with serverless.Manager() as m:          # starts local workers
        m.install(lib)
        print(m.call("math", "add", 1, 2).result())

Everything users need is importable from here; submodules are implementation.
``Manager`` is imported lazily so that library processes, which import ``serverless`` for
:func:`state`, do not load the manager's dependencies.
"""

from __future__ import annotations

from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

from ._checkout import install_finder as _install_finder

_install_finder(_Path(__file__).resolve().parent)  # from a source checkout: its own code

from .context import current_instance, state
from .data import File
from .errors import (
    AddressInUse,
    ArchiveError,
    ArgumentNotSerializable,
    ArgumentsTooLarge,
    CacheFull,
    CallCrashed,
    CallOutOfMemory,
    CallTimeout,
    DataError,
    FileIntegrityError,
    FunctionError,
    LibraryFailed,
    ManagerClosed,
    ProtocolError,
    QueueFull,
    RemoteTraceback,
    ResultNotSerializable,
    ResultTooLarge,
    SecurityError,
    SerializationError,
    ServerlessError,
    UnknownFunction,
    TransferFailed,
    UnknownLibrary,
    WorkerLost,
)
from .environment import Environment
from .library import Library
from .protocol import PROTOCOL_VERSION

if TYPE_CHECKING:
    from serverless.executor import Executor
    from serverless.manager.config import ManagerConfig
    from serverless.manager.manager import Manager
    from serverless.manager.policy import SchedulingPolicy

__version__ = "0.1.0"

__all__ = [
    "Library",
    "Environment",
    "File",
    "Manager",
    "Executor",
    "ManagerConfig",
    "SchedulingPolicy",
    "state",
    "current_instance",
    "PROTOCOL_VERSION",
    "ServerlessError",
    "AddressInUse",
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
    "SecurityError",
    "DataError",
    "CacheFull",
    "FileIntegrityError",
    "ArchiveError",
    "TransferFailed",
]

_LAZY = {
    "Executor": "serverless.executor",
    "Manager": "serverless.manager.manager",
    "ManagerConfig": "serverless.manager.config",
    "SchedulingPolicy": "serverless.manager.policy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'serverless' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)  # the public API only (submodules are implementation)
