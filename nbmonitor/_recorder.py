"""Usage history on the writer thread: the process tree sampled once a second, kept per run.

``Recorder`` is one per process, a ``before_tick`` hook of the writer: at
most once a second, and only while a run of this process records usage, it
reads every process of the tree (nbmonitor.usage) and hands the sample to
each such run's ``RunHistory``. A run's history buffers rows and marks in
memory and is flushed to ``usage/<run id>.jsonl`` by the run's own tick, at
least every ``FLUSH_EVERY`` seconds and when the run ends; an hour in, and
every ``COMPACT_EVERY`` seconds after, the file is rewritten coarser
(nbmonitor.history.coarsen). Nothing here runs on a training loop's thread.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import history
from ._once import Trouble
from .history import GpuReading, Mark, ProcessInfo, Reading, Row
from .record import RunUsage, UsagePeak
from .repo import Repo
from .usage import Sampler, Usage, command_name

__all__ = ["COMPACT_EVERY", "EVERY", "FLUSH_EVERY", "Recorder", "RunHistory"]

log = logging.getLogger("nbmonitor")

EVERY = 1.0  # seconds between samples
FLUSH_EVERY = float(os.environ.get("NBMONITOR_USAGE_FLUSH", "5"))  # most seconds a row waits in memory
COMPACT_EVERY = 600.0  # seconds between rewrites of a history older than its first tier
RECENT = 600  # rows kept in memory for a live plot: ten minutes


@dataclass
class _Peak:
    total: float = 0.0
    own: float = 0.0
    by: str = ""


#: Lines waiting in memory (the repo cannot be written) past which the older rows are merged as a
#: rewrite of the file would: an hour at full resolution, 30-second rows for the day before it...
PENDING_MAX = 2 * 3600


class RunHistory:
    """One run's usage history: recent rows in memory, everything on disk."""

    def __init__(
        self, repo: Repo, run_id: str, name: str, host: str, start_wall: float, start_mono: float
    ) -> None:
        self.repo = repo
        self.run_id = run_id
        self.start_mono = start_mono
        self._header = history.encode_header(run_id, start_wall, host, name)
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._numbers: dict[tuple[int, float], int] = {}
        self.processes: dict[int, ProcessInfo] = {}
        self.recent: deque[Row] = deque(maxlen=RECENT)
        self.marks: list[Mark] = []
        self.gpu_names: dict[int, str] = {}
        self._marks_in: deque[Mark] = deque()  # from any thread; drained on flush
        self._flushed_at = -math.inf
        self._compacted_at = start_mono
        self._peaks = {"cpu": _Peak(), "memory": _Peak(), "gpu_memory": _Peak()}
        #: Why the file cannot be written (``trouble.cause``), said once per cause, as for run files.
        self.trouble = Trouble(log)
        self.latest: Usage | None = None  # the last sample of the tree
        self.samples = 0  # how many so far

    def t(self, now_mono: float) -> float:
        return max(0.0, now_mono - self.start_mono)

    def mark(self, label: str, value: float | int | str | None, now_mono: float, by: str = "user") -> None:
        """A labelled moment; safe from any thread (a deque append), written at the next flush."""
        self._marks_in.append(Mark(self.t(now_mono), history.clip(label, history.LABEL_MAX), value, by))

    def add(
        self, sample: Usage, now_mono: float, own: int, own_name: str, name_of: Callable[[int, float], str]
    ) -> None:
        """One sample of the tree, as a row; process ``own`` is ``own_name``, others ``name_of``."""
        t = self.t(now_mono)
        readings: dict[int, Reading] = {}
        with self._lock:
            for p in sample.each:
                key = (p.pid, p.started)
                number = self._numbers.get(key)
                if number is None:
                    number = self._numbers[key] = len(self._numbers)
                name = history.clip(own_name if p.pid == own else name_of(p.pid, p.started), history.NAME_MAX)
                if number not in self.processes or self.processes[number].name != name:
                    # New, or known better now (a DataLoader worker names itself once started).
                    info = ProcessInfo(
                        number, p.pid, name, self.processes[number].t if number in self.processes else t
                    )
                    self.processes[number] = info
                    self._pending.append(history.encode_process(info))
                readings[number] = Reading(round(p.cpu_percent, 1), p.rss, p.pss, p.gpu_memory)
            for g in sample.gpus:
                if g.index not in self.gpu_names:
                    self.gpu_names[g.index] = g.name
                    self._pending.append(history.encode_gpu_names({g.index: g.name}))
            gpus = tuple(
                GpuReading(g.index, g.utilization, g.memory_used, g.memory_total) for g in sample.gpus
            )
            row = Row(t, 1.0, readings, gpus)
            self.latest, self.samples = sample, self.samples + 1
            self.recent.append(row)
            self._pending.append(history.encode_row(row))
            self._note_peaks(row)

    def _note_peaks(self, row: Row) -> None:
        for resource, value in (
            ("cpu", lambda r: r.cpu),
            ("memory", lambda r: float(r.memory)),
            ("gpu_memory", lambda r: float(r.gpu or 0)),
        ):
            peak = self._peaks[resource]
            peak.total = max(peak.total, sum(value(r) for r in row.processes.values()))
            for number, reading in row.processes.items():
                if value(reading) > peak.own:
                    peak.own, peak.by = value(reading), self.processes[number].name

    def peaks(self) -> dict[str, tuple[float, str, float]]:
        """(highest total, the process with the highest reading, its reading) per resource seen."""
        with self._lock:
            return {k: (p.total, p.by, p.own) for k, p in self._peaks.items() if p.by and p.own > 0}

    def flush(self, now_mono: float, force: bool = False) -> None:
        """Append what waits in memory if it is due (or ``force``); compact when it is time.
        Only the run's tick calls this (one writer per file). An OSError is kept, not raised."""
        if not force and now_mono - self._flushed_at < FLUSH_EVERY:
            return
        marks = []
        while self._marks_in:
            marks.append(self._marks_in.popleft())
        with self._lock:
            self.marks += marks
            lines = self._pending + [history.encode_mark(m) for m in marks]
            self._pending = []
        if not lines and self._flushed_at > -math.inf:
            self._flushed_at = now_mono
            return
        if self._flushed_at == -math.inf:
            lines.insert(0, self._header)
        try:
            self.repo.append_usage(self.run_id, "".join(lines))
        except OSError as e:
            self._failed(e, "the run goes on, and its rows wait in memory for the next try")
            with self._lock:  # kept for the next try, header and all
                self._pending[:0] = lines if self._flushed_at > -math.inf else lines[1:]
                if len(self._pending) > PENDING_MAX:
                    # Coarser with age, as the file would be: bounded however long it waits.
                    self._pending = history.coarsen_lines(["", *self._pending], self.t(now_mono))[1:]
            return
        self.trouble.over("nbmonitor: the usage history of run %s is written again", self.run_id[:8])
        self._flushed_at = now_mono
        t = self.t(now_mono)
        if t > history.TIERS[0][0] and now_mono - self._compacted_at >= COMPACT_EVERY:
            self._compacted_at = now_mono
            self._compact(t)

    def _compact(self, t: float) -> None:
        # Only the rows that are merged are parsed: a week-old history is rewritten in tens of
        # milliseconds, on this thread, between two appends (one writer per file).
        try:
            lines = self.repo.usage_path(self.run_id).read_text(encoding="utf-8", errors="replace")
            self.repo.replace_usage(self.run_id, "".join(history.coarsen_lines(lines.splitlines(True), t)))
        except OSError as e:
            self._failed(e, "appending goes on, and the next rewrite tries again")

    def _failed(self, error: OSError, then: str) -> None:
        cause = error.strerror or str(error)
        message = "nbmonitor: cannot write the usage history of run %s in %s (%s); %s"
        self.trouble.happened(cause, message, self.run_id[:8], self.repo.path, cause, then)

    def snapshot(self) -> history.History:
        """What is in memory (the last ten minutes), as a History, for a live plot."""
        with self._lock:
            out = history.History(self.run_id, 0.0)
            out.processes = dict(self.processes)
            out.rows = list(self.recent)
            out.marks = list(self.marks) + list(self._marks_in)
            out.gpu_names = dict(self.gpu_names)
        return out


class Recorder:
    """This process's sampler, feeding every run that records usage; a writer ``before_tick`` hook."""

    def __init__(self, runs: Callable[[], list[Any]], own_label: Callable[[Any], str]) -> None:
        self._runs = runs
        self._own_label = own_label
        self._sampler: Sampler | None = None
        self._last = -math.inf
        self._names: dict[tuple[int, float], str] = {}

    def __call__(self, now_mono: float) -> None:
        if now_mono - self._last < EVERY:
            return
        recording = [run for run in self._runs() if run.usage_history is not None]
        if not recording:
            return
        self._last = now_mono
        if self._sampler is None:
            self._sampler = Sampler()
        sample = self._sampler.sample(now_mono)
        gpu = sum(g.process_memory or 0 for g in sample.gpus) if sample.gpus else None
        own = os.getpid()
        for run in recording:
            kept: RunHistory = run.usage_history
            kept.add(sample, now_mono, own, self._own_label(run), self.name)
            peaks = tuple(UsagePeak(k, total, by, value) for k, (total, by, value) in kept.peaks().items())
            run.set_usage(RunUsage(round(sample.cpu_percent, 1), sample.rss, gpu, peaks))

    def name(self, pid: int, started: float) -> str:
        """A child process as a person knows it: a torch DataLoader worker by its number, another
        multiprocessing child by its name, anything else by its command."""
        key = (pid, started)
        known = self._names.get(key)
        if known is not None:
            return known
        name, final = _child_name(pid)
        if final:  # a multiprocessing child may yet turn out to be a DataLoader worker: asked again
            self._names[key] = name
        return name


_DATALOADER = "pt_data_worker"  # the name torch gives a DataLoader worker's main thread (its comm)


def _child_name(pid: int) -> tuple[str, bool]:
    """(name, whether it is final)."""
    import psutil

    # multiprocessing's own list of this process's children, read without reaping any (its
    # active_children() would reap them, and a worker's exit signal would be lost to _workers).
    process = sys.modules.get("multiprocessing.process")  # none imported: no such children
    children = [c for c in list(getattr(process, "_children", ())) if getattr(c, "_popen", None) is not None]
    for child in children:
        if child.pid != pid:
            continue
        if _comm(psutil, pid) != _DATALOADER:
            return child.name, False
        # Torch starts a loader's workers in order of their worker id; so are their identities.
        workers = sorted(getattr(c, "_identity", ()) for c in children if _comm(psutil, c.pid) == _DATALOADER)
        number = workers.index(getattr(child, "_identity", ()))
        return f"DataLoader worker {number}", True
    try:
        proc = psutil.Process(pid)
        return command_name(proc.cmdline(), proc.name()), True
    except psutil.Error:
        return f"pid {pid}", True


def _comm(psutil: Any, pid: int | None) -> str:
    try:
        return str(psutil.Process(pid).name()) if pid is not None else ""
    except psutil.Error:
        return ""
