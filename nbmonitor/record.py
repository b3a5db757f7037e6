"""A run's record: the fields of one run file, checked on the way in and out.

The format is a contract shared with the watcher, the lab extension and other
hosts; docs/repo-format.md describes every field. Pure data, no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import _format
from .errors import NewerFormatError

__all__ = [
    "FORMAT",
    "STATUSES",
    "CheckpointField",
    "ErrorInfo",
    "GroupField",
    "Origin",
    "RunRecord",
    "RunUsage",
    "StackFrame",
    "SupervisorField",
    "UsagePeak",
    "WorkerField",
    "is_run_id",
]

#: Version of the run-file format; readers skip files with a newer one.
FORMAT = 1

#: What the owning process itself reports. "late", "stalled" and "crashed" are
#: never written: the rules derive them (see nbmonitor.rules).
STATUSES = ("running", "finished", "failed", "interrupted")

_RUN_ID = re.compile(r"[0-9a-f]{32}")
_MAX_TEXT = 4000


def is_run_id(text: str) -> bool:
    """True for a well-formed run id (32 lowercase hex digits), the only names a run file may have."""
    return _RUN_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a run comes from: a script with its arguments, a notebook cell, or an interactive session."""

    kind: str  # "script", "notebook" or "interactive"
    path: str | None = None
    argv: tuple[str, ...] = ()
    cell: int | None = None
    kernel_id: str | None = None

    def describe(self) -> str:
        """Short human text: ``train.py --lr 3``, ``quickstart.ipynb, cell 4`` or ``interactive``."""
        if self.kind == "notebook":
            where = self.path or "notebook"
            return f"{where}, cell {self.cell}" if self.cell is not None else where
        if self.kind == "script" and self.path:
            return " ".join((_basename(self.path), *self.argv))
        return self.kind


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a run failed: exception type, message, and the line it came from."""

    type: str
    message: str
    where: str | None = None

    def summary(self) -> str:
        """``ValueError: bad shape`` in one line."""
        return f"{self.type}: {self.message}" if self.message else self.type

    @classmethod
    def for_exit(cls, code: object) -> ErrorInfo | None:
        """What ``sys.exit(code)`` says of a run: None for success (``None`` or ``0``), else
        the exit status, and the message when the code is one (Python prints it, exits 1)."""
        if code is None or code == 0:
            return None
        if isinstance(code, int):
            return cls("SystemExit", f"exit status {int(code)}")
        return cls("SystemExit", clip(f"{code} (exit status 1)"))


@dataclass(frozen=True, slots=True)
class UsagePeak:
    """The run's highest use of one resource so far, and the process that held most of it."""

    resource: str  # "cpu" (percent of one core), "memory" or "gpu_memory" (bytes)
    total: float  # the whole tree's highest reading
    process: str  # the process with the highest reading of its own ("DataLoader worker 2")
    process_value: float  # that reading


@dataclass(frozen=True, slots=True)
class RunUsage:
    """The latest resource reading of a run's process tree, and its peaks so far."""

    cpu_percent: float  # 100 = one core
    rss: int  # bytes
    gpu_memory: int | None = None  # bytes on GPUs, when NVML sees any
    peaks: tuple[UsagePeak, ...] = ()


@dataclass(frozen=True, slots=True)
class StackFrame:
    """One frame of a stack: a code location and its source line, never a variable."""

    function: str
    file: str  # the path as Python knows it ("<ipython-input-3-…>" in a kernel)
    line: int
    code: str = ""  # the source line, stripped, clipped

    @property
    def where(self) -> str:
        """``wait_for_batch (data.py:42)``."""
        name = self.file.replace("\\", "/").rsplit("/", 1)[-1]
        return f"{self.function} ({name}:{self.line})"


@dataclass(frozen=True, slots=True)
class ThreadStack:
    """The stack of one thread of a run's process, kept when all threads' stacks were asked for."""

    name: str
    thread_id: int | None
    frames: tuple[StackFrame, ...]


@dataclass(frozen=True, slots=True)
class GroupField:
    """The run is a member of a job's group (nbmonitor.membership): its job, launcher and rank."""

    job: str
    launcher: str  # torchrun, slurm, mpi or manual
    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    mode: str = "lockstep"  # or "sharded"


@dataclass(frozen=True, slots=True)
class SupervisorField:
    """The ``nbmonitor-watcher run`` that restarts the run's job, on the run's host: it, not a
    watcher, reports how an attempt ended while it lives."""

    pid: int
    start_ticks: int | None = None  # its start in clock ticks since boot (Linux), against pid reuse


@dataclass(frozen=True, slots=True)
class CheckpointField:
    """The latest checkpoint of its job that a run saved, or else resumed from."""

    step: int | None
    at: float  # when it was saved (wall clock)
    resumed: bool = False  # True: the run started from it (latest_checkpoint()); False: it saved it


@dataclass(frozen=True, slots=True)
class WorkerField:
    """One multiprocessing worker that reports progress for this run, as the run's process saw it."""

    pid: int
    name: str  # "ForkPoolWorker-2", "DataLoader worker 0", "rank 3"
    progress: int
    step: int | None = None
    rank: int | None = None
    last_progress_mono: float = 0.0  # the run's process's monotonic clock when its count last moved
    state: str = "running"  # running, ended (by itself or by its job), failed, or crashed
    exit: str | None = None  # "killed by SIGKILL", "exit status 1": how it went, as far as is known


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything one run file holds. Times are seconds: ``*_at`` wall clock, ``*_mono`` the
    writer's CLOCK_MONOTONIC, comparable only on the same host and boot."""

    id: str
    name: str
    origin: Origin
    host: str
    pid: int
    process_start: float | None
    boot_id: str | None
    started_at: float
    status: str
    eta: float | None
    grace: float | None
    step: int
    total: int | None
    progress: int
    last_progress_at: float
    last_progress_mono: float
    ended_at: float | None = None
    error: ErrorInfo | None = None
    updated_at: float = 0.0
    usage: RunUsage | None = None
    #: Most seconds the file's progress may trail the process's while it keeps its promise (the
    #: writer's resolution); readers add it to every deadline. None: an older writer, which wrote at
    #: most once a second and said nothing (see rules.write_lag).
    write_lag: float | None = None
    #: The process's start in clock ticks since boot (Linux): its identity on a clock that no
    #: wall-clock step moves, compared only within the same ``boot_id``. None elsewhere, or from
    #: older writers (then ``process_start`` is compared).
    process_start_ticks: int | None = None
    #: A member of a job's group (torchrun, SLURM, MPI, or given by hand), or None.
    group: GroupField | None = None
    #: Seconds between the writer's refreshes of the file while nothing changes; a reader on
    #: another host calls the run lost after three missed. None: older writers, never lost.
    heartbeat: float | None = None
    #: The multiprocessing workers that report progress for this run (its ``progress`` counts theirs).
    workers: tuple[WorkerField, ...] = ()
    #: The torch.distributed call (all_reduce, barrier, ...) a group member's thread was in when
    #: its file was written: it waits for the others there.
    waiting: str | None = None
    #: Where the run's thread was when it turned late or stalled (innermost frame first), as the
    #: writer thread of its process saw it; kept after it recovers. Empty: never seen stuck.
    stack: tuple[StackFrame, ...] = ()
    #: "late" or "stalled": which the stack was taken at; ``stack_at`` when (wall clock).
    stack_state: str | None = None
    stack_at: float | None = None
    #: Who took the stack: "process" (its own writer thread) or "py-spy" (a watcher, from outside,
    #: when the process could not say); and, in an event, why no stack could be had.
    stack_from: str = "process"
    stack_error: str | None = None
    #: The native id of the thread that owns the run (what py-spy and the OS call it).
    thread_id: int | None = None
    #: The work it does, the same across attempts (nbmonitor.checkpoints.job_of), and which
    #: attempt it is (``NBMONITOR_RESTART_COUNT``: 0 for the first, 1 after one restart ...).
    job: str | None = None
    attempt: int = 0
    #: torchrun's restarts: how many it allows in all (``--max-restarts``) and which this is (its
    #: attempt, while ``attempt`` is the job's, which ``nbmonitor-watcher run`` may count around
    #: torchrun): an attempt that fails before the last is followed by another. None: no torchrun.
    max_restarts: int | None = None
    restart_count: int = 0
    #: What the run does when it stalls: "report", or "exit" (its process ends for a launcher to
    #: restart it; a supervisor lets it).
    on_stall: str = "report"
    #: The ``nbmonitor-watcher run`` that restarts its job (``NBMONITOR_SUPERVISOR``), or None.
    supervisor: SupervisorField | None = None
    #: The latest checkpoint of its job this run saved, or else resumed from; None: neither yet.
    checkpoint: CheckpointField | None = None
    #: The process's other threads' stacks, taken with ``stack`` when the run asks for all
    #: threads' (``stacks="all"``); empty otherwise.
    threads: tuple[ThreadStack, ...] = ()
    #: Where its records came from over HTTP (the client's address), set by the Jupyter server
    #: that received them (nbmonitor.ingest), never by the run: its process is on another host,
    #: whatever ``host`` says, and is judged by its heartbeat. None: written to the repo directly.
    via: str | None = None
    format: int = field(default=FORMAT)

    @property
    def stuck_in(self) -> str | None:
        """Where its thread is stuck, innermost first, if it was seen stuck since its last
        progress: ``wait_for_batch (data.py:42) ← train (train.py:88)``."""
        if not self.stack or self.stack_at is None or self.stack_at < self.last_progress_at:
            return None
        return " ← ".join(frame.where for frame in self.stack[:_WHERE_FRAMES])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        data = asdict(self)
        data["origin"]["argv"] = list(self.origin.argv)
        data["workers"] = [asdict(w) for w in self.workers]
        data["stack"] = [asdict(f) for f in self.stack]
        data["threads"] = [
            {"name": t.name, "thread_id": t.thread_id, "frames": [asdict(f) for f in t.frames]}
            for t in self.threads
        ]
        if self.usage is not None:
            data["usage"]["peaks"] = [asdict(p) for p in self.usage.peaks]
        return data

    def with_changes(self, **changes: Any) -> RunRecord:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    @property
    def ended(self) -> bool:
        """True once the owner reported an end (finished, failed or interrupted)."""
        return self.status != "running"

    @classmethod
    def from_dict(cls, data: object) -> RunRecord:
        """Validate parsed JSON; raise ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise ValueError(f"field 'format' must be an integer, got {fmt!r}")
        if fmt > FORMAT:
            raise NewerFormatError(
                f"format {fmt} is newer than this nbmonitor understands ({FORMAT}); upgrade nbmonitor"
            )
        if fmt < 1:
            raise ValueError(f"field 'format' must be at least 1, got {fmt}")
        get = _Fields(data)
        run_id = get.text("id")
        if not is_run_id(run_id):
            raise ValueError(f"field 'id' is not a run id: {run_id[:40]!r}")
        status = get.text("status")
        if status not in STATUSES:
            raise ValueError(f"field 'status' must be one of {', '.join(STATUSES)}, got {status!r}")
        return cls(
            id=run_id,
            name=get.text("name"),
            origin=_origin(data.get("origin")),
            host=get.text("host"),
            pid=get.integer("pid"),
            process_start=get.opt_number("process_start"),
            boot_id=get.opt_text("boot_id"),
            started_at=get.number("started_at"),
            status=status,
            eta=get.duration("eta"),
            grace=get.duration("grace", allow_zero=True),
            step=get.integer("step"),
            total=get.opt_integer("total"),
            progress=get.integer("progress"),
            last_progress_at=get.number("last_progress_at"),
            last_progress_mono=get.number("last_progress_mono"),
            ended_at=get.opt_number("ended_at"),
            error=_error(data.get("error")),
            updated_at=get.number("updated_at"),
            usage=_usage(data.get("usage")),
            write_lag=get.duration("write_lag", allow_zero=True),
            process_start_ticks=get.opt_integer("process_start_ticks"),
            group=_group(data.get("group")),
            heartbeat=get.duration("heartbeat"),
            workers=_workers(data.get("workers")),
            waiting=get.opt_text("waiting"),
            stack=_stack(data.get("stack")),
            threads=_threads(data.get("threads")),
            stack_state=_stack_state(get.opt_text("stack_state")),
            stack_at=get.opt_number("stack_at"),
            stack_from=get.opt_text("stack_from") or "process",
            stack_error=get.opt_text("stack_error"),
            thread_id=get.opt_integer("thread_id"),
            job=get.opt_text("job"),
            attempt=get.opt_integer("attempt") or 0,
            max_restarts=get.opt_integer("max_restarts"),
            restart_count=get.opt_integer("restart_count") or 0,
            on_stall=get.opt_text("on_stall") or "report",
            supervisor=_supervisor(data.get("supervisor")),
            checkpoint=_checkpoint(data.get("checkpoint")),
            via=get.opt_text("via"),
            format=fmt,
        )


def clip(text: str) -> str:
    """Bound user text stored in a record, so one huge message cannot bloat every read."""
    return _format.clip(text, _MAX_TEXT)


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


class _Fields:
    """Typed getters over a JSON object, each raising ValueError that names the field."""

    def __init__(self, data: dict[str, Any], within: str = "") -> None:
        self._data = data
        self._within = within  # "origin." for the fields of a nested object, so errors name the path

    def _get(self, name: str) -> object:
        if name not in self._data:
            raise ValueError(f"field {self._within + name!r} is missing")
        return self._data[name]

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise ValueError(f"field {self._within + name!r} must be a string, got {_kind(value)}")
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"field {self._within + name!r} must be a non-negative integer, got {_kind(value)}"
            )
        return value

    def number(self, name: str) -> float:
        value = self._get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"field {self._within + name!r} must be a finite number, got {_kind(value)}")
        return float(value)

    def opt_text(self, name: str) -> str | None:
        return None if self._data.get(name) is None else self.text(name)

    def opt_integer(self, name: str) -> int | None:
        return None if self._data.get(name) is None else self.integer(name)

    def opt_number(self, name: str) -> float | None:
        return None if self._data.get(name) is None else self.number(name)

    def duration(self, name: str, allow_zero: bool = False) -> float | None:
        value = self.opt_number(name)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise ValueError(
                f"field {self._within + name!r} must be {'>= 0' if allow_zero else '> 0'}, got {value}"
            )
        return value


def _kind(value: object) -> str:
    return repr(value)[:40] if isinstance(value, int | float | str | bool) else type(value).__name__


def _origin(data: object) -> Origin:
    if not isinstance(data, dict):
        raise ValueError(f"field 'origin' must be an object, got {_kind(data)}")
    get = _Fields(data, "origin.")
    kind = get.text("kind")
    argv = data.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("field 'origin.argv' must be a list of strings")
    return Origin(
        kind=kind,
        path=get.opt_text("path"),
        argv=tuple(argv),
        cell=get.opt_integer("cell"),
        kernel_id=get.opt_text("kernel_id"),
    )


def _error(data: object) -> ErrorInfo | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"field 'error' must be an object or null, got {_kind(data)}")
    get = _Fields(data, "error.")
    return ErrorInfo(type=get.text("type"), message=get.text("message"), where=get.opt_text("where"))


def _usage(data: object) -> RunUsage | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"field 'usage' must be an object or null, got {_kind(data)}")
    get = _Fields(data, "usage.")
    peaks = data.get("peaks") or []
    if not isinstance(peaks, list):
        raise ValueError(f"field 'usage.peaks' must be a list, got {_kind(peaks)}")
    return RunUsage(
        cpu_percent=get.number("cpu_percent"),
        rss=get.integer("rss"),
        gpu_memory=get.opt_integer("gpu_memory"),
        peaks=tuple(_peak(p) for p in peaks),
    )


def _peak(data: object) -> UsagePeak:
    if not isinstance(data, dict):
        raise ValueError(f"field 'usage.peaks' must hold objects, got {_kind(data)}")
    get = _Fields(data, "usage.peaks.")
    return UsagePeak(
        get.text("resource"), get.number("total"), get.text("process"), get.number("process_value")
    )


_LAUNCHERS = ("torchrun", "slurm", "mpi", "manual")
_MODES = ("lockstep", "sharded")
_WORKER_STATES = ("running", "ended", "failed", "crashed")
_MAX_WORKERS = 1024


def _group(data: object) -> GroupField | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"field 'group' must be an object or null, got {_kind(data)}")
    get = _Fields(data, "group.")
    launcher, mode = get.text("launcher"), data.get("mode", "lockstep")
    if launcher not in _LAUNCHERS:
        raise ValueError(
            f"field 'group.launcher' must be one of {', '.join(_LAUNCHERS)}, got {launcher[:40]!r}"
        )
    if mode not in _MODES:
        raise ValueError(f"field 'group.mode' must be one of {', '.join(_MODES)}, got {_kind(mode)}")
    return GroupField(
        job=get.text("job"),
        launcher=launcher,
        rank=get.opt_integer("rank"),
        world_size=get.opt_integer("world_size"),
        local_rank=get.opt_integer("local_rank"),
        mode=mode,
    )


def _supervisor(data: object) -> SupervisorField | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"field 'supervisor' must be an object or null, got {_kind(data)}")
    get = _Fields(data, "supervisor.")
    return SupervisorField(pid=get.integer("pid"), start_ticks=get.opt_integer("start_ticks"))


def _checkpoint(data: object) -> CheckpointField | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"field 'checkpoint' must be an object or null, got {_kind(data)}")
    get = _Fields(data, "checkpoint.")
    resumed = data.get("resumed", False)
    if not isinstance(resumed, bool):
        raise ValueError(f"field 'checkpoint.resumed' must be true or false, got {_kind(resumed)}")
    return CheckpointField(step=get.opt_integer("step"), at=get.number("at"), resumed=resumed)


_MAX_FRAMES = 32
_WHERE_FRAMES = 3  # frames named in one line of an alarm
_STACK_STATES = ("late", "stalled")


_MAX_THREADS = 64


def _threads(data: object) -> tuple[ThreadStack, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or len(data) > _MAX_THREADS:
        raise ValueError(f"field 'threads' must be a list of at most {_MAX_THREADS} objects")
    found = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"field 'threads.{i}' must be an object, got {_kind(item)}")
        get = _Fields(item, f"threads.{i}.")
        frames = _stack(item.get("frames"), f"threads.{i}.frames")
        found.append(ThreadStack(get.text("name"), get.opt_integer("thread_id"), frames))
    return tuple(found)


def _stack(data: object, where: str = "stack") -> tuple[StackFrame, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or len(data) > _MAX_FRAMES:
        raise ValueError(f"field {where!r} must be a list of at most {_MAX_FRAMES} objects")
    found = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"field '{where}.{i}' must be an object, got {_kind(item)}")
        get = _Fields(item, f"{where}.{i}.")
        found.append(
            StackFrame(get.text("function"), get.text("file"), get.integer("line"), get.text("code"))
        )
    return tuple(found)


def _stack_state(value: str | None) -> str | None:
    if value is not None and value not in _STACK_STATES:
        raise ValueError(f"field 'stack_state' must be one of {', '.join(_STACK_STATES)} or null")
    return value


def _workers(data: object) -> tuple[WorkerField, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or len(data) > _MAX_WORKERS:
        raise ValueError(f"field 'workers' must be a list of at most {_MAX_WORKERS} objects")
    found = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"field 'workers.{i}' must be an object, got {_kind(item)}")
        get = _Fields(item, f"workers.{i}.")
        state = get.text("state")
        if state not in _WORKER_STATES:
            raise ValueError(f"field 'workers.{i}.state' must be one of {', '.join(_WORKER_STATES)}")
        found.append(
            WorkerField(
                pid=get.integer("pid"),
                name=get.text("name"),
                progress=get.integer("progress"),
                step=get.opt_integer("step"),
                rank=get.opt_integer("rank"),
                last_progress_mono=get.number("last_progress_mono"),
                state=state,
                exit=get.opt_text("exit"),
            )
        )
    return tuple(found)
