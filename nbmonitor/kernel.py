"""What a Jupyter kernel adds to the writer thread: displays, usage, the rules, delivery.

``KernelAgent.on_tick`` runs on the writer thread after each tick. It samples
usage at most once a second, observes this kernel's own runs and claims the
events they make due (in the repo, so a standalone watcher never repeats
them), wakes the kernel's senders, and refreshes each cell's display. It
never prints: warnings are kept for ``%watch status`` and the displays
(nbmonitor._notes). The shutdown hook (nbmonitor._shutdown) and ``%watch auto``
(nbmonitor._auto) are the agent's too.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _writer
from ._auto import Auto
from ._notes import Notes
from ._shutdown import ShutdownHook
from .claims import Claimer
from .errors import CorruptRecordError
from .events import Event
from .observe import Observation, Observer, watcher_info
from .outbox import Sender
from .record import RunRecord
from .remote import RemoteRepo
from .repo import Repo
from .rules import State
from .run import Run
from .usage import History
from .views import CellRun, view
from .widget import RunDisplay, UsagePlot, View

__all__ = ["KernelAgent"]

WATCHER_EVERY = 5.0  # seconds between looks for a standalone watcher


@dataclass(slots=True)
class _Repo:
    """What the kernel keeps per repo its runs write to: who observes, claims and sends."""

    observer: Observer
    claimer: Claimer
    sender: Sender
    watcher: str | None = None  # "pid 123" when a standalone watcher runs there


def _this_process(pid: int, start: float | None, ticks: int | None) -> bool:
    # The kernel observes only its own runs: they are alive while it is.
    return pid == os.getpid()


class KernelAgent:
    """The kernel's share of monitoring; one per kernel, attached by ``%load_ext nbmonitor``."""

    def __init__(self, writer: _writer.Writer | None = None, *, live: bool = True) -> None:
        self.writer = writer or _writer.get()
        #: Displays are updated while their runs run (a kernel's front end); else shown twice.
        self.live = live
        self.cells: dict[str, CellRun] = {}
        #: The events this kernel claimed, latest last (for ``%watch status``).
        self.events: deque[Event] = deque(maxlen=50)
        self.notes = Notes()
        self.auto: Auto | None = None
        #: IPython event hooks registered for this agent, by event name.
        self.hooks: dict[str, Callable[..., None]] = {}
        #: A cell is executing (between IPython's pre_run_cell and post_run_cell).
        self.executing = False
        self.shutdown = ShutdownHook(self.writer, lambda: self.executing, self._crashed)
        self._repos: dict[str, _Repo] = {}
        self._last_watcher_look = float("-inf")
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------

    def attach(self, kernel: Any = None) -> None:
        """Join the writer thread, keep warnings out of cell outputs, hear ``kernel``'s shutdowns."""
        if self.on_tick not in self.writer.observers:
            self.writer.observers.append(self.on_tick)
        self.notes.attach()
        if kernel is not None:
            self.shutdown.install(kernel)

    def detach(self) -> None:
        """Leave the writer thread and stop delivering (``%unload_ext nbmonitor``)."""
        self.shutdown.remove()
        if self.on_tick in self.writer.observers:
            self.writer.observers.remove(self.on_tick)
        self.writer.keep_alive = False
        for repo in self._repos.values():
            repo.sender.stop()
        self._repos.clear()
        self.notes.detach()

    @property
    def senders(self) -> dict[str, Sender]:
        """The senders started so far, by repo path (none until a cell is watched)."""
        return {path: repo.sender for path, repo in self._repos.items()}

    def watch_long_cells(self, after: float | None) -> None:
        """``%watch auto --after S`` (None: ``%watch off``)."""
        self.auto = None if after is None else Auto(after, self._repo)
        self.writer.keep_alive = after is not None
        if after is not None:
            self.writer.ensure_thread()

    def watcher_note(self) -> str | None:
        """ "pid 123" when a standalone watcher runs on a repo of this kernel's cells."""
        return next((repo.watcher for repo in self._repos.values() if repo.watcher), None)

    # -- cells ---------------------------------------------------------------------

    def start_cell(self, run: Run, *, show: bool, usage: bool) -> CellRun:
        """Watch a cell's run; show its display unless ``show`` is false."""
        self._repo(run.repo)
        history = History() if usage and run.usage_history is not None else None
        display = None
        if show:
            first = self._view(CellRun(run, None, history), run.record(), time.monotonic())
            display = RunDisplay(first, mode="live" if self.live else "static")
        cell = CellRun(run, display, history)
        with self._lock:
            self.cells[run.id] = cell
        return cell

    def finish_cell(self, cell: CellRun) -> None:
        """The cell is done: claim its end now (the kernel may exit at once), show the final
        snapshot and forget the cell."""
        with self._lock:
            self.cells.pop(cell.run.id, None)
        record = cell.run.record()
        self._claim([(cell.run.repo, record)])
        cell.state = record.status
        if cell.display is not None:
            cell.display.finish(self._view(cell, record, time.monotonic()))
            if cell.usage is not None:  # the plot under it, a picture a saved notebook keeps
                UsagePlot(record.name).show(_whole_history(cell.run))

    # -- the writer thread ------------------------------------------------------------

    def on_tick(self, runs: list[_writer.Written], now_wall: float, now_mono: float) -> None:
        if self.auto is not None:
            self.auto.tick(now_mono)
        with self._lock:
            cells = list(self.cells.values())
        self._sample_usage(cells, now_mono)
        records = {run.id: run.record() for run in runs}
        # Every tick: just-ended runs are handed over once, and their end must be claimed.
        seen = self._claim([(run.repo, records[run.id]) for run in runs])
        if now_mono - self._last_watcher_look >= WATCHER_EVERY:
            self._last_watcher_look = now_mono
            for repo in self._repos.values():
                where = repo.observer.repo
                if isinstance(where, RemoteRepo):  # judged beside the server it reports to
                    repo.watcher = where.server.base
                    continue
                info = watcher_info(where)
                repo.watcher = f"pid {info['pid']}" if info else None
        for cell in cells:
            record = records.get(cell.run.id) or cell.run.record()
            obs = seen.get(cell.run.id)
            cell.since_progress = obs.since_progress if obs else now_mono - record.last_progress_mono
            cell.state = obs.state.value if obs else record.status
            if cell.display is not None:
                cell.display.refresh(self._view(cell, record, now_mono), now_mono)

    def _sample_usage(self, cells: list[CellRun], now_mono: float) -> None:
        # The run's own recorder samples the tree (nbmonitor._recorder); the display takes
        # each new sample once.
        for cell in cells:
            kept = cell.run.usage_history
            if cell.usage is None or kept is None or kept.latest is None or kept.samples == cell.samples:
                continue
            cell.samples = kept.samples
            cell.usage.add(kept.latest)

    def _claim(self, runs: list[tuple[Repo, RunRecord]]) -> dict[str, Observation]:
        """Observe these runs of this kernel and claim what is due; their observations by id."""
        seen: dict[str, Observation] = {}
        with self._claim_lock:  # the writer thread, and a cell's end on the main thread
            by_repo: dict[str, list[RunRecord]] = {}
            for where, record in runs:
                by_repo.setdefault(str(where.path), []).append(record)
            for path, mine in by_repo.items():
                repo = self._repos.get(path)
                if repo is None:
                    continue
                observations = repo.observer.look(mine, skip=repo.claimer.done)
                seen |= {obs.run.id: obs for obs in observations}
                repo.sender.refresh()
                # A member of a group is the watcher's to judge, with the rest of its group.
                if repo.claimer.claim([obs for obs in observations if obs.run.group is None]):
                    repo.sender.wake()
        return seen

    def _crashed(self, runs: list[_writer.Written]) -> list[tuple[Repo, Event]]:
        """The kernel is going away with these runs open: claim them crashed, send the news."""
        claimed: list[tuple[Repo, Event]] = []
        now = time.monotonic()
        with self._claim_lock:
            for run in runs:
                repo = self._repo(run.repo)
                record = run.record()
                crashed = Observation(record, State.CRASHED, max(0.0, now - record.last_progress_mono))
                repo.sender.refresh()
                claimed += [(run.repo, event) for event in repo.claimer.claim([crashed])]
                repo.sender.wake()
        return claimed

    def _repo(self, repo: Repo) -> _Repo:
        """Who observes, claims and sends for ``repo`` (started on first use)."""
        key = str(repo.path)
        found = self._repos.get(key)
        if found is None:
            sender = Sender(repo)
            sender.start()
            claimer = Claimer(repo, notifiers=sender.configs, emit=self.events.append, role="kernel")
            found = self._repos[key] = _Repo(Observer(repo, alive=_this_process), claimer, sender)
        return found

    def _view(self, cell: CellRun, record: RunRecord, now_mono: float) -> View:
        repo = self._repos.get(str(cell.run.repo.path))
        return view(cell, record, now_mono, watcher=repo.watcher if repo else None, note=self.notes.latest)


def _whole_history(run: Run) -> Any:
    """The run's whole usage history from its file (the display showed the last minutes only);
    what is in memory when the file cannot be read."""
    kept = run.usage_history
    if kept is None:
        return None
    try:
        return run.repo.read_usage(run.id)
    except (OSError, CorruptRecordError):
        return kept.snapshot()
