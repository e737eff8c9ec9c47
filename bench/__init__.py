"""The benchmark: the same calls through serverless, its floors, the regular way and peers.

``python -m bench`` runs it (see ``python -m bench --help`` and docs/performance.md)::

    cli ──plan──> runner ──for each (workload, system)──> System.open / run_all / latency / close
                    │                                        │
                    └──> Run records (seconds, calls/s, p50/p99, correct?) ──> report (table,
                                                                               targets, JSON)
                                                                          ──> chart (PNG)

One module per job: :mod:`bench.funcs` holds the functions every system runs,
:mod:`bench.workloads` what is called with which arguments and library imports,
:mod:`bench.systems` one adapter per system, :mod:`bench.runner` the timing,
:mod:`bench.report` and :mod:`bench.chart` the output, :mod:`bench.machine` the machine
facts, :mod:`bench.floor_worker` the floors' bare loops. Apart from the comparison,
``python -m bench.breakdown`` splits a call's cost in the engine (:mod:`bench.cpu`,
:mod:`bench.profiling`), ``python -m bench.costs`` measures the unit costs beneath it, and
``python -m bench.probe`` is a one-minute probe of calls/s, manager CPU and latency for
comparing two versions of the engine side by side.
"""
