"""The manager side: the public :class:`Manager`, its I/O loop and its scheduler.

Users import :class:`serverless.Manager`; the modules here are its parts.
"""

__all__: list[str] = []
