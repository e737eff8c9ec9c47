"""One adapter per system (see :class:`bench.systems.base.System`), and the registry of names.

    regular            fresh interpreter per call (the seed's baseline)
    floor              floor-fork and floor-direct: bare loops, no engine
    serverless-fork    serverless, a forked child per call
    serverless-direct  serverless, calls run in the library process
    mp-pool            multiprocessing.Pool.starmap, chunksize 1
    process-pool       concurrent.futures.ProcessPoolExecutor
    parsl-htex         Parsl HighThroughputExecutor
    parsl-serverless   Parsl with serverless.parsl.ServerlessExecutor, serverless mode
    parsl-serverless-direct  the same, library_mode="direct" (no child per call)
    parsl-regular      the same, regular mode (a fresh interpreter per app call)
    ray                Ray
    dask               Dask distributed LocalCluster
"""

from __future__ import annotations

from .base import System

__all__ = ["SYSTEMS", "DEFAULT_SYSTEMS", "make_systems"]

SYSTEMS = ("regular", "floor", "floor-fork", "floor-direct", "serverless-fork",
           "serverless-direct", "mp-pool", "process-pool", "parsl-htex", "parsl-serverless",
           "parsl-serverless-direct", "parsl-regular", "ray", "dask")
DEFAULT_SYSTEMS = ("regular", "floor", "serverless-fork", "serverless-direct", "mp-pool",
                   "process-pool", "parsl-htex", "ray", "dask")


def make_systems(names: list[str], api: str = "call") -> list[System]:
    """Adapters for ``names`` in the order given ("floor" is floor-fork and floor-direct)."""
    made: list[System] = []
    for name in names:
        if name == "regular":
            from .regular import RegularSystem

            made.append(RegularSystem())
        elif name in ("floor", "floor-fork", "floor-direct"):
            from .floor import FloorSystem

            modes = ("fork", "direct") if name == "floor" else (name.split("-")[1],)
            made += [FloorSystem(mode) for mode in modes]
        elif name in ("serverless-fork", "serverless-direct"):
            from .serverless_engine import ServerlessSystem

            made.append(ServerlessSystem(name.split("-")[1], api))
        elif name == "mp-pool":
            from .pools import MultiprocessingPool

            made.append(MultiprocessingPool())
        elif name == "process-pool":
            from .pools import ProcessPool

            made.append(ProcessPool())
        elif name == "parsl-htex":
            from .parsl_peer import ParslHtex

            made.append(ParslHtex())
        elif name in ("parsl-serverless", "parsl-serverless-direct", "parsl-regular"):
            from .parsl_serverless import ParslServerless

            made.append(ParslServerless(name.split("-")[1],
                                        "direct" if name.endswith("-direct") else "fork"))
        elif name == "ray":
            from .ray_peer import RayCluster

            made.append(RayCluster())
        elif name == "dask":
            from .dask_peer import DaskCluster

            made.append(DaskCluster())
        else:
            raise ValueError(f"unknown system {name!r} (choose from {', '.join(SYSTEMS)})")
    return made
