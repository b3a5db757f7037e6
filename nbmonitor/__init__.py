"""nbmonitor: know when a notebook cell, training loop or script stalls, crashes or fails.

``with nbmonitor.watch(eta=30) as run:`` and ``for x in nbmonitor.track(items):``
make monitored runs; ``nbmonitor-watcher start`` watches every run of the repo
and reports stalls, crashes and failures.
"""

from __future__ import annotations

from typing import Any

from .errors import CorruptRecordError, NbmonitorError, RepoError, WatcherError
from .repo import Repo
from .run import Run, checkpoint, current_run, latest_checkpoint, mark, report_progress, track, watch

__all__ = [
    "CorruptRecordError",
    "NbmonitorError",
    "Repo",
    "RepoError",
    "Run",
    "WatcherError",
    "__version__",
    "checkpoint",
    "configure",
    "current_run",
    "latest_checkpoint",
    "mark",
    "report_progress",
    "track",
    "watch",
]


def __getattr__(name: str) -> Any:
    # nbmonitor.__version__ is read from the installed metadata when first asked for: reading it
    # costs more than the rest of ``import nbmonitor``.
    if name == "__version__":
        from ._version import version

        return version()
    raise AttributeError(f"module 'nbmonitor' has no attribute {name!r}")


def configure(repo: Repo | str | None = None) -> Any:
    """A form in the notebook for the notifiers of ``repo``: add, edit, test, enable, remove.

    Needs ipywidgets (``pip install 'nbmonitor[jupyter]'``); edits the same file as
    ``nbmonitor-watcher notifiers``.
    """
    try:
        from .form import configure as form
    except ImportError as e:
        raise NbmonitorError(
            f"configure() needs ipywidgets: pip install 'nbmonitor[jupyter]' ({e})"
        ) from None
    return form(repo)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbmonitor``: the ``%%watch`` and ``%watch`` magics. IPython is imported only here."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbmonitor``: remove the magics and hooks, stop the kernel's share of monitoring."""
    from .magics import unload

    unload(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server finds the REST API for the JupyterLab extension here."""
    return [{"module": "nbmonitor"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .server import load

    load(server_app)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension lies inside the package (for development installs)."""
    return [{"src": "labextension", "dest": "nbmonitor"}]
