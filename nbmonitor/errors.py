"""The exceptions nbmonitor raises, each with a message a user can act on."""

from __future__ import annotations

__all__ = ["CorruptRecordError", "NbmonitorError", "NewerFormatError", "RepoError", "WatcherError"]


class NbmonitorError(Exception):
    """Base class of every error nbmonitor raises on purpose."""


class RepoError(NbmonitorError):
    """The repo directory cannot be used (not a directory, not writable, ...)."""


class CorruptRecordError(NbmonitorError):
    """A file in the repo is not a valid record; the message names the file and the problem."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NewerFormatError(ValueError):
    """A record written by a newer nbmonitor: left as it is, for the newer one to read."""


class WatcherError(NbmonitorError):
    """The watcher cannot start or stop (another one holds the repo, ...)."""
