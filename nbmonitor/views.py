"""What a watched cell's display shows: its run, state, rate and usage, as a View for nbmonitor.widget.

``CellRun`` is one ``%%watch`` cell: its run, its display, its usage history
and its recent progress (for the rate). ``view()`` turns those and the run's
record into the View that nbmonitor.widget renders. Arithmetic, no I/O.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from . import _format, rules, templates
from .record import RunRecord, WorkerField
from .run import Run
from .usage import History
from .widget import MemberView, RunDisplay, View

__all__ = ["RATE_WINDOW", "CellRun", "Incidents", "members", "view"]

RATE_WINDOW = 10.0  # seconds of progress the rate is measured over


class Incidents:
    """The stalls of a run, as its display tells them once they are over: "stalled 12 s at
    step 1, recovered". A spell of lateness that never became a stall is no incident."""

    def __init__(self) -> None:
        self.told: list[str] = []
        self._open: tuple[float, int] | None = None  # (wall time of the last progress, its step)

    def note(self, state: str, step: int, since_progress: float, now: float) -> None:
        """The run is in ``state`` at wall time ``now``, ``since_progress`` seconds after its last
        progress (at ``step``)."""
        if state == "stalled":
            if self._open is None:
                self._open = (now - since_progress, step)
        elif state != "late" and self._open is not None:
            since, at = self._open
            self._open = None
            how = "recovered" if state == "running" else f"then {state}"
            self.told.append(f"stalled {_format.duration(now - since)} at step {at}, {how}")

    def now(self, now: float) -> tuple[str, ...]:
        """The incidents over, and the stall going on at ``now`` if one is."""
        if self._open is None:
            return tuple(self.told)
        since, at = self._open
        return (*self.told, f"stalled at step {at} for {_format.duration(now - since)}")


@dataclass
class CellRun:
    """A run shown in a cell: its display, usage history and recent progress for the rate."""

    run: Run
    display: RunDisplay | None
    usage: History | None
    state: str = "running"
    incidents: Incidents = field(default_factory=lambda: Incidents())
    samples: int = 0  # usage samples taken in so far
    progress: deque[tuple[float, int]] = field(default_factory=deque)
    since_progress: float = 0.0


def view(cell: CellRun, record: RunRecord, now_mono: float, *, watcher: str | None, note: str | None) -> View:
    """What the cell's display shows now (``watcher``: "pid 123" when a standalone watcher runs;
    ``note``: the latest warning)."""
    progress = cell.progress
    progress.append((now_mono, record.step))
    while progress and now_mono - progress[0][0] > RATE_WINDOW:
        progress.popleft()
    rate = None
    if len(progress) > 1 and progress[-1][0] > progress[0][0]:
        rate = max(0.0, (progress[-1][1] - progress[0][1]) / (progress[-1][0] - progress[0][0]))
    end = record.ended_at if record.ended_at is not None else time.time()
    cell.incidents.note(cell.state, record.step, cell.since_progress, end)
    grace = rules.grace_for(record.eta, record.grace) if record.eta is not None else None
    return View(
        name=record.name,
        state=cell.state,
        step=record.step,
        total=record.total,
        elapsed=end - record.started_at,
        since_progress=cell.since_progress,
        eta=record.eta,
        grace=grace,
        rate=rate,
        error=record.error.summary() if record.error else None,
        usage=cell.usage,
        watcher=watcher,
        note=note,
        ended=record.status != "running",
        members=members(record),
        peaks=templates.peaks_text(record),
        stuck=record.stuck_in if cell.state in ("late", "stalled") else None,
        attempt=templates.attempt_text(record, end),
        incidents=cell.incidents.now(end),
        run_id=record.id,
    )


def members(record: RunRecord) -> tuple[MemberView, ...]:
    """The run's workers as small bars. Ranked workers walk the same steps, so one behind the
    others holds them up: it is the straggler (workers sharing a pool of work have none)."""
    running = [w for w in record.workers if w.state == "running"]
    steps = [_step(w) for w in running]
    ranked = bool(running) and all(w.rank is not None for w in running)
    slowest = min(steps) if ranked and len(steps) > 1 and min(steps) < max(steps) else None
    shown = []
    for worker in record.workers:
        label = (
            f"{worker.name}, pid {worker.pid}"
            if worker.rank is None
            else f"rank {worker.rank}, pid {worker.pid}"
        )
        straggler = worker.state == "running" and _step(worker) == slowest
        shown.append(MemberView(label, _step(worker), worker.state, straggler, worker.exit))
    return tuple(shown)


def _step(worker: WorkerField) -> int:
    return worker.step if worker.step is not None else worker.progress
