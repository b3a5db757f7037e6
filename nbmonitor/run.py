"""Runs: what code reports (progress, finish, failure) and the ways to make one.

The names follow Aim's run-status API (``report_progress(expect_next_in=)``,
``report_successful_finish()``), so Aim users can switch by changing an import.
Reporting progress only changes counters in memory; the monitor thread does
the rest (see nbmonitor._writer).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import operator
import os
import pathlib
import sys
import threading
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import (
    _board,
    _capture,
    _format,
    _onstall,
    _process,
    _recorder,
    _sender,
    _stacks,
    _values,
    _writer,
    rules,
)
from ._once import Trouble
from .errors import NbmonitorError, RepoError
from .logtail import LogLine
from .record import (
    CheckpointField,
    ErrorInfo,
    GroupField,
    Origin,
    RunRecord,
    RunUsage,
    StackFrame,
    ThreadStack,
    clip,
)
from .remote import RemoteRepo
from .repo import Repo

if TYPE_CHECKING:
    from . import _board, _workers, membership

__all__ = ["Run", "cell_number", "current_run", "mark", "report_progress", "track", "watch"]

T = TypeVar("T")

_second = operator.itemgetter(1)

#: The runs of this thread's (or asyncio task's) open ``with`` blocks (watch(), %%watch cells),
#: innermost last: progress made here counts for the last one.
_blocks: contextvars.ContextVar[tuple[Run, ...]] = contextvars.ContextVar("nbmonitor_blocks", default=())
#: Every open block of the process, oldest first: a thread with no block of its own counts for
#: the newest one it did not predate (it was started inside that block).
_open_blocks: list[Run] = []
_open_lock = threading.Lock()
_generation = 0  # bumped whenever a block opens or closes, so threads recompute what they adopt
_adoption = threading.local()

_NAME_MAX: Final = 200
#: Lines of the traceback of the exception that failed a run, kept at the end of its log tail.
_TRACEBACK_LINES: Final = 40


class Run:
    """One monitored piece of work: a cell, a loop, a script or any part of one.

    ``expect_next_in`` promises the next progress report within that many
    seconds; a run that misses it by more than ``grace`` counts as stalled.
    Also a context manager: leaving the ``with`` block normally finishes the
    run, an exception fails it, KeyboardInterrupt marks it interrupted.
    Once a second the writer thread samples CPU, memory and GPU use of the
    process and its children into the run's usage history (``usage=False``:
    not), and ``mark()`` puts labelled moments on it. While it is open, what
    the process logs and prints is copied into the run's log tail
    (``logs=False``: not), which alarms quote.
    """

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_abandoned_at",
        "_beats",
        "_checkpoint",
        "_crew",
        "_cut_off",
        "_ended_at",
        "_error",
        "_eta",
        "_exit_now",
        "_folded",
        "_grace",
        "_group",
        "_history",
        "_id",
        "_last_mono",
        "_last_wall",
        "_last_write",
        "_lock",
        "_log",
        "_mode",
        "_name",
        "_on_stall",
        "_origin",
        "_owner",
        "_owns_loop",
        "_pid",
        "_predates",
        "_probe",
        "_probe_total",
        "_process_start",
        "_process_ticks",
        "_records_usage",
        "_repo",
        "_seen",
        "_stack",
        "_stack_at",
        "_stack_scope",
        "_stack_state",
        "_stalled_at",
        "_started_at",
        "_status",
        "_step",
        "_teller",
        "_threads",
        "_total",
        "_track",
        "_usage",
        "_waiting",
        "_waiting_at",
        "_write_trouble",
        "_writer",
        "_written",
        "_written_mono",
        "_written_seen",
    )

    def __init__(
        self,
        name: str | None = None,
        repo: Repo | str | os.PathLike[str] | None = None,
        expect_next_in: float | None = None,
        grace: float | None = None,
        total: int | None = None,
        *,
        group: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        mode: membership.Mode | None = None,
        usage: bool = True,
        logs: bool = True,
        stacks: str | None = None,
        on_stall: str | None = None,
    ) -> None:
        self._stack_scope = _stacks_option(stacks)
        self._on_stall = _onstall.choice(on_stall)
        self._exit_now = False  # on_stall="exit": ended for its stall; the process goes next
        self._teller: _onstall.Teller | None = None
        self._checkpoint: CheckpointField | None = None  # saved, or else resumed from
        self._eta = _duration("expect_next_in", expect_next_in, zero_ok=False)
        self._grace = _duration("grace", grace, zero_ok=True)
        self._total = _count("total", total)
        self._group = _membership(group, rank, world_size, mode)
        self._mode = mode
        self._origin = origin()
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self._name = clip(name)[:_NAME_MAX] if name else default_name(self._origin)
        self._repo = repo if isinstance(repo, Repo) else Repo(repo)
        if isinstance(self._repo, RemoteRepo):
            _sender.attach()  # what it writes goes on to its server
        try:
            self._repo.ensure()
        except (OSError, RepoError) as e:
            # The work goes on; the monitor retries the file every second and says why it fails.
            _writer.log.warning("nbmonitor: repo %s is not usable yet: %s", self._repo.path, e)
        self._writer = _writer.get()
        self._id = uuid.uuid4().hex
        self._pid = os.getpid()
        self._owner = threading.current_thread()  # an exception that ends this thread fails the run
        self._owns_loop = False  # a run of its own made by track(): it ends with its loop
        self._predates: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._process_start, self._process_ticks = _own_start()
        self._lock = threading.Lock()
        self._beats = 0
        self._folded = 0
        self._step: int | None = None
        self._track: _Track | None = None
        self._probe: Callable[[], int] | None = None
        self._probe_total: Callable[[], int | None] | None = None
        self._usage: RunUsage | None = None  # set by a kernel that samples usage
        self._crew: _workers.Crew | None = None  # multiprocessing workers reporting for this run
        self._waiting: str | None = None  # the collective call its thread was last seen in
        self._waiting_at = -math.inf
        self._seen = 0
        self._started_at = self._last_wall = self._writer.wall()
        self._last_mono = self._writer.mono()
        self._status = "running"
        self._ended_at: float | None = None
        self._error: ErrorInfo | None = None
        self._abandoned = False
        self._abandoned_at: float | None = None
        self._cut_off = False
        self._write_trouble = Trouble(_writer.log)  # the file cannot be written: said once per cause
        self._written: tuple[Any, ...] | None = None
        self._written_seen, self._written_mono = -1, self._last_mono
        self._last_write = -math.inf
        self._stalled_at: float | None = None  # when it missed its promise (a mark was made)
        self._stack: tuple[StackFrame, ...] = ()  # where its thread was when it turned late or stalled
        self._stack_state: str | None = None
        self._stack_at: float | None = None
        self._threads: tuple[ThreadStack, ...] = ()  # the others', with stacks="all"
        self._records_usage = bool(usage)
        self._history = _recorder.RunHistory(
            self._repo, self._id, self._name, _process.host(), self._started_at, self._last_mono
        )
        self._history.mark("start", None, self._last_mono, by="nbmonitor")
        if usage:
            _record_usage(self._writer)
        self._log: _capture.RunLog | None = None
        if logs:
            self._log = _capture.RunLog(self._repo, self._id, _member_label(self._group))
            _keep_logs(self._writer).attach(self._log)
        self._writer.add(self)

    # -- what user code calls -------------------------------------------------

    def report_progress(self, expect_next_in: float | None = None, step: int | None = None) -> None:
        """Record progress; optionally promise the next report within ``expect_next_in`` seconds.

        Memory only, no I/O and no clock read: safe in the tightest loop.
        """
        self._beats += 1
        if expect_next_in is not None and expect_next_in != self._eta:
            self._eta = _duration("expect_next_in", expect_next_in, zero_ok=False)
        if step is not None:
            self._step = _count("step", step)

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Yield the items of ``iterable``, counting each one as progress of this run.

        ``total`` defaults to ``len(iterable)`` when it has one. The run stays
        open when the loop ends; ``nbmonitor.track()`` is the one that ends its run.
        """
        return self._start_track(iterable, total, owns=False)

    def report_successful_finish(self) -> None:
        """The run is done and succeeded."""
        self.end("finished")

    def report_failure(self, message: str | None = None) -> None:
        """The run failed; ``message`` says why and is sent with the notification."""
        self.end("failed", error=ErrorInfo("failure", clip(str(message or "reported failure"))))

    def close(self) -> None:
        """End the run; one that did not report failure counts as finished."""
        self.end("finished")

    def __enter__(self) -> Run:
        global _generation
        self._predates = weakref.WeakSet(threading.enumerate())
        _blocks.set((*_blocks.get(), self))
        with _open_lock:
            _open_blocks.append(self)
            _generation += 1
            _blocks_changed()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _generation
        blocks = _blocks.get()
        if self in blocks:
            _blocks.set(tuple(run for run in blocks if run is not self))
        with _open_lock:
            if self in _open_blocks:
                _open_blocks.remove(self)
            _generation += 1
            _blocks_changed()
        collector = _collector
        if collector is not None:  # what the workers did up to now counts, before the run ends
            collector(self._writer.mono(), look=True)
        self.end_as(exc)

    # -- what anyone may read -------------------------------------------------

    @property
    def id(self) -> str:
        """The run's id, also its file name in the repo."""
        return self._id

    @property
    def name(self) -> str:
        return self._name

    @property
    def repo(self) -> Repo:
        return self._repo

    @property
    def status(self) -> str:
        """What this process reports: running, finished, failed or interrupted."""
        return self._status

    @property
    def step(self) -> int:
        return self._counts()[1]

    @property
    def group(self) -> GroupField | None:
        """The job this run is a member of (its launcher, rank and size), if any."""
        return self._group

    @property
    def total(self) -> int | None:
        return self._total

    @property
    def eta(self) -> float | None:
        """Seconds within which the next progress is promised (None: no promise)."""
        return self._eta

    def record(self) -> RunRecord:
        """The run as its file would hold it now."""
        with self._lock:
            return self._record(self._writer.wall(), *self._counts())

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Run stays in the process that made it; in a multiprocessing worker started inside "
            "its block, nbmonitor.report_progress() and nbmonitor.track() count for it"
        )

    def __repr__(self) -> str:
        step, total = self.step, self._total
        of = f"{step}/{total}" if total is not None else str(step)
        return f"<nbmonitor.Run {self._name!r} {self._status} step {of} id={self._id[:8]}>"

    # -- what nbmonitor's writer thread and a kernel call (nbmonitor._writer.Written) --------

    @property
    def owner(self) -> threading.Thread:
        """The thread that made the run: an exception that ends that thread fails the run."""
        return self._owner

    @property
    def owns_loop(self) -> bool:
        """The run is a ``track()`` loop's own: it ends with its loop."""
        return self._owns_loop

    def count_also(self, source: Callable[[], int], total: Callable[[], int | None] | None = None) -> None:
        """Count what ``source`` returns (a count that only grows: how far the tqdm bars of a
        cell moved) as progress of this run too, and show what ``total`` returns as the run's
        total when it was given none. Both are called on the writer thread."""
        self._probe = source
        self._probe_total = total

    def set_usage(self, usage: RunUsage) -> None:
        """The latest resource reading of the run's process tree, written into its file."""
        self._usage = usage

    def checkpoint(
        self,
        step: int | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        keep: int | None = 3,
        best: str | None = None,
        **metadata: Any,
    ) -> contextlib.AbstractContextManager[pathlib.Path]:
        """A fresh directory to save a checkpoint into: ``with run.checkpoint(step=1200, loss=0.31)
        as path: torch.save(state, path / "model.pt")``. When the block ends its files are flushed,
        the directory moved into place in one step and recorded with the run's job, so
        ``nbmonitor.latest_checkpoint()`` finds it in the next attempt; an exception in the block
        leaves no checkpoint. ``directory``: where the job's checkpoints go (default
        ``$NBMONITOR_CHECKPOINT_DIR``, else ``checkpoints/<run name>`` beside the script or
        notebook); ``keep`` the newest (and with ``best="loss"``, or ``"max:accuracy"``, the best
        by that metadata value); the rest are removed."""
        from . import checkpoints

        where = pathlib.Path(directory) if directory is not None else self._checkpoint_dir()
        saving = checkpoints.save(
            self._repo,
            self.job,
            where,
            step=step,
            metadata=metadata,
            run_id=self._id,
            keep=keep,
            best=best,
        )
        return self._marked(saving, step)

    @contextlib.contextmanager
    def _marked(
        self, saving: contextlib.AbstractContextManager[pathlib.Path], step: int | None
    ) -> Iterator[pathlib.Path]:
        with saving as path:
            yield path
        self._checkpoint = CheckpointField(step, self._writer.wall())
        self._history.mark("checkpoint", step, self._writer.mono(), by="nbmonitor")

    @property
    def job(self) -> str:
        """The work this run does, the same across attempts: its checkpoints are the job's
        (the supervisor's, torchrun's or SLURM's job, else the script or notebook and the name)."""
        from . import checkpoints

        return checkpoints.job_of(self._name, self._origin)  # about a microsecond: not kept

    def _checkpoint_dir(self) -> pathlib.Path:
        from . import checkpoints

        return checkpoints.default_dir(self._name, self._origin)

    def latest_checkpoint(self) -> Any:
        """The newest complete checkpoint of this run's job (a ``Checkpoint``: ``path``,
        ``step``, ``metadata``, ``at``), or None in its first attempt."""
        from . import checkpoints

        found = checkpoints.latest(self._repo, self.job)
        if found is not None and self._checkpoint is None:
            self._checkpoint = CheckpointField(found.step, found.at, resumed=True)
        return found

    def mark(self, label: str, value: float | int | str | None = None) -> None:
        """Put a labelled moment on the run's usage history (a vertical line on its plot):
        ``run.mark("eval")``, ``run.mark("epoch", 3)``. Memory only; written within seconds."""
        _check_mark(label, value)
        self._history.mark(label, value, self._writer.mono())

    @property
    def usage_history(self) -> _recorder.RunHistory | None:
        """The run's usage history as it is recorded (None when it records no usage)."""
        return self._history if self._records_usage else None

    def end_as(self, exc: BaseException | None) -> None:
        """End the run as ``exc`` says: None finishes it, KeyboardInterrupt interrupts it,
        ``sys.exit()`` finishes or fails it by its status, any other exception fails it."""
        if exc is None:
            self.end("finished")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("interrupted")
        elif isinstance(exc, SystemExit):
            error = ErrorInfo.for_exit(exc.code)
            self.end("finished" if error is None else "failed", error=error)
        else:
            self.end("failed", exc)

    def _shown_total(self) -> int | None:
        """The total given, else the one its tqdm bar knows."""
        if self._total is None and self._probe_total is not None:
            return self._probe_total()
        return self._total

    def _counts(self) -> tuple[int, int]:
        """(progress reports so far, step to show)."""
        track = self._track
        done = track.completed() if track is not None else 0
        progress = self._beats + self._folded + done
        if self._probe is not None:
            progress += self._probe()
        own = done if track is not None else progress
        crew = self._crew
        if crew is not None and crew:
            progress += crew.progress
            if self._step is None:
                # Ranked workers walk the same steps (lockstep); others share the work (sharded).
                lockstep = self._mode == "lockstep" if self._mode is not None else crew.ranked()
                workers = crew.step(lockstep)
                if workers is not None:
                    return progress, workers if lockstep else own + workers
        if self._step is not None:
            return progress, self._step
        return progress, own

    def tick(self, now_wall: float, now_mono: float, force: bool = False) -> bool:
        """Stamp new progress and write the file if it changed and is due. True once the
        run has ended and its final state is on disk."""
        done = self._tick(now_wall, now_mono, force)
        if done and self._exit_now:
            _onstall.leave(self._name, now_mono - (self._stalled_at or now_mono) < _onstall.WAIT)
        return done

    def _tick(self, now_wall: float, now_mono: float, force: bool) -> bool:
        with self._lock:
            if self._cut_off:
                return True
            progress, step = self._counts()
            if progress != self._seen:
                self._seen, self._last_wall, self._last_mono = progress, now_wall, now_mono
                self._stack_state = None  # the stack stays, for whoever asks where it was stuck
                if self._stalled_at is not None:
                    self._stalled_at = None
                    self._history.mark("recovered", None, now_mono, by="nbmonitor")
            elif self._eta is not None and self._status == "running":
                self._late(now_wall, now_mono)
                if self._stalled_at is not None and self._on_stall == "exit":
                    self._end_for_stall(now_wall, now_mono, progress, step)
            self._history.flush(now_mono, force=self._status != "running")
            if self._log is not None:
                self._log.flush(now_mono, force=self._status != "running")
            if self._abandoned and self._status == "running":
                if self._abandoned_at is None:
                    self._abandoned_at = now_mono
                elif now_mono - self._abandoned_at >= self._writer.SETTLE_AFTER:
                    self._set_end("finished", None, now_wall)
            if self._group is not None and now_mono - self._waiting_at >= self._writer.WRITE_EVERY:
                self._waiting, self._waiting_at = _stacks.collective(self._owner), now_mono
            state = (
                self._status,
                progress,
                step,
                self._shown_total(),
                self._eta,
                self._name,
                # Not the usage: it changes every second, and rides along with the next write.
                self._crew.version if self._crew is not None else 0,
                self._waiting,
                self._stack_at,
                self._checkpoint,
            )
            final = self._status != "running"
            if state == self._written:
                if final or now_mono - self._last_write < _heartbeat():
                    return final
                # Nothing changed, but a reader on another host needs a sign of life now and then.
            elif not (final or force or self._write_due(now_mono)):
                return False
            self._last_write = now_mono
            try:
                self._repo.write_run(self._record(now_wall, progress, step))
            except (OSError, RepoError) as e:
                self._write_failed(e)
                return False
            self._write_trouble.over("nbmonitor: run %r is written to %s again", self._name, self._repo.path)
            self._written, self._written_seen, self._written_mono = state, self._seen, self._last_mono
            return final

    def _late(self, now_wall: float, now_mono: float) -> None:
        """No progress since ``_last_mono``: past the ETA, take the stack of the run's thread (to
        say where it is stuck); past ETA + grace, again, and mark the stall."""
        assert self._eta is not None
        since = now_mono - self._last_mono
        deadline = self._eta + rules.grace_for(self._eta, self._grace)
        if since > deadline and self._stalled_at is None:
            self._stalled_at = self._last_mono + deadline
            self._history.mark("stalled", None, self._stalled_at, by="nbmonitor")
            self._take_stack("stalled", now_wall, now_mono)
        elif since > self._eta and self._stack_state is None:
            self._take_stack("late", now_wall, now_mono)

    def _end_for_stall(self, now_wall: float, now_mono: float, progress: int, step: int) -> None:
        """on_stall="exit": once the stall is claimed (or after ``_onstall.WAIT``), end the run
        as failed, so that its final state is written and the process exits (``tick``)."""
        assert self._stalled_at is not None
        assert self._eta is not None
        if self._teller is None:
            self._teller = _onstall.Teller(self._repo)
        waited = now_mono - self._stalled_at
        if self._group is not None and self._waiting and waited < 2 * _onstall.WAIT:
            # Waiting in a collective behind a straggler, whose own exit ends the collective
            # here: leaving first would make the launcher kill the straggler before it says why.
            return
        if waited < _onstall.WAIT and not self._teller.told(self._record(now_wall, progress, step), now_mono):
            return
        grace = rules.grace_for(self._eta, self._grace)
        message = (
            f"no progress for {_format.duration(now_mono - self._last_mono)} (promised within "
            f"{_format.duration(self._eta)}, grace {_format.duration(grace)}); its process exits "
            f"so that its launcher restarts it (on_stall='exit')"
        )
        where = self._stack[0].where if self._stack else None
        self._set_end("failed", ErrorInfo(rules.STALL_EXIT, message, where), now_wall)
        self._exit_now = True

    def _take_stack(self, state: str, now_wall: float, now_mono: float) -> None:
        if self._group is not None:
            # Where a member waits decides whom a group's alarm blames: read now, with the stack,
            # not up to a second later (a rank just into its all_reduce was once blamed).
            self._waiting, self._waiting_at = _stacks.collective(self._owner), now_mono
        stack = _stacks.capture(self._owner)
        if stack or self._stack_state is None:
            self._stack, self._stack_state, self._stack_at = stack, state, now_wall
            if self._stack_scope == "all":
                self._threads = _stacks.capture_all(self._owner)

    def _write_due(self, now_mono: float) -> bool:
        """Whether a changed run's file is due: once a second, or sooner when the file's last
        progress is about to look late to a reader while newer progress waits in memory."""
        if now_mono - self._last_write >= self._writer.WRITE_EVERY:
            return True
        eta = self._eta
        if eta is None or self._seen == self._written_seen:
            return False
        return now_mono - self._written_mono >= eta - self._writer.TICK

    def _write_failed(self, error: OSError | RepoError) -> None:
        # The work goes on and the file is retried every second.
        cause = (error.strerror if isinstance(error, OSError) else None) or str(error)
        self._write_trouble.happened(
            cause,
            "nbmonitor: cannot write the file of run %r in %s (%s); the run goes on, "
            "and its file is retried every second",
            self._name,
            self._repo.path,
            cause,
        )

    def _record(self, now_wall: float, progress: int, step: int) -> RunRecord:
        restarts = _checkpoints().torchrun_restarts()
        return RunRecord(
            id=self._id,
            name=self._name,
            origin=self._origin,
            host=_process.host(),
            pid=self._pid,
            process_start=self._process_start,
            process_start_ticks=self._process_ticks,
            boot_id=_process.boot_id(),
            started_at=self._started_at,
            status=self._status,
            eta=self._eta,
            grace=self._grace,
            step=step,
            total=self._shown_total(),
            progress=progress,
            last_progress_at=self._last_wall,
            last_progress_mono=self._last_mono,
            ended_at=self._ended_at,
            error=self._error,
            updated_at=now_wall,
            usage=self._usage,
            write_lag=self._writer.WRITE_LAG,
            group=self._group,
            heartbeat=_heartbeat(),
            workers=self._crew.fields() if self._crew is not None else (),
            waiting=self._waiting,
            stack=self._stack,
            stack_state=self._stack_state,
            stack_at=self._stack_at,
            thread_id=self._owner.native_id,
            threads=self._threads,
            job=self.job,
            attempt=_checkpoints().attempt(),
            max_restarts=restarts[0],
            restart_count=restarts[1],
            on_stall=self._on_stall,
            supervisor=_checkpoints().supervisor(),
            checkpoint=self._checkpoint,
        )

    def _set_end(self, status: str, error: ErrorInfo | None, now_wall: float) -> None:
        self._status, self._error, self._ended_at = status, error, now_wall
        self._history.mark(status, None, self._writer.mono(), by="nbmonitor")

    def end(self, status: str, exc: BaseException | None = None, error: ErrorInfo | None = None) -> None:
        """End the run (once) as ``status`` (finished, failed or interrupted), the error from
        ``exc`` or ``error``, and write its final state now; only its own process can."""
        if self._status != "running" or os.getpid() != self._pid or self._cut_off:
            return
        shutting_down = self._writer.shutting_down
        if status == "interrupted" and shutting_down is not None and shutting_down():
            return  # not an interrupt: the kernel is going away, and cut() has recorded that
        with self._lock:
            if self._status != "running" or self._cut_off:
                return
            if exc is not None and error is None:
                error = _error_info(exc)
            self._set_end(status, error, self._writer.wall())
        self._end_log(exc if status == "failed" else None)
        if self.tick(self._writer.wall(), self._writer.mono(), force=True):
            self._writer.retire(self)

    def _end_log(self, exc: BaseException | None) -> None:
        """The tail gets everything written until now, and the traceback of the exception that
        failed the run (Python prints it only after the run has ended)."""
        if self._log is None:
            return
        _capture.get().detach(self._log)
        if exc is not None:
            now = self._writer.wall()
            text = "".join(traceback.format_exception(exc)).rstrip("\n")
            lines = [LogLine(now, "ERROR", "traceback", part) for part in text.split("\n") if part]
            self._log.add(lines[-_TRACEBACK_LINES:])

    def _start_track(self, iterable: Iterable[T], total: int | None, owns: bool) -> Iterator[T]:
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]  # any sized iterable will do
            except TypeError:
                total = None
        track = _Track(enumerate(iterable))
        self._owns_loop = self._owns_loop or owns
        with self._lock:
            if self._track is not None:
                self._folded += self._track.completed()
            self._track, self._step = track, None
            self._total = _count("total", total)
        # A C-level pipeline: enumerate counts, map unpacks, chain calls the end marker
        # after the last item. No Python code runs per item.
        return chain(map(_second, track.items), _TrackEnd(self, track, owns))

    def _abandon(self) -> None:
        self._abandoned = True

    def cut(self) -> None:
        """The process is going away mid-run (a kernel shut down or restarted while its cell ran):
        write the run as still running, then never again, so its end is "crashed" for everyone."""
        if self._log is not None:
            _capture.get().detach(self._log)
        self.tick(self._writer.wall(), self._writer.mono(), force=True)
        with self._lock:
            self._history.flush(self._writer.mono(), force=True)
            if self._log is not None:
                self._log.flush(self._writer.mono(), force=True)
            self._cut_off = True


class _Track:
    """One loop over an iterable, counted by the enumerate object that feeds it."""

    __slots__ = ("exhausted", "items")

    def __init__(self, items: enumerate[Any]) -> None:
        self.items = items
        self.exhausted = False

    def completed(self) -> int:
        """Items finished so far: the one being worked on does not count until the next is asked for."""
        # enumerate's pickle state is (iterator, index of the next item); reading it costs no per-item work.
        state = self.items.__reduce__()
        assert isinstance(state, tuple)  # typeshed allows a str; enumerate returns a tuple
        fetched: int = state[1][1]
        return fetched if self.exhausted else max(fetched - 1, 0)


class _TrackEnd:
    """Last in the chain: reached when the loop is exhausted, dropped when it is left early."""

    __slots__ = ("_done", "_owns", "_run", "_track")

    def __init__(self, run: Run, track: _Track, owns: bool) -> None:
        self._run, self._track, self._owns, self._done = run, track, owns, False

    def __iter__(self) -> _TrackEnd:
        return self

    def __next__(self) -> Any:
        if not self._done:
            self._done = True
            self._track.exhausted = True
            if self._owns:
                self._run.close()
        raise StopIteration

    def __del__(self) -> None:
        # Left by break, return or an exception. Which of these is known only later
        # (an uncaught exception reaches the excepthook first), so the monitor settles it.
        if not self._done and self._owns:
            self._run._abandon()  # noqa: SLF001  # this module's Run


def watch(
    eta: float | None = None,
    name: str | None = None,
    total: int | None = None,
    grace: float | None = None,
    repo: Repo | str | os.PathLike[str] | None = None,
    *,
    group: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    mode: membership.Mode | None = None,
    usage: bool = True,
    logs: bool = True,
    stacks: str | None = None,
    on_stall: str | None = None,
) -> Run:
    """A run for a ``with`` block: ``with nbmonitor.watch(eta=30) as run: ...``.

    Leaving the block normally finishes it, an exception fails it (type and
    message recorded), KeyboardInterrupt marks it interrupted. Progress that
    multiprocessing workers started in the block report counts for it.
    ``group`` (with ``rank`` and ``world_size``) makes it a member of a job
    watched as one (see ``Run``). ``usage=False``: no CPU, memory and GPU history;
    ``logs=False``: no log tail; ``stacks="all"``: every thread's stack when it turns late
    or stalled, not only its own thread's; ``on_stall="exit"``: a stall ends the process (its
    stall told first), so that a launcher (torchrun, ``nbmonitor-watcher run``, SLURM) restarts it.
    """
    return Run(
        name=name,
        repo=repo,
        expect_next_in=eta,
        grace=grace,
        total=total,
        group=group,
        rank=rank,
        world_size=world_size,
        mode=mode,
        usage=usage,
        logs=logs,
        stacks=stacks,
        on_stall=on_stall,
    )


def track(
    iterable: Iterable[T],
    eta: float | None = None,
    name: str | None = None,
    total: int | None = None,
    grace: float | None = None,
    repo: Repo | str | os.PathLike[str] | None = None,
) -> Iterator[T]:
    """Yield the items of ``iterable``, each one counted as progress, like ``tqdm(iterable)``.

    Inside a ``watch()`` block (or a ``%%watch`` cell) the items count for that
    run. Elsewhere the loop is a run of its own that finishes when the loop
    does; ``eta`` is the most seconds one item may take.
    """
    outer = current_run()
    if outer is not None and name is None and repo is None:
        if eta is not None:
            outer.report_progress(expect_next_in=eta)
        return outer.track(iterable, total=total)
    if name is None and repo is None and _board.worker() is not None:
        return _worker_track(iterable, None)  # a worker of a block in its parent: counts there
    run = Run(name=name, repo=repo, expect_next_in=eta, grace=grace, total=total)
    return run._start_track(iterable, total, owns=True)  # noqa: SLF001  # this module's Run


def current_run() -> Run | None:
    """The run that progress made here counts for: the innermost open ``watch()`` block or
    ``%%watch`` cell of this thread (or asyncio task); in a thread with none of its own, the
    block it was started in. None outside any: a thread left running by an earlier cell counts
    for no later one."""
    blocks = _blocks.get()
    return blocks[-1] if blocks else _adopted()


def checkpoint(step: int | None = None, **options: Any) -> contextlib.AbstractContextManager[pathlib.Path]:
    """``run.checkpoint(...)`` of the current run (the innermost ``watch()`` block or
    ``%%watch`` cell); ``NbmonitorError`` when none is open."""
    run = current_run()
    if run is None:
        raise NbmonitorError(
            "nbmonitor.checkpoint() needs a run: call it inside a watch() block or a %%watch cell"
        )
    return run.checkpoint(step, **options)


def latest_checkpoint(name: str | None = None) -> Any:
    """The newest complete checkpoint of the current run's job (or, outside any run, of the job
    a run named ``name`` from this script or notebook works for), or None: the first attempt.
    ``ckpt = nbmonitor.latest_checkpoint(); start = ckpt.step + 1 if ckpt else 0``."""
    from . import checkpoints

    run = current_run()
    if run is not None and name is None:
        return run.latest_checkpoint()
    where = origin()
    return checkpoints.latest(Repo(), checkpoints.job_of(name or default_name(where), where))


def mark(label: str, value: float | int | str | None = None) -> None:
    """Put a labelled moment on the current run's usage history: ``nbmonitor.mark("eval")``,
    ``nbmonitor.mark("epoch", 3)`` (see ``Run.mark``); does nothing outside a run."""
    _check_mark(label, value)
    run = current_run()
    if run is not None:
        run.mark(label, value)


def _check_mark(label: object, value: object) -> None:
    if not isinstance(label, str):
        raise TypeError(f"a mark's label must be a string, got {type(label).__name__}")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | str)):
        raise TypeError(f"a mark's value must be a number, a string or None, got {type(value).__name__}")


def report_progress(expect_next_in: float | None = None, step: int | None = None) -> None:
    """Report progress of the current run (see ``current_run()``); does nothing outside one, so
    the same code runs monitored or not."""
    blocks = _blocks.get()
    run = blocks[-1] if blocks else _adopted() if _open_blocks else None
    if run is not None:
        run.report_progress(expect_next_in, step)
    elif expect_next_in is None and step is None:
        _board.beat()  # a multiprocessing worker of a block in its parent, or nothing
    else:
        worker = _board.worker()
        if worker is not None:
            worker.report(*_checked(expect_next_in, step))


def _adopted() -> Run | None:
    """The newest open block this thread did not predate, remembered until a block opens or closes."""
    cached = _adoption.__dict__
    generation = _generation
    if cached.get("generation") == generation:
        run: Run | None = cached["run"]
        return run
    me = threading.current_thread()
    with _open_lock:
        candidates = list(_open_blocks)
    run = next((r for r in reversed(candidates) if me not in r._predates), None)  # noqa: SLF001  # same
    cached["generation"], cached["run"] = generation, run
    return run


class _WorkerRun(Run):
    """A run of the parent process that a forked worker inherited (``with watch() as run`` and a
    Pool): what the worker reports on it goes to the parent's board, and counts there."""

    __slots__ = ()

    def report_progress(self, expect_next_in: float | None = None, step: int | None = None) -> None:
        if expect_next_in is None and step is None:
            _board.beat(self._id)
            return
        worker = _board.worker(self._id)
        if worker is not None:
            worker.report(*_checked(expect_next_in, step))

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        return _worker_track(iterable, self._id)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def end(self, status: str, exc: BaseException | None = None, error: ErrorInfo | None = None) -> None:
        return None  # the parent's to end

    def tick(self, now_wall: float, now_mono: float, force: bool = False) -> bool:
        return True


def _worker_track(iterable: Iterable[T], run_id: str | None) -> Iterator[T]:
    """The items of ``iterable``, each counted on this worker's slot once the next is asked for."""
    worker = _board.worker(run_id)
    if worker is None:
        yield from iterable
        return
    for item in iterable:
        yield item
        worker.advance(1)


def _checked(expect_next_in: float | None, step: int | None) -> tuple[float | None, int | None]:
    return _duration("expect_next_in", expect_next_in, zero_ok=False), _count("step", step)


# -- the board: workers' progress counted for this process's blocks ----------------------


_collector: _workers.Collector[Run] | None = None


def _blocks_changed() -> None:
    """Tell this process's workers (on its board) how many blocks are open and which is the
    newest; the first block makes the board, and has the writer read it every tick."""
    global _collector
    if not _open_blocks and _collector is None:
        return
    board = _board.leader_board()
    if board is None:
        return
    newest = _open_blocks[-1] if _open_blocks else None
    board.blocks(len(_open_blocks), newest.id if newest else None, newest.name if newest else "")
    if _collector is None:
        from . import _workers  # here: a process with no block never needs it

        _collector = _workers.Collector(board, _open_runs, _newest_block, _crew_of, _promise)
        _writer.get().before_tick.append(_collector)


def _open_runs() -> dict[str, Run]:
    return {run.id: run for run in _writer.get().runs() if isinstance(run, Run)}


def _newest_block() -> Run | None:
    with _open_lock:
        return _open_blocks[-1] if _open_blocks else None


def _crew_of(run: Run) -> _workers.Crew:
    from . import _workers

    if run._crew is None:  # noqa: SLF001  # this module's Run
        run._crew = _workers.Crew()  # noqa: SLF001
    return run._crew  # noqa: SLF001


def _promise(run: Run, eta: float) -> None:
    run._eta = eta  # noqa: SLF001  # a worker's promise is the run's


def _inherited(runs: list[_writer.Written]) -> None:
    """In a forked child: the parent's runs report to the parent's board from now on."""
    global _collector, _open_lock
    _collector = None
    _open_lock = threading.Lock()  # another thread of the parent may have held it at the fork
    for run in {*_open_blocks, *runs}:
        if type(run) is Run:
            run.__class__ = _WorkerRun
    capture = _capture.current()
    if capture is not None:
        # What the worker prints goes on into the tails of the runs it inherited.
        kept = [(r.repo, r.id) for r in runs if isinstance(r, Run) and r._log is not None]  # noqa: SLF001
        capture.in_child(kept)


_writer.at_fork_child.append(_inherited)


# -- membership, heartbeat and where a member waits ---------------------------------------

#: Seconds between rewrites of an unchanged run file, a sign of life for other hosts' readers.
HEARTBEAT = 10.0


@functools.cache
def _record_usage(writer: _writer.Writer) -> None:
    """Sample this process's tree for its runs that record usage (once per writer)."""
    if not any(isinstance(hook, _recorder.Recorder) for hook in writer.before_tick):
        writer.before_tick.append(_recorder.Recorder(writer.runs, _own_label))


@functools.cache
def _keep_logs(writer: _writer.Writer) -> _capture.Capture:
    """This process's capture of its output, drained by the writer every tick."""
    capture = _capture.get()
    last = [-math.inf]

    def drain(now_mono: float) -> None:
        # Once a second: a tail is written no more often, and a burst of output is cut to
        # its last lines before any of it is turned into lines.
        if now_mono - last[0] >= _capture.WRITE_EVERY:
            last[0] = now_mono
            capture.drain()

    writer.before_tick.append(drain)
    return capture


def _member_label(group: GroupField | None) -> str | None:
    """What a group member's log lines say of it: its rank (a run of its own says nothing)."""
    return f"rank {group.rank}" if group is not None and group.rank is not None else None


def _own_label(run: Any) -> str:
    """What a run's own process is called on its plot: its rank in a group, else "main"."""
    group = run.group
    if group is not None and group.rank is not None:
        return f"rank {group.rank}"
    return "kernel" if sys.modules.get("ipykernel") is not None and "ipykernel" in sys.argv[0] else "main"


def _heartbeat() -> float:
    """The heartbeat, from ``NBMONITOR_HEARTBEAT`` if set (said once if it is no good)."""
    text = os.environ.get("NBMONITOR_HEARTBEAT")
    if text is None:
        return HEARTBEAT
    try:
        return _values.seconds("NBMONITOR_HEARTBEAT", float(text), within=(0.1, 3600.0))
    except ValueError as e:
        _writer.log.warning("nbmonitor: %s; the heartbeat is %g s", e, HEARTBEAT)
        return HEARTBEAT


def _membership(
    group: str | None, rank: int | None, world_size: int | None, mode: membership.Mode | None
) -> GroupField | None:
    """The group a new run is a member of: the one given, else its launcher's, else none."""
    from . import membership  # here: only runs made need it, not the import of nbmonitor

    if mode is not None and mode not in membership.MODES:
        raise ValueError(f"mode must be one of {', '.join(membership.MODES)}, got {mode!r}")
    if group is not None:
        return membership.manual(group, rank, world_size, mode or "lockstep")
    if rank is not None or world_size is not None:
        raise ValueError("rank and world_size need a group: Run(group='name', rank=0, world_size=2)")
    found = _launched()
    if found is not None and mode is not None:
        found = dataclasses.replace(found, mode=mode)
    return found


_launch_cache: dict[int, GroupField | None] = {}


def _launched() -> GroupField | None:
    """The group this process's launcher put it in, read once per process (a bad variable is
    said once). A notebook's kernel is never a rank, whatever it inherited."""
    pid = os.getpid()
    if pid not in _launch_cache:
        from . import membership

        found, warning = (None, None) if kernel_id() else membership.from_environment(os.environ)
        if warning:
            _writer.log.warning("%s", warning)
        _launch_cache[pid] = found
    return _launch_cache[pid]


def origin() -> Origin:
    """Where this process's runs come from: a notebook, a script, or an interactive session."""
    shell = _ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        path = shell.user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME") or None
        return Origin("notebook", path=path, cell=cell_number(shell), kernel_id=kernel_id())
    if shell is not None:
        return Origin("interactive")
    argv = sys.argv
    if argv and argv[0]:
        path = argv[0] if argv[0] in ("-c", "-m") else os.path.abspath(argv[0])
        return Origin("script", path=path, argv=tuple(argv[1:]))
    return Origin("interactive")


def cell_number(shell: Any) -> int | None:
    """The running cell's number as its prompt shows it (``In [9]``): IPython's own Out[] count,
    which stays right where ``execution_count`` already moved on to the next cell (IPython 9)."""
    count = getattr(getattr(shell, "displayhook", None), "prompt_count", None)
    if not isinstance(count, int):
        count = getattr(shell, "execution_count", None)
    return count if isinstance(count, int) else None


def _ipython() -> Any:
    # Only if IPython is already imported: importing it here would make every script slow.
    module = sys.modules.get("IPython")
    return module.get_ipython() if module is not None else None


def kernel_id() -> str | None:
    """This Jupyter kernel's id, from its connection file name (kernel-<id>.json)."""
    module = sys.modules.get("ipykernel")
    if module is None:
        return None
    try:
        name = os.path.basename(module.get_connection_file())
    except (AttributeError, RuntimeError):
        return None
    return name.removeprefix("kernel-").removesuffix(".json") or None


def default_name(where: Origin) -> str:
    """A run's name when none is given: the notebook's or script's file name."""
    if where.path and where.path not in ("-c", "-m"):
        return where.path.replace("\\", "/").rsplit("/", 1)[-1]
    if where.kind == "script" and where.argv and where.path == "-m":
        return where.argv[0]
    return "run"


_start_cache: dict[int, tuple[float | None, int | None]] = {}


def _own_start() -> tuple[float | None, int | None]:
    """This process's start, in epoch seconds and in clock ticks since boot (read once per pid)."""
    pid = os.getpid()
    if pid not in _start_cache:
        _start_cache[pid] = (_process.process_start(pid), _process.start_ticks(pid))
    return _start_cache[pid]


_STACKS = ("thread", "all")


def _checkpoints() -> Any:
    from . import checkpoints  # here: only a run that writes its file needs it, not the import

    return checkpoints


def _stacks_option(value: object) -> str:
    """Whose stacks a run keeps when it turns late or stalled: its own thread's ("thread"), or
    every thread's ("all"); by default ``NBMONITOR_STACKS``, else "thread"."""
    chosen = value if value is not None else (os.environ.get("NBMONITOR_STACKS") or "thread")
    if chosen not in _STACKS:
        where = "stacks" if value is not None else "NBMONITOR_STACKS"
        raise ValueError(f"{where} must be 'thread' or 'all', got {str(chosen)[:40]!r}")
    return str(chosen)


def _duration(what: str, value: object, zero_ok: bool) -> float | None:
    return None if value is None else _values.seconds(what, value, zero_ok=zero_ok)


def _count(what: str, value: object) -> int | None:
    return None if value is None else _values.count(what, value)


def _error_info(exc: BaseException) -> ErrorInfo:
    where = None
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        last = frames[-1]
        where = f"{last.filename}:{last.lineno} in {last.name}"
    return ErrorInfo(type(exc).__name__, clip(str(exc)), where)
