"""``%watch auto --after S``: every cell that runs longer than S seconds becomes a run of its own.

Such a run has no ETA (it cannot stall); it ends as its cell does, so a
failure notifies, and a finish too for notifiers that want ``finished``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .repo import Repo
from .run import Run

__all__ = ["Auto"]


class Auto:
    """Makes a run of the running cell once it has run ``after`` seconds (asked on each tick)."""

    def __init__(self, after: float, started: Callable[[Repo], Any]) -> None:
        self.after = after
        self._started = started  # told of each run made, so its events are claimed and sent
        self._cell: tuple[float, int | None] | None = None  # (started, cell number)
        self.run: Run | None = None
        self._lock = threading.Lock()

    def cell_started(self, count: int | None) -> None:
        """A cell began (None: a cell with a run of its own, a ``%%watch`` cell)."""
        with self._lock:
            self._cell, self.run = (time.monotonic(), count), None

    def tick(self, now_mono: float) -> None:
        with self._lock:
            if self._cell is None or self.run is not None or now_mono - self._cell[0] < self.after:
                return
            count = self._cell[1]
            self.run = Run(name=f"cell {count}" if count is not None else "cell")
        self._started(self.run.repo)

    def cell_ended(self, error: BaseException | None) -> None:
        with self._lock:
            run, self._cell, self.run = self.run, None, None
        if run is not None:
            run.end_as(error)
