"""The kernel's recent warnings, kept for ``%watch status`` and the cells' displays.

In a kernel, a warning logged while a cell runs would be printed into that
cell, whatever it is. nbmonitor's own warnings go here instead.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from ._format import one_line

__all__ = ["Notes"]


class Notes(logging.Handler):
    """Keeps nbmonitor's recent warnings, one line each, instead of printing them into a cell."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=size)
        self._logger = logging.getLogger("nbmonitor")
        self._propagate = self._logger.propagate

    def attach(self) -> None:
        """Take nbmonitor's warnings from now on (they go nowhere else)."""
        self._logger.addHandler(self)
        self._logger.propagate = False

    def detach(self) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

    @property
    def latest(self) -> str | None:
        return self.lines[-1] if self.lines else None

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {one_line(record.getMessage())}")
