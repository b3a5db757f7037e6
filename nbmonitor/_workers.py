"""The leader's side of the worker board: workers' progress counted for the runs they work for.

Every tick of the writer thread, ``Collector`` reads the board's slots
(nbmonitor._board) and credits what each worker did since the last tick to
the run it reports for: the run it inherited or was started under, while
that run is open, else the newest open block (a pool made in one cell and
used in the next works for the next). Once a second it looks whether the
running workers still are; one found gone is settled by its slot: it ended
by itself, it failed, its own job stopped it, or it crashed (then its exit
signal or status, when its process is this one's child and not reaped yet).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from . import _board, _process
from .record import WorkerField

__all__ = ["Collector", "Crew"]

R = TypeVar("R")  # a run

#: Ended workers kept in a run's file (their counts stay in its progress either way).
_KEPT_ENDED = 8
_KEPT_FINALS = 1024
_CHECK_EVERY = 1.0  # seconds between looks at the process table


@dataclass(slots=True)
class _Member:
    pid: int
    name: str
    rank: int | None
    progress: int = 0  # credited to this run
    step: int | None = None
    last_progress_mono: float = 0.0
    state: str = "running"
    exit: str | None = None

    def field(self) -> WorkerField:
        return WorkerField(
            self.pid,
            self.name,
            self.progress,
            self.step,
            self.rank,
            self.last_progress_mono,
            self.state,
            self.exit,
        )


@dataclass(slots=True)
class Crew:
    """The workers of one run: what they did for it, and how those that are gone went."""

    members: dict[tuple[int, int, int], _Member] = field(default_factory=dict)
    progress: int = 0  # every worker's progress for this run, the gone ones' too
    ended: list[_Member] = field(default_factory=list)
    ended_steps: int = 0  # steps of the workers no longer in ``members`` (sharded runs add them)
    finals: dict[tuple[int, int, int], int] = field(default_factory=dict)  # the gone ones' last steps
    has_ranks: bool = False
    version: int = 0  # changes whenever what the file shows of the workers does
    eta: float | None = None  # the latest promise a worker made

    def __bool__(self) -> bool:
        return bool(self.members) or bool(self.ended)

    def credit(self, view: _board.SlotView, delta: int, now_mono: float) -> None:
        member = self.members.get(view.key)
        if member is None:
            member = self.members[view.key] = _Member(view.pid, view.name, view.rank)
            self.has_ranks = self.has_ranks or view.rank is not None
            self.version += 1
        if delta > 0:
            member.progress += delta
            member.last_progress_mono = now_mono
            self.progress += delta
            self.version += 1
        if view.step != member.step:
            member.step = view.step
            self.version += 1

    def settle(self, key: tuple[int, int, int], state: str, exit: str | None) -> None:
        """A worker is gone: ``state`` says how (ended, failed or crashed)."""
        member = self.members.pop(key, None)
        if member is None:
            return
        member.state, member.exit = state, exit
        final = member.step if member.step is not None else member.progress
        self.ended_steps += final
        self.finals[key] = final
        if len(self.finals) > _KEPT_FINALS:
            del self.finals[next(iter(self.finals))]
        self.ended = [*self.ended, member][-_KEPT_ENDED:] if state == "ended" else [*self.ended, member]
        self.version += 1

    def ranked(self) -> bool:
        """The workers have ranks (torch.distributed's, or a launcher's RANK): they walk the same
        steps."""
        return self.has_ranks

    def step(self, lockstep: bool) -> int | None:
        """The run's step from its workers: the slowest running one's (lockstep), or theirs added
        up (sharded), the gone ones' too; None before any worker reported."""
        members = list(self.members.values())  # one C call: the collector may add one meanwhile
        steps = [m.step if m.step is not None else m.progress for m in members]
        if lockstep:  # once none runs, where the last of them stopped
            steps = steps or list(self.finals.values())
            return min(steps) if steps else None
        return self.ended_steps + sum(steps)

    def fields(self) -> tuple[WorkerField, ...]:
        """Running workers by rank and pid, then those that are gone, as the run file keeps them."""
        running = sorted(self.members.values(), key=lambda m: (m.rank is None, m.rank or 0, m.pid))
        return tuple(m.field() for m in (*running, *self.ended))


class Collector(Generic[R]):
    """Reads a board every tick; ``runs`` gives the open runs by id, ``newest`` the newest open
    block, ``crew`` a run's Crew, ``promise`` passes a worker's new promise to its run."""

    def __init__(
        self,
        board: _board.Board,
        runs: Callable[[], dict[str, R]],
        newest: Callable[[], R | None],
        crew: Callable[[R], Crew],
        promise: Callable[[R, float], None],
    ) -> None:
        self.board = board
        self._runs, self._newest, self._crew, self._promise = runs, newest, crew, promise
        self._read: dict[tuple[int, int, int], tuple[int, float | None]] = {}  # progress, eta
        self._credited: dict[tuple[int, int, int], R] = {}  # the run a worker last counted for
        self._checked = -1e18
        self._lock = threading.Lock()  # the writer thread and a block's end both collect

    def __call__(self, now_mono: float, look: bool = False) -> None:
        """Credit what the workers did since the last call; once a second (or when ``look``),
        settle the ones that are gone. The writer thread calls it every tick, a block as it ends."""
        with self._lock:
            self._collect(now_mono, look)

    def _collect(self, now_mono: float, look: bool) -> None:
        views = list(self.board.slots())
        if not views:
            return
        open_runs = self._runs()
        for view in views:
            last_progress, last_eta = self._read.get(view.key, (0, None))
            target = open_runs.get(view.run_id) if view.run_id else None
            target = target or self._newest()
            if target is None:
                self._read[view.key] = (view.progress, view.eta)
                continue
            self._crew(target).credit(view, view.progress - last_progress, now_mono)
            self._credited[view.key] = target
            if view.eta is not None and view.eta != last_eta:
                self._promise(target, view.eta)
            self._read[view.key] = (view.progress, view.eta)
        if look or now_mono - self._checked >= _CHECK_EVERY:
            self._checked = now_mono
            self._look(views)

    def _look(self, views: Iterable[_board.SlotView]) -> None:
        """Settle the workers that are gone, and give their slots back."""
        for view in views:
            if view.ticks and _process.is_alive(view.pid, None, view.ticks):
                continue
            if not view.ticks and _pid_exists(view.pid):
                continue
            state, exit = _how_it_went(view)
            run = self._credited.pop(view.key, None)
            if run is not None:
                self._crew(run).settle(view.key, state, exit)
            self._read.pop(view.key, None)
            self.board.free(view.index, view.pid)


def _how_it_went(view: _board.SlotView) -> tuple[str, str | None]:
    if view.end == _board.ENDED:
        return "ended", None
    if view.end == _board.FAILED:
        return "failed", "an exception"
    if view.end == _board.TERMINATED:
        return "ended", f"stopped by its job ({_process.signal_name(view.signal)})"
    status = _process.exit_status(view.pid, view.ticks or None)
    if status is None:
        return "crashed", "gone without finishing"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return "crashed", f"killed by {_process.signal_name(-code)}"
    return "crashed", f"exit status {code}"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
