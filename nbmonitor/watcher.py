"""The watcher: polls a repo, applies the rules to every run, claims and reports events.

``Watcher.poll()`` is one pass with injected clocks, so tests drive it
directly; ``serve()`` is the ``nbmonitor-watcher start`` loop around it, with
the one-watcher-per-repo lock and the ``watcher.json`` status file.

Clocks: a run from this host and boot is timed with the shared monotonic
clock (immune to wall-clock jumps, and a restart pushes no deadline back).
A run from another host is timed from when this watcher first saw its
progress counter change, since that host's clock cannot be trusted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _process, rules
from .config import NotifierConfig
from .errors import CorruptRecordError, WatcherError
from .events import Event
from .outbox import Postman, claim_event
from .record import RunRecord
from .repo import Repo, Scanner, write_atomic
from .rules import State
from .templates import describe

__all__ = ["Observation", "Watcher", "serve", "watcher_info"]

log = logging.getLogger("nbmonitor.watcher")
event_log = logging.getLogger("nbmonitor.events")

Clock = Callable[[], float]
#: Whether (pid, start in epoch seconds, start in boot ticks) is a live process of this host.
AliveCheck = Callable[[int, float | None, int | None], bool]
_Alive = dict[tuple[int, float | None, int | None], bool]  # the answers of one poll


def log_event(event: Event) -> None:
    """The built-in logger notifier: one line per event on the watcher's output and log."""
    event_log.info(describe(event))


@dataclass(frozen=True, slots=True)
class Observation:
    """A run as a watcher sees it at one moment."""

    run: RunRecord
    state: State
    since_progress: float


@dataclass(slots=True)
class _Seen:
    progress: int
    first_seen: float  # local monotonic time this progress count was first seen
    claimed: set[str] | None = None
    done: bool = False


class Watcher:
    """Applies the rules to every run of a repo, one ``poll()`` at a time."""

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
    ) -> None:
        self.repo = repo
        self.grace = grace
        #: Seconds between this watcher's looks: how late it may see a change on another host.
        self.interval = interval
        self.emit = emit
        self.notifiers = notifiers
        self.wall, self.mono, self.alive = wall, mono, alive
        self.host = host if host is not None else _process.host()
        self.boot_id = boot_id if host is not None else _process.boot_id()
        self.seen_by = f"{role} {os.getpid()}@{self.host}"
        self._scanner = Scanner(repo)
        self._seen: dict[str, _Seen] = {}
        self._claim_error: str | None = None

    def poll(self) -> list[Event]:
        """Look at every run once; claim and emit the events that are due. Returns those this
        watcher won (another watcher or kernel may have claimed the rest)."""
        return self.check(self._scanner.scan(), everything=True)

    def check(self, runs: Iterable[RunRecord], everything: bool = False) -> list[Event]:
        """``poll()`` over the given records (a kernel checks its own runs this way).
        ``everything``: these are all the runs, so forget any other."""
        now_wall, now_mono = self.wall(), self.mono()
        won: list[Event] = []
        alive: _Alive = {}
        present: dict[str, _Seen] = {} if everything else self._seen
        for run in runs:
            seen = self._seen.get(run.id)
            if seen is None:
                seen = _Seen(run.progress, now_mono)
            elif run.progress != seen.progress:
                seen.progress, seen.first_seen, seen.claimed = run.progress, now_mono, None
            present[run.id] = seen
            if seen.done:
                continue
            obs = self._observe(run, seen, now_wall, now_mono, alive)
            if obs.state is State.CRASHED:
                obs = self._recheck(obs, seen, now_wall, now_mono, alive)
            won.extend(self._claim_due(obs, seen, now_wall))
        self._seen = present
        return won

    def observe(self, runs: Iterable[RunRecord] | None = None) -> list[Observation]:
        """The state of ``runs`` (default: every run of the repo) now, newest first, without
        claiming anything (for ``status`` and the server's API)."""
        now_wall, now_mono = self.wall(), self.mono()
        alive: _Alive = {}
        found = []
        for run in self._scanner.scan() if runs is None else runs:
            # A one-off look has no history for runs of other hosts: use their wall clock.
            seen = _Seen(run.progress, now_mono - max(0.0, now_wall - run.last_progress_at))
            found.append(self._observe(run, seen, now_wall, now_mono, alive))
        return sorted(found, key=lambda o: o.run.started_at, reverse=True)

    def _observe(
        self,
        run: RunRecord,
        seen: _Seen,
        now_wall: float,
        now_mono: float,
        alive: _Alive,
    ) -> Observation:
        lag = rules.write_lag(run.write_lag)
        if run.host != self.host:
            # Timed from when this watcher saw the progress count change, which it sees only
            # at its next look after the file was written.
            since = now_mono - seen.first_seen
            lag += self.interval
            is_alive: bool | None = None
        else:
            if run.boot_id is not None and run.boot_id == self.boot_id:
                since = now_mono - run.last_progress_mono
            else:
                since = now_wall - run.last_progress_at
            is_alive = True
            if not run.ended:
                is_alive = self._alive(run, alive)
        grace = rules.grace_for(run.eta, run.grace, self.grace) if run.eta is not None else 0.0
        current = rules.state(
            run.status, alive=is_alive, since_progress=since, eta=run.eta, grace=grace, lag=lag
        )
        return Observation(run, current, max(since, 0.0))

    def _alive(self, run: RunRecord, seen: _Alive) -> bool:
        """Whether a run's process (same host) still runs, asked once per poll per process."""
        if run.boot_id is not None and self.boot_id is not None and run.boot_id != self.boot_id:
            return False  # the host rebooted since: every process of that boot is gone
        # Start ticks are comparable within one boot only.
        ticks = run.process_start_ticks if run.boot_id == self.boot_id else None
        key = (run.pid, run.process_start, ticks)
        if key not in seen:
            seen[key] = self.alive(*key)
        return seen[key]

    def _recheck(
        self,
        obs: Observation,
        seen: _Seen,
        now_wall: float,
        now_mono: float,
        alive: _Alive,
    ) -> Observation:
        # The process may have written its end just before exiting, after our scan:
        # read the file once more before calling it a crash.
        try:
            fresh = self.repo.read_run(obs.run.id)
        except (OSError, CorruptRecordError):
            return obs
        return self._observe(fresh, seen, now_wall, now_mono, alive) if fresh.ended else obs

    def _claim_due(self, obs: Observation, seen: _Seen, now_wall: float) -> list[Event]:
        run = obs.run
        if seen.claimed is None:
            seen.claimed = self.repo.claims(run.id)
        won: list[Event] = []
        for due in rules.due_events(obs.state, run.progress, seen.claimed):
            grace = None
            if due.event == "stalled" and run.eta is not None:
                grace = rules.grace_for(run.eta, run.grace, self.grace)
            event = Event(due.event, due.key, run, now_wall, obs.since_progress, grace, self.seen_by)
            targets = [n for n in self.notifiers() if n.wants(due.event)]
            try:
                claimed = claim_event(self.repo, event, targets)
            except OSError as e:
                self._claim_failed(event, e)
                return won
            if self._claim_error is not None:
                self._claim_error = None
                log.warning("events are recorded in %s again", self.repo.path)
            seen.claimed.add(due.key)
            if claimed:
                won.append(event)
                self.emit(event)
        if obs.state in rules.TERMINAL and rules.END_KEY in seen.claimed:
            seen.done = True
        return won

    def _claim_failed(self, event: Event, error: OSError) -> None:
        # Said once per cause, not at every poll: the event is claimed and sent once the repo
        # can be written again.
        cause = error.strerror or str(error)
        if cause != self._claim_error:
            self._claim_error = cause
            log.warning(
                "cannot record event %s of run %s in %s (%s); it is reported once the repo can be written",
                event.kind,
                event.run.id[:8],
                self.repo.path,
                cause,
            )


def watcher_info(repo: Repo) -> dict[str, Any] | None:
    """The running watcher of ``repo`` (pid, host, started_at, ...), or None if none runs."""
    try:
        info = _read_json(repo.watcher_file)
    except (OSError, ValueError):
        return None
    pid, start, started = info.get("pid"), info.get("process_start"), info.get("started_at")
    if type(pid) is not int or pid <= 0 or info.get("host") != _process.host():
        return None
    if not isinstance(started, int | float) or isinstance(started, bool) or not math.isfinite(started):
        return None  # not a file this watcher wrote whole
    ticks = info.get("process_start_ticks") if info.get("boot_id") == _process.boot_id() else None
    if not _process.is_alive(
        pid, start if isinstance(start, float) else None, ticks if type(ticks) is int else None
    ):
        return None
    return info


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
        postman = Postman(repo)
        postman.start(interval)
        watcher = Watcher(repo, grace=grace, notifiers=postman.configs, interval=interval)
        log.info("nbmonitor-watcher (pid %d) watching %s every %g s", os.getpid(), repo.path, interval)
        next_poll = time.monotonic()
        present = True
        try:
            while not stop.is_set():
                try:
                    if repo.runs_dir.is_dir() != present:
                        present = not present
                        _say_repo(repo, present, info)
                    postman.refresh()
                    if watcher.poll():
                        postman.wake()
                except Exception:  # a bad poll must not end the watcher; the next one retries
                    log.exception("poll failed")
                next_poll = max(next_poll + interval, time.monotonic())
                stop.wait(next_poll - time.monotonic())
        finally:
            postman.stop()
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


def _read_json(path: os.PathLike[str]) -> dict[str, Any]:
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data
