"""Observation: run records, this host's clocks and its process table turned into each run's state now.

Everything that only reads a repo uses this and nothing more: ``status``,
the server's API (and through it the lab panel), the kernel's displays, and
the watcher, which then claims what the states make due (nbmonitor.claims).

Clocks: a run from this host and boot is timed with the shared monotonic
clock (immune to wall-clock jumps, and a restart pushes no deadline back).
A run from another host is timed from when this observer first saw its
progress counter change, since that host's clock cannot be trusted; a
one-off ``glance()`` has no such history and uses that host's wall clock.
Its pid cannot be looked up either: it is alive while its writer refreshes
its file (every ``heartbeat`` seconds), and *lost* after three missed.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import _process, rules
from .errors import CorruptRecordError
from .membership import group_of
from .record import RunRecord
from .repo import Repo, Scanner
from .rules import State

__all__ = ["AliveCheck", "Observation", "Observer", "Process", "Schedule", "watcher_info"]

Clock = Callable[[], float]
#: Whether (pid, start in epoch seconds, start in boot ticks) is a live process of this host.
AliveCheck = Callable[[int, float | None, int | None], bool]
#: A process of this host: pid, start in epoch seconds, start in boot ticks.
Process = tuple[int, float | None, int | None]
_Alive = dict[Process, bool]  # the answers of one look
#: A deadline is passed a moment after it (the rules compare with <=): wake that much later.
_AFTER = 0.001


@dataclass(frozen=True, slots=True)
class Observation:
    """A run as seen at one moment: its state, and how long it has made no progress."""

    run: RunRecord
    state: State
    since_progress: float
    grace: float | None = None  # the grace that applied (runs with an ETA)
    #: Its job's ``nbmonitor-watcher run`` is alive: it reports how the attempt ended.
    supervised: bool = False
    #: When (the observer's monotonic clock) its state changes if nothing else happens (it
    #: becomes late, stalled, lost); None when only news can change it.
    wake: float | None = None


@dataclass(slots=True)
class _Seen:
    progress: int
    first_seen: float  # local monotonic time this progress count was first seen
    updated_at: float = 0.0  # the file's own stamp, compared only for change (another host's clock)
    changed: float = 0.0  # local monotonic time the file last changed: a sign of life


class Observer:
    """Turns run records into observations, remembering when each run's progress last changed."""

    def __init__(
        self,
        repo: Repo,
        *,
        grace: float | None = None,
        wall: Clock = time.time,
        mono: Clock = time.monotonic,
        alive: AliveCheck = _process.is_alive,
        host: str | None = None,
        boot_id: str | None = None,
        interval: float = 1.0,
    ) -> None:
        self.repo = repo
        #: Grace for runs that set none (the watcher's --grace); None: the rules' default.
        self.grace = grace
        #: Seconds between looks: how late a change on another host may be seen.
        self.interval = interval
        self.wall, self.mono, self.alive = wall, mono, alive
        self.host = host if host is not None else _process.host()
        self.boot_id = boot_id if host is not None else _process.boot_id()
        self._scanner = Scanner(repo)
        self._seen: dict[str, _Seen] = {}

    @property
    def known(self) -> Collection[str]:
        """The ids of the runs this observer remembers: after a full look, those in the repo."""
        return self._seen.keys()

    def look(
        self, runs: Iterable[RunRecord] | None = None, *, skip: Collection[str] = ()
    ) -> list[Observation]:
        """The state of ``runs`` now (default: every run of the repo, and then runs no longer
        there are forgotten). Runs whose id is in ``skip`` are remembered but not looked at
        (their end is known)."""
        now_wall, now_mono = self.wall(), self.mono()
        everything = runs is None
        present: dict[str, _Seen] = {} if everything else self._seen
        alive: _Alive = {}
        found: list[Observation] = []
        for run in self._scanner.scan() if runs is None else runs:
            seen = self._seen.get(run.id)
            if seen is None:
                seen = _Seen(run.progress, now_mono, run.updated_at, now_mono)
            else:
                if run.progress != seen.progress:
                    seen.progress, seen.first_seen = run.progress, now_mono
                if run.updated_at != seen.updated_at:
                    seen.updated_at, seen.changed = run.updated_at, now_mono
            present[run.id] = seen
            if run.id in skip:
                continue
            obs = self._state(run, seen, now_wall, now_mono, alive)
            if obs.state is State.CRASHED:
                obs = self._recheck(obs, seen, now_wall, now_mono, alive)
            found.append(obs)
        self._seen = present
        return found

    def update(self, names: Iterable[str]) -> tuple[list[RunRecord], list[str]]:
        """Read again only the named run files (a change notice named them): the runs among
        them, and the ids of runs now gone, which are forgotten."""
        changed, gone = self._scanner.update(names)
        for run_id in gone:
            self._seen.pop(run_id, None)
        return changed, gone

    def record(self, run_id: str) -> RunRecord | None:
        """A run as last read, or None."""
        return self._scanner.get(run_id)

    def records(self) -> Iterator[RunRecord]:
        """Every run as last read."""
        return self._scanner.records()

    def process(self, run: RunRecord, supervisor: bool = False) -> Process | None:
        """The process of a run of this host and boot (or its supervisor's) as a key for
        ``alive``; None for a run of another host or boot, whose process cannot be watched."""
        if not self.here(run) or (run.boot_id is not None and run.boot_id != self.boot_id):
            return None
        if supervisor and run.supervisor is None:
            return None
        return self._key(run, supervisor)

    def here(self, run: RunRecord) -> bool:
        """Whether the run's process is on this observer's host: not ``elsewhere``."""
        return not _process.elsewhere(run.host, run.via, self.host)

    def _key(self, run: RunRecord, supervisor: bool) -> Process:
        """Run ``run``'s process (or its supervisor's) as ``alive`` asks about it: start ticks
        count within one boot only."""
        if supervisor:
            assert run.supervisor is not None
            pid, start, ticks = run.supervisor.pid, None, run.supervisor.start_ticks
        else:
            pid, start, ticks = run.pid, run.process_start, run.process_start_ticks
        return (pid, start, ticks if run.boot_id == self.boot_id else None)

    def glance(self, runs: Iterable[RunRecord] | None = None) -> list[Observation]:
        """A one-off look, newest first, remembering nothing (``status``, the server's API):
        with no history, a run of another host is timed by its own wall clock, and its heartbeat
        by its file's modification time."""
        now_wall, now_mono = self.wall(), self.mono()
        alive: _Alive = {}
        found = []
        for run in self._scanner.scan() if runs is None else runs:
            since = max(0.0, now_wall - run.last_progress_at)
            # A sign of life: when the file was last written, by this host's (or the file
            # server's) clock, not the run's own.
            modified = self._scanner.modified(run.id)
            changed = now_mono - max(0.0, now_wall - modified) if modified is not None else now_mono
            seen = _Seen(run.progress, now_mono - since, run.updated_at, changed)
            found.append(self._state(run, seen, now_wall, now_mono, alive))
        return sorted(found, key=lambda o: o.run.started_at, reverse=True)

    def _state(
        self, run: RunRecord, seen: _Seen, now_wall: float, now_mono: float, alive: _Alive
    ) -> Observation:
        lag = rules.write_lag(run.write_lag)
        silent = False
        wake: float | None = None
        if not self.here(run):
            # Timed from when this observer saw the progress count change, which it sees only
            # at its next look after the file was written; alive while its writer keeps
            # refreshing the file (its heartbeat), as seen on this observer's clock.
            since = now_mono - seen.first_seen
            lag += self.interval
            is_alive: bool | None = None
            if run.heartbeat is not None and not run.ended:
                allowed = rules.HEARTBEATS_MISSED * run.heartbeat + self.interval
                silent = now_mono - seen.changed > allowed
                wake = None if silent else seen.changed + allowed + _AFTER
        else:
            if run.boot_id is not None and run.boot_id == self.boot_id:
                since = now_mono - run.last_progress_mono
            else:
                since = now_wall - run.last_progress_at
            is_alive = True if run.ended else self._alive(run, alive)
        grace = rules.grace_for(run.eta, run.grace, self.grace) if run.eta is not None else None
        current = rules.state(
            run.status,
            alive=is_alive,
            since_progress=since,
            eta=run.eta,
            grace=grace or 0.0,
            lag=lag,
            silent=silent,
        )
        supervised = run.supervisor is not None and self.here(run) and self._supervised(run, alive)
        if run.eta is not None and current in (State.RUNNING, State.LATE):
            deadline = run.eta + lag + ((grace or 0.0) if current is State.LATE else 0.0)
            due = now_mono + deadline - since + _AFTER
            wake = due if wake is None else min(wake, due)
        return Observation(run, current, max(since, 0.0), grace, supervised, wake)

    def _supervised(self, run: RunRecord, seen: _Alive) -> bool:
        """Whether the run's ``nbmonitor-watcher run`` (same host) still runs."""
        return self._alive(run, seen, supervisor=True)

    def _alive(self, run: RunRecord, seen: _Alive, supervisor: bool = False) -> bool:
        """Whether a run's process (or its supervisor's) still runs on this host, asked once
        per look per process."""
        if run.boot_id is not None and self.boot_id is not None and run.boot_id != self.boot_id:
            return False  # the host rebooted since: every process of that boot is gone
        key = self._key(run, supervisor)
        if key not in seen:
            seen[key] = self.alive(*key)
        return seen[key]

    def _recheck(
        self, obs: Observation, seen: _Seen, now_wall: float, now_mono: float, alive: _Alive
    ) -> Observation:
        # The process may have written its end just before exiting, after our scan:
        # read the file once more before calling it a crash.
        try:
            fresh = self.repo.read_run(obs.run.id)
        except (OSError, CorruptRecordError):
            return obs
        return self._state(fresh, seen, now_wall, now_mono, alive) if fresh.ended else obs


class Schedule:
    """What a look driven by change notices must take in besides the runs it was told of: the
    runs whose state changes by itself by now (each run's wake, as a heap beside each run's
    latest, so older heap entries are stale), and every member of a group one member of which
    is looked at (a member's change is its group's)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}
        self._group_of: dict[str, str] = {}
        #: The run ids of each group, by group id.
        self.members: dict[str, set[str]] = {}

    def clear(self) -> None:
        self._heap.clear()
        self._at.clear()
        self._group_of.clear()
        self.members.clear()

    def wake(self, run_id: str, at: float | None, *, earlier: bool = False) -> None:
        """Look at the run at ``at`` (None: only news changes it); ``earlier``: only if that is
        sooner than the wake it has."""
        if at is None:
            self._at.pop(run_id, None)
        elif not earlier or self._at.get(run_id, math.inf) > at:
            self._at[run_id] = at
            heapq.heappush(self._heap, (at, run_id))

    def wake_all(self, wakes: Iterable[tuple[str, float]]) -> None:
        """``wake()`` for many runs at once, after ``clear()`` (a full look): one heapify."""
        for run_id, at in wakes:
            self._at[run_id] = at
            self._heap.append((at, run_id))
        heapq.heapify(self._heap)

    def due(self, now: float) -> set[str]:
        """The runs whose wake is ``now`` or earlier, taken off the schedule."""
        found = set()
        while self._heap and self._heap[0][0] <= now:
            at, run_id = heapq.heappop(self._heap)
            if self._at.get(run_id) == at:
                del self._at[run_id]
                found.add(run_id)
        return found

    def next(self) -> float | None:
        """The earliest wake, if any."""
        while self._heap and self._at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: that run was looked at since
        return self._heap[0][0] if self._heap else None

    def index(self, run: RunRecord) -> None:
        """Note the group ``run`` is a member of, if any."""
        group = group_of(run) if run.id not in self._group_of else None
        if group is not None:
            self._group_of[run.id] = group
            self.members.setdefault(group, set()).add(run.id)

    def group_of(self, run_id: str) -> str | None:
        return self._group_of.get(run_id)

    def forget(self, run_id: str) -> str | None:
        """A run gone from the repo; its group's id, if it was a member (no longer in
        ``members`` when it was the last)."""
        self._at.pop(run_id, None)
        group = self._group_of.pop(run_id, None)
        if group is not None:
            self.members[group].discard(run_id)
            if not self.members[group]:
                del self.members[group]
        return group

    def grouped(self, run_ids: Iterable[str]) -> set[str]:
        """Those of these runs that are members of a group."""
        return {run_id for run_id in run_ids if run_id in self._group_of}

    def groups(self, run_ids: Iterable[str]) -> set[str]:
        """The groups these runs are members of."""
        return {g for g in map(self._group_of.get, run_ids) if g is not None}


def watcher_info(repo: Repo) -> dict[str, Any] | None:
    """The running watcher of ``repo`` (pid, host, started_at, ...), or None if none runs."""
    try:
        with open(repo.watcher_file, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    pid, start, started = info.get("pid"), info.get("process_start"), info.get("started_at")
    if type(pid) is not int or pid <= 0 or info.get("host") != _process.host():
        return None
    if not isinstance(started, int | float) or isinstance(started, bool) or not math.isfinite(started):
        return None  # not a file a watcher wrote whole
    ticks = info.get("process_start_ticks") if info.get("boot_id") == _process.boot_id() else None
    if not _process.is_alive(
        pid, start if isinstance(start, float) else None, ticks if type(ticks) is int else None
    ):
        return None
    return info
