"""What a Jupyter kernel adds to the monitor thread: displays, usage, the rules, delivery.

``KernelAgent.on_tick`` runs on the monitor thread after each tick. It
samples usage at most once a second, refreshes each cell's display, applies
the watcher's rules to this kernel's own runs (claiming events in the repo,
so a standalone watcher never repeats them) and wakes the kernel's postman.
It never prints: warnings are kept for ``%watch status`` and the display.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _format, _monitor, rules
from .events import Event
from .outbox import Postman
from .record import RunRecord, RunUsage
from .repo import Repo
from .run import Run
from .usage import History, Sampler
from .watcher import Watcher, watcher_info
from .widget import RunDisplay, View

__all__ = ["CellRun", "KernelAgent"]

USAGE_EVERY = 1.0  # seconds between usage samples
WATCHER_EVERY = 5.0  # seconds between looks for a standalone watcher
RATE_WINDOW = 10.0  # seconds of progress the rate is measured over
#: Seconds an interrupted run waits for a shutdown request before it counts as interrupted:
#: Jupyter interrupts a busy kernel just before it shuts it down or restarts it.
SHUTDOWN_SETTLE = 0.5
#: Seconds a kernel being shut down waits for its "crashed" notifications to go out.
SHUTDOWN_DELIVERY = 2.0


@dataclass
class CellRun:
    """A run shown in a cell: its display, usage history and recent progress for the rate."""

    run: Run
    display: RunDisplay | None
    usage: History | None
    state: str = "running"
    progress: deque[tuple[float, int]] = field(default_factory=deque)
    since_progress: float = 0.0


class _Notes(logging.Handler):
    """Keeps nbmonitor's recent warnings instead of printing them into whatever cell runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=20)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {_format.one_line(record.getMessage())}")


class KernelAgent:
    """The kernel's share of monitoring; one per kernel, attached by ``%load_ext nbmonitor``."""

    def __init__(self, monitor: _monitor.Monitor | None = None, *, widgets: bool = True) -> None:
        self.monitor = monitor or _monitor.get()
        self.widgets = widgets
        self.cells: dict[str, CellRun] = {}
        self.events: deque[Event] = deque(maxlen=50)
        self.notes = _Notes()
        self._watchers: dict[str, Watcher] = {}
        self._postmen: dict[str, Postman] = {}
        self._sampler: Sampler | None = None
        self._last_usage = float("-inf")
        self._last_watcher_look = float("-inf")
        self._watcher_text: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._rules_lock = threading.Lock()
        self._logger = logging.getLogger("nbmonitor")
        self._propagate = self._logger.propagate
        self.auto: Auto | None = None
        #: IPython event hooks registered for this agent, by event name.
        self.hooks: dict[str, Callable[..., None]] = {}
        #: A cell is executing (between IPython's pre_run_cell and post_run_cell).
        self.executing = False
        self._shutdown = threading.Event()
        self._unhook: Callable[[], None] | None = None

    # -- lifecycle --------------------------------------------------------------

    def attach(self) -> None:
        """Join the monitor thread and keep warnings out of cell outputs."""
        if self.on_tick not in self.monitor.observers:
            self.monitor.observers.append(self.on_tick)
        self._logger.addHandler(self.notes)
        self._logger.propagate = False

    def hook_shutdown(self, kernel: Any) -> bool:
        """Hear the kernel's shutdown requests (a restart is one), so a cell cut off by one is
        "crashed" rather than "interrupted". False if this kernel has no such handler."""
        handlers = getattr(kernel, "control_handlers", None)
        original = handlers.get("shutdown_request") if isinstance(handlers, dict) else None
        if original is None or self._unhook is not None:
            return False
        assert isinstance(handlers, dict)

        def shutdown_request(*args: Any, **kwargs: Any) -> Any:
            try:
                self.on_shutdown()
            except Exception:  # never stand in the way of a shutdown
                self._logger.exception("nbmonitor could not record the runs cut off by the shutdown")
            return original(*args, **kwargs)

        def unhook() -> None:
            if handlers.get("shutdown_request") is shutdown_request:
                handlers["shutdown_request"] = original
            self.monitor.shutting_down = None

        handlers["shutdown_request"] = shutdown_request
        self.monitor.shutting_down = lambda: self._shutdown.wait(SHUTDOWN_SETTLE)
        self._unhook = unhook
        return True

    def on_shutdown(self) -> None:
        """The kernel is being shut down or restarted. If a cell is running, its runs are cut
        off: recorded as still running, claimed as "crashed" now, and their notifications sent."""
        cut = self.monitor.cut_all() if self.executing else []
        self._shutdown.set()  # an interrupt waiting in Run._end now knows it was no interrupt
        if not cut:
            return
        claimed: list[tuple[Repo, Event]] = []
        by_repo: dict[str, list[Run]] = {}
        for run in cut:
            by_repo.setdefault(str(run.repo.path), []).append(run)
        for path, runs in by_repo.items():
            repo = runs[0].repo
            self._ensure_postman(repo)
            postman = self._postmen[path]
            postman.refresh()
            # Seen as gone: the process is ending with these runs open.
            gone = Watcher(
                repo, emit=self.events.append, notifiers=postman.configs, alive=_gone, role="kernel"
            )
            claimed += [(repo, e) for e in gone.check([run.record() for run in runs])]
            postman.wake()
        deadline = time.monotonic() + SHUTDOWN_DELIVERY
        while claimed and time.monotonic() < deadline and any(_queued(*c) for c in claimed):
            time.sleep(0.02)

    def detach(self) -> None:
        """Leave the monitor thread and stop delivering (``%unload_ext nbmonitor``)."""
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        if self.on_tick in self.monitor.observers:
            self.monitor.observers.remove(self.on_tick)
        self.monitor.keep_alive = False
        for postman in self._postmen.values():
            postman.stop()
        self._postmen.clear()
        self._logger.removeHandler(self.notes)
        self._logger.propagate = self._propagate

    # -- cells ---------------------------------------------------------------------

    def start_cell(self, run: Run, *, show: bool, usage: bool) -> CellRun:
        """Watch a cell's run; show its display unless ``show`` is false."""
        self._ensure_postman(run.repo)
        history = History() if usage else None
        if usage and self._sampler is None:
            self._sampler = Sampler()
        display = None
        if show:
            mode = "widget" if self.widgets else "static"
            display = RunDisplay(self.view(CellRun(run, None, history), time.monotonic()), mode=mode)
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
        self._check_rules([(cell.run, record)])
        cell.state = record.status
        if cell.display is not None:
            cell.display.finish(self.view(cell, time.monotonic(), record))

    # -- the monitor thread ----------------------------------------------------------

    def on_tick(self, runs: list[Run], now_wall: float, now_mono: float) -> None:
        if self.auto is not None:
            self.auto.tick(now_mono)
        with self._lock:
            cells = list(self.cells.values())
        if self._sampler is not None and now_mono - self._last_usage >= USAGE_EVERY:
            self._last_usage = now_mono
            wanted = [c for c in cells if c.usage is not None]
            if wanted:
                sample = self._sampler.sample(now_mono)
                gpu = sum(g.process_memory or 0 for g in sample.gpus) if sample.gpus else None
                summary = RunUsage(round(sample.cpu_percent, 1), sample.rss, gpu)
                for cell in wanted:
                    assert cell.usage is not None
                    cell.usage.add(sample)
                    cell.run._usage = summary  # into the run file: the lab panel shows it
        records = {run.id: (run, run.record()) for run in runs}
        # Every tick: just-ended runs are handed over once, and their end must be claimed.
        self._check_rules(list(records.values()))
        if now_mono - self._last_watcher_look >= WATCHER_EVERY:
            self._last_watcher_look = now_mono
            self._look_for_watchers(cells)
        for cell in cells:
            record = records[cell.run.id][1] if cell.run.id in records else cell.run.record()
            cell.since_progress = now_mono - record.last_progress_mono
            cell.state = self._state(record, cell.since_progress).value
            if cell.display is not None:
                cell.display.refresh(self.view(cell, now_mono, record), now_mono)

    def _state(self, record: RunRecord, since: float) -> rules.State:
        grace = rules.grace_for(record.eta, record.grace) if record.eta is not None else 0.0
        lag = rules.write_lag(record.write_lag)  # the same deadline as a watcher reading the file
        return rules.state(
            record.status, alive=True, since_progress=since, eta=record.eta, grace=grace, lag=lag
        )

    def _check_rules(self, runs: list[tuple[Run, RunRecord]]) -> None:
        with self._rules_lock:  # the monitor thread, and a cell's end on the main thread
            self._check_rules_locked(runs)

    def _check_rules_locked(self, runs: list[tuple[Run, RunRecord]]) -> None:
        by_repo: dict[str, list[RunRecord]] = {}
        for run, record in runs:
            by_repo.setdefault(str(run.repo.path), []).append(record)
        for path, records in by_repo.items():
            postman = self._postmen.get(path)
            watcher = self._watchers.get(path)
            if watcher is None or postman is None:
                continue
            postman.refresh()
            if watcher.check(records):
                postman.wake()

    def _ensure_postman(self, repo: Repo) -> None:
        key = str(repo.path)
        if key in self._postmen:
            return
        postman = Postman(repo)
        postman.start()
        self._postmen[key] = postman
        self._watchers[key] = Watcher(repo, emit=self.events.append, notifiers=postman.configs, role="kernel")

    def _look_for_watchers(self, cells: list[CellRun]) -> None:
        for path in {str(c.run.repo.path) for c in cells}:
            info = watcher_info(Repo(path))
            self._watcher_text[path] = f"pid {info['pid']}" if info else None

    def view(self, cell: CellRun, now_mono: float, record: RunRecord | None = None) -> View:
        """What the cell's display shows now."""
        record = record or cell.run.record()
        progress = cell.progress
        progress.append((now_mono, record.step))
        while progress and now_mono - progress[0][0] > RATE_WINDOW:
            progress.popleft()
        rate = None
        if len(progress) > 1 and progress[-1][0] > progress[0][0]:
            rate = max(0.0, (progress[-1][1] - progress[0][1]) / (progress[-1][0] - progress[0][0]))
        ended = record.status != "running"
        end = record.ended_at if record.ended_at is not None else time.time()
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
            watcher=self._watcher_text.get(str(cell.run.repo.path)),
            note=self.notes.lines[-1] if self.notes.lines else None,
            ended=ended,
        )


def _gone(pid: int, start: float | None, ticks: int | None) -> bool:
    return False


def _queued(repo: Repo, event: Event) -> bool:
    """Some notifier's delivery of ``event`` is still waiting in the outbox."""
    return bool(repo.pending_of(event.run.id, event.key))


class Auto:
    """``%watch auto --after S``: a cell that runs longer than S seconds becomes a run."""

    def __init__(self, agent: KernelAgent, after: float) -> None:
        self.agent = agent
        self.after = after
        self._cell: tuple[float, int | None] | None = None  # (started, execution count)
        self.run: Run | None = None
        self._lock = threading.Lock()

    def cell_started(self, count: int | None) -> None:
        with self._lock:
            self._cell, self.run = (time.monotonic(), count), None

    def tick(self, now_mono: float) -> None:
        with self._lock:
            if self._cell is None or self.run is not None or now_mono - self._cell[0] < self.after:
                return
            count = self._cell[1]
            self.run = Run(name=f"cell {count}" if count is not None else "cell")
        self.agent._ensure_postman(self.run.repo)

    def cell_ended(self, error: BaseException | None) -> None:
        with self._lock:
            run, self._cell, self.run = self.run, None, None
        if run is None:
            return
        if error is None:
            run.report_successful_finish()
        elif isinstance(error, KeyboardInterrupt):
            run._end("interrupted")
        else:
            run._end("failed", error)
