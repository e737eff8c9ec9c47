"""The :class:`Library`: functions, the modules they need, a setup, and resources.

A library is what the manager installs and deploys as instances on workers. Its functions
and setup travel by value once per instance (see :mod:`serverless.serialization`); each
instance imports the library's modules and runs its setup once, then serves calls either by
forking a child per call (``mode="fork"``, isolation between calls) or by running them in
the instance process itself (``mode="direct"``, the fastest).

The modules to import up front are the ones named in ``imports`` plus the ones the
functions import in their bodies (``import x`` inside a function would otherwise run again
in every forked child): :func:`discover_imports` finds those by reading the bytecode of the
functions, of functions nested in them and of the user functions they call.
"""

from __future__ import annotations

import dis
import math
import os
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .environment import Environment
from .serialization import dumps_by_value

__all__ = ["Library", "LibraryPayload", "discover_imports", "MODES", "CHUNK_FUNCTION"]

MODES = ("fork", "direct")
# every instance also serves this name: one call that runs a function over a list of
# argument tuples (``Manager.map(..., chunksize=n)``); not an identifier, so no user
# function can take it
CHUNK_FUNCTION = "serverless:chunk"


@dataclass(frozen=True)
class LibraryPayload:
    """What a library instance unpickles at start (the Deploy message's payload)."""

    name: str
    functions: dict[str, Callable[..., Any]]
    imports: tuple[str, ...]
    discovered_imports: tuple[str, ...]
    setup: Callable[[], Any] | None
    setup_args: tuple = ()
    learn_imports: bool = True


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _imports_in_code(code: types.CodeType) -> set[str]:
    found = set()
    for inner in _code_objects(code):
        consts: list[Any] = []
        for ins in dis.get_instructions(inner):
            if ins.opname == "IMPORT_NAME":
                level = consts[-2] if len(consts) >= 2 else 0
                if level == 0 and isinstance(ins.argval, str):
                    found.add(ins.argval)
            consts = (consts + [ins.argval])[-2:] if ins.opname == "LOAD_CONST" else []
    return found


def discover_imports(functions: Iterable[Callable[..., Any]], depth: int = 3) -> list[str]:
    """Modules imported inside the bodies of ``functions`` and of the user functions they call.

    Only absolute imports are returned, in a stable order. Functions from installed
    packages are not followed (their imports happen when they are imported themselves).
    """
    found: set[str] = set()
    seen: set[int] = set()
    frontier = [f for f in functions if isinstance(f, types.FunctionType)]
    for _ in range(depth + 1):
        following: list[types.FunctionType] = []
        for fn in frontier:
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            found |= _imports_in_code(fn.__code__)
            names = set()
            for inner in _code_objects(fn.__code__):
                names.update(inner.co_names)
            for name in names:
                value = fn.__globals__.get(name)
                if isinstance(value, types.FunctionType) and value.__module__ == fn.__module__:
                    following.append(value)
            for cell in fn.__closure__ or ():
                try:
                    value = cell.cell_contents
                except ValueError:
                    continue
                if isinstance(value, types.FunctionType):
                    following.append(value)
        frontier = following
    return sorted(found)


def _function_table(
    functions: Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]],
) -> dict[str, Callable[..., Any]]:
    if isinstance(functions, Mapping):
        table = dict(functions)
    else:
        table = {}
        for fn in functions:
            name = getattr(fn, "__name__", None)
            if not name:
                raise TypeError(f"{fn!r} has no __name__; pass a dict of name -> function")
            if name in table:
                raise ValueError(f"two functions are named {name!r}; pass a dict to rename one")
            table[name] = fn
    for name, fn in table.items():
        if not callable(fn):
            raise TypeError(f"library function {name!r} is not callable: {fn!r}")
    if not table:
        raise ValueError("a library needs at least one function")
    return table


@dataclass
class Library:
    """A named set of functions served by warm instances.

    Args:
        name: the name calls use to reach it.
        functions: the functions (by ``__name__``) or a dict of name -> function.
        imports: modules every instance imports once, before any call.
        setup: called once per instance after the imports; its return value is what
            :func:`serverless.state` returns inside calls.
        mode: ``"fork"`` (a child per call) or ``"direct"`` (calls run in the instance).
        slots: how many calls one instance runs at once. In direct mode an instance runs
            one call at a time, so ``slots=N`` there means up to N instances of one slot.
        cores: cores one instance reserves on its worker (default: ``slots``).
        memory_mb: memory one instance reserves on its worker (0: no reservation).
        timeout: seconds after which a call is killed (None: no limit).
        max_instances: at most this many instances at once (None: as many as fit).
        env: environment variables set in the instance process.
        python: the interpreter that runs instances (default: the worker's own).
        environment: a :class:`serverless.Environment` (or the path of one) whose interpreter
            runs instances: a packed archive sent to workers and unpacked once per node,
            or an environment directory visible to every worker.
        discover: also import the modules the functions import in their bodies.
        learn_imports: in fork mode, import between forks the modules that calls imported
            and the instance had not (lazily loaded submodules such as ``numpy.random``),
            so that later calls start with them (see ``Manager.learned_imports``).
    """

    name: str
    functions: Any
    imports: Iterable[str] = ()
    setup: Callable[[], Any] | None = None
    mode: str = "fork"
    slots: int = 1
    cores: float | None = None
    memory_mb: int = 0
    timeout: float | None = None
    max_instances: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    python: str | None = None
    discover: bool = True
    environment: Environment | str | os.PathLike | None = None
    learn_imports: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a library needs a non-empty name")
        self.functions = _function_table(self.functions)
        self.imports = tuple(self.imports)
        for module in self.imports:
            if not isinstance(module, str) or not module:
                raise TypeError(f"imports must be module names, not {module!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"slots must be a positive integer, not {self.slots!r}")
        if self.mode == "direct" and self.slots != 1:
            # an instance runs one call at a time in direct mode: slots=N means N instances
            # of one slot (each reserving one core unless cores is given), so that switching
            # the quick start from fork to direct keeps its parallelism
            if self.max_instances is None:
                self.max_instances = self.slots
            self.slots = 1
        if self.cores is None:
            self.cores = float(self.slots)
        if not (self.cores > 0 and math.isfinite(self.cores)):
            raise ValueError(f"cores must be positive, not {self.cores!r}")
        if self.memory_mb < 0:
            raise ValueError("memory_mb must be >= 0")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError("timeout must be positive seconds or None")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError("max_instances must be >= 1 or None")
        if self.setup is not None and not callable(self.setup):
            raise TypeError("setup must be callable")
        self.env = dict(self.env)
        if self.environment is not None and not isinstance(self.environment, Environment):
            self.environment = Environment(self.environment)
        if self.environment is not None and self.python is not None:
            raise ValueError("give python= or environment=, not both: an environment brings "
                             "its own interpreter")

    def payload(self) -> LibraryPayload:
        discovered = discover_imports(self.functions.values()) if self.discover else []
        if self.discover and self.setup is not None:
            discovered = sorted(set(discovered) | set(discover_imports([self.setup])))
        return LibraryPayload(
            name=self.name,
            functions=dict(self.functions),
            imports=tuple(self.imports),
            discovered_imports=tuple(m for m in discovered if m not in self.imports),
            setup=self.setup,
            learn_imports=bool(self.learn_imports),
        )

    def serialize(self) -> bytes:
        """The library by value, as sent to each new instance."""
        carried = list(self.functions.values()) + ([self.setup] if self.setup else [])
        return dumps_by_value(self.payload(), carried)
