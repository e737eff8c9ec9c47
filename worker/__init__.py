"""The worker side: the worker agent (one per node) and the library processes it runs.

Start a worker with ``serverless-worker HOST:PORT --cores N`` or
``python -m serverless.worker HOST:PORT``; see :mod:`serverless.worker.cli`.
"""

__all__: list[str] = []
