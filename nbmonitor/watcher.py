"""The watcher daemon: ``nbmonitor-watcher start`` looks at every run of a repo, claims and reports events.

``Watcher.poll()`` is one pass: an Observer turns the repo's run files into
states (nbmonitor.observe), a Claimer claims the events they make due
(nbmonitor.claims). ``Watcher.update()`` is a pass over what changed only:
the files a change notice named, the runs of processes that ended, the runs
whose deadline passed. Clocks and process checks are injected, so tests drive
both directly; ``serve()`` is the loop around them, with the
one-watcher-per-repo lock, the ``watcher.json`` status file, the change
notices that wake it (nbmonitor._notices) and the sender that delivers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import _format, _process, _pyspy, retention, rules
from ._notices import Notices
from .claims import Claimer, log_event
from .config import NotifierConfig
from .errors import WatcherError
from .events import Event
from .groups import GroupObservation, gather
from .observe import AliveCheck, Observation, Observer, Process, Schedule, watcher_info
from .outbox import Sender
from .record import RunRecord
from .repo import Repo, write_atomic
from .rules import TERMINAL

__all__ = ["Watcher", "serve", "watcher_info"]

log = logging.getLogger("nbmonitor.watcher")

Clock = Callable[[], float]
#: The longest a watcher waits with nothing due: it checks its runs folder is still there.
_CHECK_EVERY = 5.0
#: Seconds between prunes of runs past the repo's retention (the first at start).
_PRUNE_EVERY = 3600.0


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
        self.mono = mono
        self.interval = interval
        self._said: set[tuple[str, str]] = set()  # (group id, problem) already warned of
        #: What a look between full ones must take in besides what it was told of.
        self.schedule = Schedule()
        #: The live processes of this host's active runs, and the runs of each: told when one
        #: ends (``update(ended=...)``) by whoever watches them (``serve``'s pidfds).
        self.processes: dict[Process, set[str]] = {}
        self.new_processes: list[Process] = []  # since the watcher of processes last took them
        #: Processes nobody can be told of the end of (no pidfd): their runs are looked at every
        #: ``interval``.
        self.unwatched: set[Process] = set()

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
        observations = self.observer.look(skip=self.claimer.done)
        alone, groups = gather(observations)
        self._say_problems(groups)
        won = self.claimer.claim(alone, groups)
        self.claimer.keep_only(self.observer.known)
        self._said = {said for said in self._said if said[0] in self.claimer.groups}
        self.schedule.clear()
        self.processes.clear()
        for run in self.observer.records():
            self.schedule.index(run)
        self._plan(observations, whole=True)
        return won

    def update(self, names: Iterable[str] = (), ended: Iterable[Process] = ()) -> list[Event]:
        """Look only at what changed since the last look, at a cost that does not grow with
        the repo: the run files ``names`` (a change notice named them), the runs of processes
        that ``ended``, and runs whose state changes by itself by now (a deadline passed).
        Only right while every change is told: otherwise ``poll()``."""
        now = self.mono()
        schedule = self.schedule
        changed, gone = self.observer.update(names)
        for run in changed:
            schedule.index(run)
        ids: set[str] = set()
        settle: dict[str, float] = {}  # by group: its members' longest write lag
        for run_id in [r.id for r in changed] + [i for key in ended for i in self.processes.pop(key, ())]:
            group = schedule.group_of(run_id)
            if group is None:
                ids.add(run_id)
                continue
            # Ranks move together (one's end ends the others), each file written within its
            # writer's lag: judge the group once the others' files have had that long to follow.
            if group not in settle:
                kin = (self.observer.record(m) for m in schedule.members[group])
                settle[group] = max((rules.write_lag(r.write_lag) for r in kin if r is not None), default=0.0)
            schedule.wake(run_id, now + settle[group], earlier=True)
        ids |= schedule.due(now)
        for run_id in gone:
            self._forget(run_id)
        # A member's change may change its group: look at the whole group, each member's file
        # checked again (its change may be on its way: ranks move together).
        mates = set().union(*(schedule.members[g] for g in schedule.groups(ids))) - ids
        if mates:
            _, gone = self.observer.update(f"{run_id}.json" for run_id in mates)
            for run_id in gone:
                self._forget(run_id)
            ids |= mates - set(gone)
        records = [r for r in map(self.observer.record, ids) if r is not None]
        if not records:
            return []
        observations = self.observer.look(records, skip=self.claimer.done)
        alone, groups = gather(observations)
        self._say_problems(groups)
        won = self.claimer.claim(alone, groups)
        self._plan(observations)
        return won

    def next_wake(self) -> float | None:
        """When (on the monotonic clock) a run's state changes by itself next, if one does."""
        return self.schedule.next()

    def poll_again(self, run_ids: Iterable[str], at: float) -> None:
        """Look at these runs again at ``at`` (their process cannot be watched: poll it)."""
        for run_id in run_ids:
            self.schedule.wake(run_id, at, earlier=True)

    def _forget(self, run_id: str) -> None:
        """A run gone from the repo."""
        group = self.schedule.forget(run_id)
        self.claimer.forget(run_id, group if group not in self.schedule.members else None)

    def _plan(self, observations: Iterable[Observation], whole: bool = False) -> None:
        """Note when each observed run must be looked at again, and which processes to watch;
        ``whole``: after a full look, with an empty schedule."""
        retry = self.mono() + self.interval  # for an event that could not be recorded
        schedule, processes = self.schedule, self.processes
        wakes: list[tuple[str, float]] = []
        unrecorded, done = self.claimer.unrecorded, self.claimer.done
        for obs in observations:
            run = obs.run
            wake = obs.wake
            if unrecorded and {run.id, schedule.group_of(run.id)} & unrecorded:
                wake = retry
            live = obs.state not in TERMINAL and run.id not in done
            keys = [self.observer.process(run)] if live else []
            if live and run.supervisor is not None:
                keys.append(self.observer.process(run, supervisor=True))
            for key in keys:
                if key is None:
                    continue
                if key in self.unwatched:  # no end told: look every interval
                    wake = retry if wake is None else min(wake, retry)
                runs = processes.get(key)
                if runs is None:
                    runs = processes[key] = set()
                    self.new_processes.append(key)
                runs.add(run.id)
            if whole:
                if wake is not None:
                    wakes.append((run.id, wake))
            else:
                schedule.wake(run.id, wake)
        if whole:
            schedule.wake_all(wakes)

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
                    log.warning("group %s (%s): %s", group.id[:8], _format.one_line(group.name), problem)

    def observe(self, runs: Iterable[RunRecord] | None = None) -> list[Observation]:
        """The state of ``runs`` (default: every run of the repo) now, newest first, claiming nothing."""
        return self.observer.glance(runs)


def serve(
    repo: Repo,
    *,
    interval: float = 1.0,
    grace: float | None = None,
    stop: threading.Event | None = None,
    notices_on: bool = True,
) -> None:
    """Watch ``repo`` until ``stop`` is set. Only one watcher per repo: a second raises WatcherError.
    ``notices_on=False`` polls every ``interval`` as where changes are not told."""
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
    notices: Notices[Process] = Notices(repo.runs_dir, files=notices_on)
    info["notices"] = notices.why_not  # None: told of changes; else why it polls ('status' says)
    try:
        write_atomic(repo.watcher_file, info)
        sender = Sender(repo)
        sender.start(interval)
        # A stalled run whose process cannot say where it is stuck: read from outside (py-spy).
        watcher = Watcher(
            repo, grace=grace, notifiers=sender.configs, interval=interval, outside=_pyspy.outside_stack
        )
        how = "told of changes" if notices.files else f"polling every {interval:g} s: {notices.why_not}"
        log.info("nbmonitor-watcher (pid %d) watching %s, %s", os.getpid(), repo.path, how)

        def wake_on_stop() -> None:
            stop.wait()
            notices.wake()

        waker = threading.Thread(target=wake_on_stop, daemon=True)
        waker.start()
        try:
            _loop(watcher, sender, notices, stop, info, interval)
        finally:
            stop.set()
            waker.join()
            sender.stop()
        log.info("nbmonitor-watcher (pid %d) stopped", os.getpid())
    finally:
        notices.close()
        with contextlib.suppress(OSError):
            repo.watcher_file.unlink()
        lock.release()


def _loop(
    watcher: Watcher,
    sender: Sender,
    notices: Notices[Process],
    stop: threading.Event,
    info: dict[str, Any],
    interval: float,
) -> None:
    """Look at the whole repo once, then at what changes as it changes: files named by change
    notices, processes as they end, deadlines as they pass. Every ``interval`` the whole repo
    again, where changes are not told (or the runs folder is gone)."""
    repo = watcher.repo
    present = True
    full = watching = True
    next_poll = time.monotonic()
    pruner = _Pruner(repo)
    while not stop.is_set():
        try:
            taken = notices.take()
            if repo.runs_dir.is_dir() != present:
                present = not present
                _say_repo(repo, present, info)
            sender.refresh()
            now = time.monotonic()
            watching = notices.watching
            if full or taken.everything or (not watching and now >= next_poll):
                won = watcher.poll()
                next_poll = now + interval
            else:
                won = watcher.update(taken.names, taken.ended)
            full = False
            if won:
                sender.wake()
            for key in watcher.new_processes:
                if not notices.watch_process(key, key[0]):
                    watcher.unwatched.add(key)  # its runs are looked at every interval
                    watcher.poll_again(watcher.processes.get(key, ()), now + interval)
            watcher.new_processes.clear()
            pruner.maybe(now, watcher.observer.records())
        except Exception:  # a bad look must not end the watcher; a full one retries
            log.exception("poll failed")
            full, watching, next_poll = True, False, time.monotonic() + interval
        wake = watcher.next_wake()
        until = math.inf if wake is None else wake
        if not watching:
            until = min(until, next_poll)
        # Now and then even when nothing is due: the runs folder may be deleted and made again.
        notices.wait(min(until - time.monotonic(), _CHECK_EVERY))


class _Pruner:
    """Removes runs past the repo's retention (nbmonitor.retention) once an hour, beside the
    watcher's loop, so that a large prune never delays an alarm."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.next = 0.0  # monotonic time of the next prune
        self._thread: threading.Thread | None = None

    def maybe(self, now: float, records: Iterable[RunRecord]) -> None:
        if now < self.next or (self._thread is not None and self._thread.is_alive()):
            return
        self.next = now + _PRUNE_EVERY
        older_than = retention.period(self.repo)
        if older_than is None:
            return
        self._thread = threading.Thread(
            target=self._prune, args=(older_than, list(records)), name="nbmonitor-prune", daemon=True
        )
        self._thread.start()

    def _prune(self, older_than: float, records: list[RunRecord]) -> None:
        try:
            done = retention.prune(self.repo, older_than, records=records)
        except Exception:  # the next hour tries again
            log.exception("pruning %s failed", self.repo.path)
            return
        if done.runs or done.finished:
            log.info(
                "pruned %d run(s) that ended over %s ago (%s)",
                len(done.runs) + done.finished,
                retention.describe(older_than),
                _format.human_bytes(done.bytes),
            )


def _say_repo(repo: Repo, present: bool, info: dict[str, Any]) -> None:
    """The repo was deleted, or is back: say so once, and be findable in it again."""
    if not present:
        log.warning("the repo %s is gone (deleted?); watching for runs to create it again", repo.path)
        return
    log.warning("the repo %s is back; watching it again", repo.path)
    with contextlib.suppress(OSError):
        write_atomic(repo.watcher_file, info)  # so 'status' and 'stop' find this watcher
