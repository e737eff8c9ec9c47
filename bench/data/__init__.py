"""``python -m bench.data``: environments and input files on N workers, serverless vs a shared FS.

See :mod:`bench.data.run` for what one run does and measures, :mod:`bench.data.assets`
for the inputs (built once, cached outside the repository), and docs/data.md for figures.
"""
