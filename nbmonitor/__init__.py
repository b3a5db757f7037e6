"""nbmonitor: know when a notebook cell, training loop or script stalls, crashes or fails.

``with nbmonitor.watch(eta=30) as run:`` and ``for x in nbmonitor.track(items):``
make monitored runs; ``nbmonitor-watcher start`` watches every run of the repo
and reports stalls, crashes and failures.
"""

from __future__ import annotations

from .errors import CorruptRecordError, NbmonitorError, RepoError, WatcherError
from .repo import Repo
from .run import Run, current_run, report_progress, track, watch

__all__ = [
    "CorruptRecordError",
    "NbmonitorError",
    "Repo",
    "RepoError",
    "Run",
    "WatcherError",
    "__version__",
    "current_run",
    "report_progress",
    "track",
    "watch",
]

__version__ = "0.1.0"
