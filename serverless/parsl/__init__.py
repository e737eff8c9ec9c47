"""Parsl integration: :class:`ServerlessExecutor`, a Parsl executor backed by serverless.

Install with the ``parsl`` extra (``pip install 'serverless[parsl]'``) and change only the
Parsl config::

    from parsl.config import Config
    from parsl.providers import LocalProvider
    from serverless.parsl import ServerlessExecutor

    config = Config(executors=[ServerlessExecutor(
        label="serverless",
        function_exec_mode="serverless",   # or "regular": a fresh interpreter per app call
        provider=LocalProvider(init_blocks=1, max_blocks=1),
    )])

Modules:

* :mod:`.executor`: the executor (a Parsl ``BlockProviderExecutor``): manager, launch
  command, submit, scaling figures, shutdown.
* :mod:`.apps`: which library serves an app; an app's function becomes a library function
  once, by value, with its imports hoisted into the library process.
* :mod:`.regular`: the regular mode's runner, a fresh interpreter per app call.
* :mod:`.resources`: ``parsl_resource_specification`` checked and turned into a request.

``ServerlessExecutor`` is imported lazily so that :mod:`.regular`, which runs in library
processes and fresh interpreters, does not import the executor's dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerlessExecutor"]


def __getattr__(name: str) -> Any:
    if name == "ServerlessExecutor":
        from .executor import ServerlessExecutor

        globals()[name] = ServerlessExecutor
        return ServerlessExecutor
    raise AttributeError(f"module 'serverless.parsl' has no attribute {name!r}")
