"""``on_stall="exit"``: a run that stalls ends its own process, so that its launcher restarts it.

torchrun restarts workers that fail (``--max-restarts``) but never notices one that hangs; SLURM
requeues a job that exits. A run made with ``on_stall="exit"`` (or ``NBMONITOR_ON_STALL=exit``)
turns its hang into such an exit: once its writer thread sees it stalled, it makes sure the stall
is claimed in the repo (so it is told once, with the stack the thread just took, whether or not a
watcher looked in time), ends the run as failed (``Stalled``), writes that, and exits the process
with status ``EXIT_STATUS``, whatever its main thread is stuck in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading

from .errors import CorruptRecordError
from .record import RunRecord
from .repo import Repo

__all__ = ["CHOICES", "EXIT_STATUS", "WAIT", "Teller", "choice", "leave"]

CHOICES = ("report", "exit")
#: The exit status of a process ended for its stall: 124, as ``timeout`` says "timed out".
EXIT_STATUS = 124
#: Longest a stalled run waits for its stall to be claimed before it exits anyway (a repo that
#: cannot be written must not keep a hang hanging).
WAIT = 5.0

log = logging.getLogger("nbmonitor")


def choice(value: object) -> str:
    """What a run does when it stalls: "report" (the default) or "exit"; by default
    ``NBMONITOR_ON_STALL``. ValueError names a bad value."""
    chosen = value if value is not None else (os.environ.get("NBMONITOR_ON_STALL") or "report")
    if chosen not in CHOICES:
        where = "on_stall" if value is not None else "NBMONITOR_ON_STALL"
        raise ValueError(f"{where} must be 'report' or 'exit', got {str(chosen)[:40]!r}")
    return str(chosen)


class Teller:
    """Makes sure a stalled run's stall is claimed before its process exits: looks at most
    every ``EVERY`` seconds, reading only the run files that changed since its last look."""

    EVERY = 0.5

    def __init__(self, repo: Repo) -> None:
        from .config import NotifierStore
        from .repo import Scanner
        from .watcher import Watcher

        self.repo = repo
        self._scanner = Scanner(repo)
        try:
            notifiers = NotifierStore(repo).load()
        except (CorruptRecordError, OSError):  # claim for none; the watcher says what is wrong
            notifiers = []
        self._watcher = Watcher(repo, notifiers=lambda: notifiers, emit=lambda event: None, role="run")
        self._looked = -math.inf

    def told(self, run: RunRecord, now_mono: float) -> bool:
        """Whether the stall of ``run`` (or of its group) is claimed: if not yet, claim what its
        state and its fellow members' files make due now, as a watcher would, for the notifiers
        of the repo (a watcher or a kernel delivers it)."""
        from . import membership

        if now_mono - self._looked < self.EVERY:
            return False
        self._looked = now_mono
        subject = membership.subject(run)
        if _stall_claimed(self.repo, subject):
            return True
        members = [run]
        if run.group is not None:
            job = run.group.job
            members += [
                r
                for r in self._scanner.scan()
                if r.group is not None and r.group.job == job and r.name == run.name and r.id != run.id
            ]
        self._watcher.check(members)
        return _stall_claimed(self.repo, subject)


def _stall_claimed(repo: Repo, subject: str) -> bool:
    return any(key.startswith("stalled-") for key in repo.claims(subject))


def leave(name: str, waited: bool) -> None:
    """End this process now (from the writer thread, whatever the main thread is stuck in),
    after flushing what it printed (as far as a stream lets itself be flushed in a second)."""
    how = "" if waited else " (its stall could not be recorded in time)"
    log.warning(
        "nbmonitor: run %r stalled; its process exits with status %d so that its launcher restarts it "
        "(on_stall='exit')%s",
        name,
        EXIT_STATUS,
        how,
    )
    flushing = threading.Thread(target=_flush, daemon=True)
    flushing.start()
    flushing.join(1.0)  # a stream held by the stuck thread must not keep the process here
    os._exit(EXIT_STATUS)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing more to save
            stream.flush()
