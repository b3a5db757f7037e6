"""The one background thread per process that turns runs' in-memory progress into run files.

Runs' hot paths only bump counters; every tick this thread stamps the time
of new progress and writes a run's file when it changed, at most once a
second. At exit, runs still open are closed as finished, and an uncaught
exception fails them first.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import Run

__all__ = ["Monitor", "get"]

log = logging.getLogger("nbmonitor")

Clock = Callable[[], float]


class Monitor:
    """Owns this process's open runs and the thread that writes their files."""

    #: Seconds between ticks: the precision of a progress time stamp.
    TICK = 0.1
    #: Least seconds between two writes of one run's file, unless its promise needs one sooner.
    WRITE_EVERY = 1.0
    #: Most seconds a run file's progress trails the run's while it keeps its promise: a file is
    #: written by the tick that finds its last progress one tick short of looking late, and a
    #: tick may come a tick late. Written into every run file; readers add it to each deadline.
    WRITE_LAG = 2 * TICK
    #: Seconds a track() loop left early waits for an exception to claim it before it counts as finished.
    SETTLE_AFTER = 0.5

    def __init__(self, *, wall: Clock = time.time, mono: Clock = time.monotonic, thread: bool = True) -> None:
        self.wall = wall
        self.mono = mono
        self._use_thread = thread
        self._runs: dict[str, Run] = {}
        self._ended: list[Run] = []
        #: Called after each tick with the runs it handled (just-ended ones too), wall and mono time.
        self.observers: list[Callable[[list[Run], float, float], None]] = []
        #: Keep ticking with no open run (a kernel in %watch auto mode needs it).
        self.keep_alive = False
        #: Set by a kernel: asked before a run records an interrupt, True if the kernel is being
        #: shut down or restarted (Jupyter interrupts the cell first). Such a run is cut off instead.
        self.shutting_down: Callable[[], bool] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, run: Run) -> None:
        """Start watching an open run (and the thread, if it is not running)."""
        with self._lock:
            self._runs[run.id] = run
        self.ensure_thread()

    def ensure_thread(self) -> None:
        """Start the thread if it is not running."""
        with self._lock:
            if self._use_thread and (self._thread is None or not self._thread.is_alive()):
                self._wake.clear()
                self._thread = threading.Thread(target=self._loop, name="nbmonitor", daemon=True)
                self._thread.start()

    def retire(self, run: Run) -> None:
        """An ended run whose final state is written: observers see it once more, then it is gone."""
        if self._runs.pop(run.id, None) is not None and self.observers:
            self._ended.append(run)

    def runs(self) -> list[Run]:
        """The open runs of this process."""
        return list(self._runs.values())

    def tick(self) -> None:
        """One pass: stamp progress and write what changed. The thread calls this every TICK."""
        now_wall, now_mono = self.wall(), self.mono()
        handled = self.runs()
        for run in handled:
            if run._tick(now_wall, now_mono):
                self.retire(run)
        ended, self._ended = self._ended, []
        for observer in self.observers:
            observer(handled + [r for r in ended if r not in handled], now_wall, now_mono)

    def _loop(self) -> None:
        while not self._wake.wait(self.TICK):
            try:
                self.tick()
            except Exception:  # the thread must outlive any bug; say so, keep going
                log.exception("nbmonitor monitor tick failed")
            with self._lock:
                if not self._runs and not self._ended and not self.keep_alive:
                    self._thread = None
                    return

    def stop(self) -> None:
        """Stop the thread (it restarts when a run is added)."""
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * self.TICK + 1)

    def cut_all(self) -> list[Run]:
        """The process is going away mid-run: record every open run as still running, for good."""
        cut = self.runs()
        for run in cut:
            run._cut()
            self.retire(run)
        return cut

    def end_all(self, status: str, exc: BaseException | None = None) -> None:
        """End every open run of this process with ``status`` and write it now."""
        for run in self.runs():
            run._end(status, exc)
            self.retire(run)


_monitor: Monitor | None = None
_hooks_installed = False


def get() -> Monitor:
    """This process's monitor, created on first use along with the exit hooks."""
    global _monitor
    if _monitor is None:
        _monitor = Monitor()
        _install_hooks()
    return _monitor


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if _monitor is not None:
            if isinstance(exc, KeyboardInterrupt):
                _monitor.end_all("interrupted")
            else:
                _monitor.end_all("failed", exc)
        previous(kind, exc, tb)

    sys.excepthook = excepthook
    os.register_at_fork(after_in_child=_forget_in_child)


def _at_exit() -> None:
    # A process that exits normally never raises an alarm: close what is open, and let
    # observers (a kernel claiming its runs' ends) see them once more.
    if _monitor is not None:
        _monitor.stop()
        _monitor.end_all("finished")
        if _monitor.observers:
            _monitor.tick()


def _forget_in_child() -> None:
    # Only the owner writes a run's file: a forked child (a DataLoader worker, say) starts empty.
    global _monitor
    _monitor = None
