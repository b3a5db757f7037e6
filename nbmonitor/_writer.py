"""The one background thread per process that turns runs' in-memory progress into run files.

Runs' hot paths only bump counters; every tick this thread stamps the time
of new progress and writes a run's file when it changed, at most once a
second (sooner when its promise needs it). At exit, runs still open end as
the process does: finished, failed by an uncaught exception or a non-zero
``sys.exit()``, interrupted by Ctrl-C; a thread that dies of an exception
fails the runs it created; a multiprocessing worker's end and ``os.exec*()``
close them too, since neither runs atexit.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Protocol

from .record import ErrorInfo, RunRecord
from .repo import Repo

__all__ = ["Writer", "Written", "get"]

log = logging.getLogger("nbmonitor")

Clock = Callable[[], float]


class Written(Protocol):
    """What the writer thread (and a kernel observing it) asks of a run: nbmonitor.Run is one."""

    @property
    def id(self) -> str: ...

    @property
    def repo(self) -> Repo: ...

    @property
    def owner(self) -> threading.Thread: ...

    @property
    def owns_loop(self) -> bool: ...

    def record(self) -> RunRecord: ...

    def tick(self, now_wall: float, now_mono: float, force: bool = False) -> bool:
        """Stamp new progress and write the run's file if it changed and is due; True once the
        run has ended and its final state is on disk."""
        ...

    def end(self, status: str, exc: BaseException | None = None, error: ErrorInfo | None = None) -> None: ...

    def cut(self) -> None:
        """The process goes away mid-run: write the run as still running, and never again."""
        ...


class Writer:
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
        self._runs: dict[str, Written] = {}
        self._ended: list[Written] = []
        #: Called after each tick with the runs it handled (just-ended ones too), wall and mono time.
        self.observers: list[Callable[[list[Written], float, float], None]] = []
        #: Called at the start of each tick with the mono time (workers' progress read in).
        self.before_tick: list[Callable[[float], None]] = []
        #: Keep ticking with no open run (a kernel in %watch auto mode needs it).
        self.keep_alive = False
        #: Set by a kernel: asked before a run records an interrupt, True if the kernel is being
        #: shut down or restarted (Jupyter interrupts the cell first). Such a run is cut off instead.
        self.shutting_down: Callable[[], bool] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, run: Written) -> None:
        """Start watching an open run (and the thread, if it is not running)."""
        with self._lock:
            self._runs[run.id] = run
        self.ensure_thread()

    def ensure_thread(self) -> None:
        """Start the thread if it is not running."""
        with self._lock:
            if self._use_thread and (self._thread is None or not self._thread.is_alive()):
                self._wake.clear()
                self._thread = threading.Thread(target=self._loop, name="nbmonitor-writer", daemon=True)
                self._thread.start()

    def retire(self, run: Written) -> None:
        """An ended run whose final state is written: observers see it once more, then it is gone."""
        if self._runs.pop(run.id, None) is not None and self.observers:
            self._ended.append(run)

    def runs(self) -> list[Written]:
        """The open runs of this process."""
        return list(self._runs.values())

    def tick(self) -> None:
        """One pass: stamp progress and write what changed. The thread calls this every TICK."""
        now_wall, now_mono = self.wall(), self.mono()
        for prepare in self.before_tick:
            prepare(now_mono)
        handled = self.runs()
        for run in handled:
            if run.tick(now_wall, now_mono):
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

    def cut_all(self) -> list[Written]:
        """The process is going away mid-run: record every open run as still running, for good."""
        cut = self.runs()
        for run in cut:
            run.cut()
            self.retire(run)
        return cut

    def end_all(self, status: str, exc: BaseException | None = None, error: ErrorInfo | None = None) -> None:
        """End every open run of this process with ``status`` and write it now."""
        for run in self.runs():
            run.end(status, exc, error)
            self.retire(run)

    def end_thread(self, thread: threading.Thread, status: str, exc: BaseException | None) -> None:
        """``thread`` is ending by ``exc``: end the open runs it created."""
        for run in self.runs():
            if run.owner is thread:
                run.end(status, exc)
                self.retire(run)

    def fail_loops(self, thread: threading.Thread, exc: BaseException) -> None:
        """An exception (that a kernel's cell caught) left the ``track()`` loops of ``thread``
        that are runs of their own: they failed (or were interrupted), rather than finishing."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        for run in self.runs():
            if run.owns_loop and run.owner is thread:
                run.end("interrupted" if interrupted else "failed", None if interrupted else exc)
                self.retire(run)


@dataclass(frozen=True, slots=True)
class _Ending:
    """How this process is ending, once its main thread knows: what its open runs become."""

    status: str
    exc: BaseException | None = None
    error: ErrorInfo | None = None


_writer: Writer | None = None
_hooks_installed = False
_ending: _Ending | None = None


def get() -> Writer:
    """This process's monitor, created on first use along with the exit hooks."""
    global _writer
    if _writer is None:
        _writer = Writer()
        _install_hooks()
        _hook_worker_exit()
    return _writer


def _install_hooks() -> None:
    global _hooks_installed, _original_exit
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        # The main thread dies of it, and the process ends that way.
        global _ending
        _ending = _Ending("interrupted") if isinstance(exc, KeyboardInterrupt) else _Ending("failed", exc)
        if _writer is not None:
            _writer.end_thread(threading.current_thread(), _ending.status, _ending.exc)
        previous(kind, exc, tb)

    sys.excepthook = excepthook
    previous_thread_hook = threading.excepthook

    def thread_excepthook(args: Any) -> None:  # threading.ExceptHookArgs
        if _writer is not None and args.thread is not None and args.exc_value is not None:
            _writer.end_thread(args.thread, "failed", args.exc_value)
        previous_thread_hook(args)

    threading.excepthook = thread_excepthook
    if sys.modules.get("ipykernel") is None:
        # In a script, the status sys.exit() asks for is how it ends. (A kernel goes on after a
        # cell calls it; its %%watch cells see the SystemExit themselves.)
        _original_exit, sys.exit = sys.exit, _exit
    sys.addaudithook(_audit)
    os.register_at_fork(after_in_child=_forget_in_child)


ExitStatus = str | int | None  # what typeshed lets sys.exit() take (any object works)
_original_exit = sys.exit


def _exit(status: ExitStatus = None, /) -> NoReturn:
    """sys.exit(), noting the status when the main thread asks for it (elsewhere it ends a thread)."""
    global _ending
    if threading.current_thread() is threading.main_thread():
        error = ErrorInfo.for_exit(status)
        _ending = _Ending("finished" if error is None else "failed", error=error)
    _original_exit(status)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # os.exec*() replaces this program: its runs are over, and no exit hook will run.
    if event == "os.exec" and _writer is not None:
        _writer.end_all("finished")


def _at_exit() -> None:
    # A process that exits normally never raises an alarm: close what is open as the process
    # ends (finished, or as sys.exit() or an uncaught exception said), and let observers (a
    # kernel claiming its runs' ends) see them once more.
    if _writer is not None:
        ending = _ending or _Ending("finished")
        _writer.stop()
        _writer.end_all(ending.status, ending.exc, ending.error)
        if _writer.observers:
            _writer.tick()
    sending = sys.modules.get("nbmonitor._sender")
    if sending is not None:  # runs that report to a Jupyter server: their ends go now
        sending.flush_all()


def _hook_worker_exit() -> None:
    """A multiprocessing worker (fork, forkserver) ends by os._exit() after its target returns,
    skipping atexit; multiprocessing's own exit function runs first, and closes our runs."""
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None:
        return
    from multiprocessing import util

    util.Finalize(None, _at_worker_exit, exitpriority=100)


def _at_worker_exit() -> None:
    # Called in the finally of the worker's bootstrap: an exception on its way out is how it ends.
    global _ending
    exc = sys.exc_info()[1]
    if isinstance(exc, SystemExit):
        error = ErrorInfo.for_exit(exc.code)
        _ending = _Ending("finished" if error is None else "failed", error=error)
    elif isinstance(exc, KeyboardInterrupt):
        _ending = _Ending("interrupted")
    elif exc is not None:
        _ending = _Ending("failed", exc)
    _at_exit()


#: Called in a forked child with the open runs it inherited: they are its parent's, not its own.
at_fork_child: list[Callable[[list[Written]], None]] = []


def _forget_in_child() -> None:
    # Only the owner writes a run's file: a forked child (a DataLoader worker, say) starts empty.
    global _writer, _ending
    inherited = _writer.runs() if _writer is not None else []
    _writer, _ending = None, None
    for hook in at_fork_child:
        hook(inherited)
