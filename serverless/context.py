"""What code running inside a library instance can ask about its surroundings.

The library runtime sets the instance's context once, after its setup ran; calls (in the
instance itself or in its forked children) read it through :func:`state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ServerlessError

__all__ = ["state", "InstanceContext", "current_instance", "set_current_instance"]


@dataclass(frozen=True)
class InstanceContext:
    """The library instance this process belongs to."""

    library: str
    instance_id: int
    mode: str
    state: Any
    has_setup: bool


_current: InstanceContext | None = None


def set_current_instance(context: InstanceContext | None) -> None:
    """Called by the library runtime only."""
    global _current
    _current = context


def current_instance() -> InstanceContext | None:
    """The instance this code runs in, or None outside a library instance."""
    return _current


def state() -> Any:
    """The value the library's ``setup`` returned, shared by every call of this instance.

    Raises ServerlessError outside a library instance or when the library has no setup.
    """
    context = _current
    if context is None:
        raise ServerlessError("serverless.state() is only available inside a library call")
    if not context.has_setup:
        raise ServerlessError(f"library {context.library!r} has no setup function, so no state")
    return context.state
