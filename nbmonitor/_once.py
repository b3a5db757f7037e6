"""Warnings said once, not at every retry: a lasting trouble once per cause (and once when it is
over), a thing once in all. The loops that retry every second stay quiet in between."""

from __future__ import annotations

import logging
from collections.abc import Hashable

__all__ = ["Once", "Trouble"]


class Trouble:
    """A failure that may last (a repo that cannot be written, a notifier file that is broken):
    said when it starts and whenever its cause changes, and once more when it is over."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.cause: str | None = None

    def happened(self, cause: str, message: str, *args: object) -> None:
        """It failed because of ``cause``; say ``message`` unless this cause was said already."""
        if cause != self.cause:
            self.cause = cause
            self.log.warning(message, *args)

    def over(self, message: str | None = None, *args: object) -> None:
        """It works again; say ``message`` (if any) if a failure was said."""
        if self.cause is not None:
            self.cause = None
            if message is not None:
                self.log.warning(message, *args)


class Once:
    """Things each said once in all (a file set aside, a file made private)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._said: set[Hashable] = set()

    def say(self, about: Hashable, message: str, *args: object) -> None:
        if about not in self._said:
            self._said.add(about)
            self.log.warning(message, *args)
