"""The watcher daemon: ``nbmonitor-watcher start`` looks at every run of a repo, claims and reports events.

``Watcher.poll()`` is one pass: an Observer turns the repo's run files into
states (nbmonitor.observe), a Claimer claims the events they make due
(nbmonitor.claims). Clocks and process checks are injected, so tests drive
it directly; ``serve()`` is the loop around it, with the one-watcher-per-repo
lock, the ``watcher.json`` status file and the sender that delivers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import _process, _pyspy
from ._format import one_line
from .claims import Claimer, log_event
from .config import NotifierConfig
from .errors import WatcherError
from .events import Event
from .groups import GroupObservation, gather
from .observe import AliveCheck, Observation, Observer, watcher_info
from .outbox import Sender
from .record import RunRecord
from .repo import Repo, write_atomic

__all__ = ["Watcher", "serve", "watcher_info"]

log = logging.getLogger("nbmonitor.watcher")

Clock = Callable[[], float]


class Watcher:
    """An Observer and a Claimer over one repo, one ``poll()`` at a time."""

    def __init__(
        self,
        repo: Repo,
        *,
        grace: float | None = None,
        emit: Callable[[Event], None] = log_event,
        notifiers: Callable[[], Sequence[NotifierConfig]] = tuple,
        wall: Clock = time.time,
        mono: Clock = time.monotonic,
        alive: AliveCheck = _process.is_alive,
        host: str | None = None,
        boot_id: str | None = None,
        role: str = "watcher",
        interval: float = 1.0,
        outside: Callable[[RunRecord], RunRecord] | None = None,
    ) -> None:
        self.repo = repo
        self.observer = Observer(
            repo,
            grace=grace,
            wall=wall,
            mono=mono,
            alive=alive,
            host=host,
            boot_id=boot_id,
            interval=interval,
        )
        self.claimer = Claimer(repo, notifiers=notifiers, emit=emit, role=role, wall=wall, outside=outside)
        self._said: set[tuple[str, str]] = set()  # (group id, problem) already warned of

    @property
    def alive(self) -> AliveCheck:
        return self.observer.alive

    @alive.setter
    def alive(self, check: AliveCheck) -> None:
        self.observer.alive = check

    def poll(self) -> list[Event]:
        """Look at every run once; claim and emit the events that are due, for runs of their
        own and for groups (nbmonitor.groups). Returns those this watcher won (another watcher
        or kernel may have claimed the rest)."""
        alone, groups = gather(self.observer.look(skip=self.claimer.done))
        self._say_problems(groups)
        won = self.claimer.claim(alone, groups)
        self.claimer.keep_only(self.observer.known)
        self._said = {said for said in self._said if said[0] in self.claimer.groups}
        return won

    def check(self, runs: Iterable[RunRecord]) -> list[Event]:
        """``poll()`` over the given records only."""
        alone, groups = gather(self.observer.look(runs, skip=self.claimer.done))
        self._say_problems(groups)
        return self.claimer.claim(alone, groups)

    def _say_problems(self, groups: Iterable[GroupObservation]) -> None:
        """What does not add up in a group (two members claiming one rank, ...), said once:
        its members are still watched, together."""
        for group in groups:
            for problem in group.problems:
                if (group.id, problem) not in self._said:
                    self._said.add((group.id, problem))
                    log.warning("group %s (%s): %s", group.id[:8], one_line(group.name), problem)

    def observe(self, runs: Iterable[RunRecord] | None = None) -> list[Observation]:
        """The state of ``runs`` (default: every run of the repo) now, newest first, claiming nothing."""
        return self.observer.glance(runs)


def serve(
    repo: Repo,
    *,
    interval: float = 1.0,
    grace: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Watch ``repo`` until ``stop`` is set. Only one watcher per repo: a second raises WatcherError."""
    from filelock import FileLock, Timeout

    repo.ensure()
    lock = FileLock(str(repo.lock_file), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        running = watcher_info(repo)
        who = f" (pid {running['pid']} on {running['host']})" if running else ""
        raise WatcherError(
            f"a watcher is already running for {repo.path}{who}; stop it with 'nbmonitor-watcher stop' first"
        ) from None
    stop = stop or threading.Event()
    info = {
        "pid": os.getpid(),
        "host": _process.host(),
        "process_start": _process.process_start(),
        "process_start_ticks": _process.start_ticks(),
        "boot_id": _process.boot_id(),
        "started_at": time.time(),
        "interval": interval,
        "grace": grace,
        "repo": str(repo.path),
    }
    try:
        write_atomic(repo.watcher_file, info)
        sender = Sender(repo)
        sender.start(interval)
        # A stalled run whose process cannot say where it is stuck: read from outside (py-spy).
        watcher = Watcher(
            repo, grace=grace, notifiers=sender.configs, interval=interval, outside=_pyspy.outside_stack
        )
        log.info("nbmonitor-watcher (pid %d) watching %s every %g s", os.getpid(), repo.path, interval)
        next_poll = time.monotonic()
        present = True
        try:
            while not stop.is_set():
                try:
                    if repo.runs_dir.is_dir() != present:
                        present = not present
                        _say_repo(repo, present, info)
                    sender.refresh()
                    if watcher.poll():
                        sender.wake()
                except Exception:  # a bad poll must not end the watcher; the next one retries
                    log.exception("poll failed")
                next_poll = max(next_poll + interval, time.monotonic())
                stop.wait(next_poll - time.monotonic())
        finally:
            sender.stop()
        log.info("nbmonitor-watcher (pid %d) stopped", os.getpid())
    finally:
        with contextlib.suppress(OSError):
            repo.watcher_file.unlink()
        lock.release()


def _say_repo(repo: Repo, present: bool, info: dict[str, Any]) -> None:
    """The repo was deleted, or is back: say so once, and be findable in it again."""
    if not present:
        log.warning("the repo %s is gone (deleted?); watching for runs to create it again", repo.path)
        return
    log.warning("the repo %s is back; watching it again", repo.path)
    with contextlib.suppress(OSError):
        write_atomic(repo.watcher_file, info)  # so 'status' and 'stop' find this watcher
