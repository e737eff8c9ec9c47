"""``python -m bench.data [--quick] [--workers 1,2,4,8] [--calls 2000] [--json PATH]``.

Runs, for each N, the serverless way and the shared-FS baseline side by side (see
:mod:`bench.data.run`), then a warm start: the N=1 serverless worker again with its
caches and environment directory kept ("forever" entries), which should transfer nothing.
Prints one table and writes every figure as JSON. Take the heavy lock for a full run:
``flock /work/coord/heavy.lock python -m bench.data``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import serverless

from ..machine import load_average, machine_facts
from . import assets
from .run import RunResult, clean, run

FULL_MODULES = ("numpy", "pandas", "sklearn")


def _dataset(zip_path: Path, shared_data: Path):
    if hasattr(serverless, "File"):
        return serverless.File(zip_path, unpack=True, cache="forever"), "File(unpack=True)"
    return str(shared_data), "shared path (serverless.File not available)"


def _row(r: RunResult, inputs: int) -> str:
    firsts = [f for f in r.first_result_s if f == f]
    return (f"| {r.system} | {r.workers} | {r.total_s:.1f} | "
            f"{min(firsts):.2f} / {max(firsts):.2f} | {r.manager_sent / 2**20:.1f} "
            f"({r.manager_sent / inputs:.2f}x) | {sum(r.peer_received) / 2**20:.1f} | "
            f"{r.env_unpacks} ({r.unpacked_files} files) |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny environment and dataset, N=1,2, 40 calls (seconds)")
    parser.add_argument("--workers", default=None, help="N values, e.g. 1,2,4,8")
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where workers keep caches and environments (default: a temp dir)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in (args.workers or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    calls = args.calls or (40 if args.quick else 2000)
    modules = () if args.quick else FULL_MODULES

    archive = assets.environment_archive(args.quick)
    zipped = assets.dataset_zip(args.quick)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="serverless-bench-data-"))
    shared_env, shared_data = assets.shared_copy(archive, zipped, base / "shared")
    dataset, dataset_how = _dataset(zipped, shared_data)
    inputs = archive.stat().st_size + zipped.stat().st_size
    print(f"environment {archive} ({archive.stat().st_size / 2**20:.0f} MB), dataset {zipped} "
          f"({zipped.stat().st_size / 2**20:.1f} MB), {calls} calls, load {load_average()}",
          flush=True)
    results: list[RunResult] = []
    for n in counts:
        for system in ("serverless", "shared-fs"):
            root = base / f"{system}-{n}"
            if system == "serverless":
                result = run(system, n, calls, root, archive, dataset, modules)
            else:
                result = run(system, n, calls, root, shared_env, str(shared_data), modules)
            results.append(result)
            print(_row(result, inputs), flush=True)
            if not (system == "serverless" and n == counts[0]):
                clean(root)
    warm = run("serverless-warm", counts[0], calls, base / f"serverless-{counts[0]}", archive,
               dataset, modules)
    results.append(warm)
    print(_row(warm, inputs), flush=True)

    header = ("| system | N | total s | first result s (min / max over workers) | manager "
              "sent MB (x inputs) | received from peers MB | env unpacks |\n|---|---|---|---|---|---|---|")
    print("\n" + header)
    for r in results:
        print(_row(r, inputs))
    report = {"time": time.time(), "machine": machine_facts(), "load_after": load_average(),
              "environment": str(archive), "environment_bytes": archive.stat().st_size,
              "dataset": str(zipped), "dataset_bytes": zipped.stat().st_size,
              "dataset_how": dataset_how, "calls": calls,
              "runs": [r.as_dict() for r in results]}
    out = args.json or base / "data-bench.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nfigures: {out}")
    if args.workdir is None:
        clean(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
