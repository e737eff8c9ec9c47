"""``parsl_resource_specification``: what the executor honours, and what it refuses.

Honoured keys (anything else is refused with Parsl's ``InvalidResourceSpecification``,
naming the key, before the call is queued):

``cores``      cores the call's library instance reserves on its worker (a number > 0).
``memory``     MB the instance reserves on its worker (an integer >= 0).
``exec_mode``  ``"serverless"`` or ``"regular"``: this call's mode, overriding the executor's
               ``function_exec_mode`` (the key TaskVineExecutor uses too).

Refused on purpose: ``disk`` (workers do not account for disk), ``gpus`` (nor GPUs),
``priority`` (calls run in submission order), ``running_time_min`` (a scheduling hint we
would silently ignore; set ``walltime=`` on the app for a limit). Calls with different
cores, memory or mode are served by different libraries (see :mod:`.apps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Request", "parse_resource_specification", "EXEC_MODES", "HONOURED", "REFUSED"]

EXEC_MODES = ("serverless", "regular")
HONOURED = ("cores", "memory", "exec_mode")
REFUSED = {
    "disk": "workers do not account for disk",
    "gpus": "workers do not account for GPUs",
    "priority": "calls run in submission order",
    "running_time_min": "it is only a hint; use the app's walltime= for a limit",
}


@dataclass(frozen=True)
class Request:
    """What one app call needs: its mode and its instance's reservation."""

    mode: str
    cores: float
    memory_mb: int


def _invalid(keys: set[str], message: str) -> Exception:
    from parsl.executors.errors import InvalidResourceSpecification

    return InvalidResourceSpecification(keys, message)


def parse_resource_specification(spec: dict[str, Any] | None, default_mode: str,
                                 default_cores: float, default_memory_mb: int) -> Request:
    """The request for one call, or ``InvalidResourceSpecification`` saying what is wrong."""
    spec = spec or {}
    if not isinstance(spec, dict):
        raise _invalid(set(), f"parsl_resource_specification must be a dict, not {spec!r}")
    unknown = set(spec) - set(HONOURED)
    if unknown:
        reasons = "; ".join(f"{key!r}: {REFUSED.get(key, 'not a known resource')}"
                            for key in sorted(unknown))
        raise _invalid(unknown, "ServerlessExecutor honours only the resource specification "
                                f"keys {', '.join(HONOURED)}; refused {reasons}")
    mode = spec.get("exec_mode", default_mode)
    if mode not in EXEC_MODES:
        raise _invalid({"exec_mode"}, f"exec_mode must be one of {EXEC_MODES}, not {mode!r}")
    cores = spec.get("cores", default_cores)
    if isinstance(cores, bool) or not isinstance(cores, (int, float)) or not (
            cores > 0 and math.isfinite(cores)):
        raise _invalid({"cores"}, f"cores must be a positive number, not {cores!r}")
    memory = spec.get("memory", default_memory_mb)
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise _invalid({"memory"}, f"memory must be an integer number of MB >= 0, not {memory!r}")
    return Request(mode=mode, cores=float(cores), memory_mb=memory)
