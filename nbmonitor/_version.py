"""nbmonitor's version, as installed (its one source is labextension/package.json)."""

from __future__ import annotations

import functools

__all__ = ["version"]


@functools.cache
def version() -> str:
    """The installed distribution's version, or ``unknown`` when nbmonitor runs uninstalled."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("nbmonitor")
    except PackageNotFoundError:
        return "unknown"
