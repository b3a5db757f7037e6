"""A run's usage history: per-process readings over time, marks, and their file format.

Pure: rows in, lines out, and back. The file (``usage/<run id>.jsonl``,
docs/repo-format.md) is JSON Lines, appended by the run's own writer thread
at least every few seconds, so a crash or an OOM kill loses at most that.
It stays small by growing coarser with age (``TIERS``): each row covers a
span of seconds, and a row of more than one second keeps averages and peaks.
``coarsen`` merges rows into the span their age asks for; the writer
rewrites the whole file with it now and then.

A reader cuts the file at any bad line: a line that is not JSON, not a
known kind or has a bad field is skipped and counted (``History.skipped``),
so a torn last line after a kill costs one row and nothing more.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

from . import _format

__all__ = [
    "FORMAT",
    "TIERS",
    "GpuReading",
    "History",
    "Mark",
    "Peak",
    "ProcessInfo",
    "Reading",
    "Row",
    "coarsen",
    "encode_header",
    "encode_mark",
    "encode_process",
    "encode_row",
    "parse",
    "peaks",
]

FORMAT = 1
#: (age in seconds below which, span of a row in seconds): full resolution for the last hour,
#: 30 seconds for the day, 5 minutes for the week, 30 minutes after that: a plot is some 330
#: columns wide, so a day's plot needs no finer rows. A week of 16 processes stays within a
#: few MB (benchmarks/ measures it).
TIERS: tuple[tuple[float, float], ...] = (
    (3600.0, 1.0),
    (86400.0, 30.0),
    (7 * 86400.0, 300.0),
    (math.inf, 1800.0),
)
LABEL_MAX = 80  # characters of a mark's label kept
NAME_MAX = 60  # characters of a process's name kept


@dataclass(slots=True)  # not frozen: a week's history makes 130,000 of them, three times faster
class Reading:
    """One process over one row's span: averages, and the peaks when the span is longer than one
    reading (else the peaks are the values). Never changed once made."""

    cpu: float  # percent of one core
    rss: int  # bytes
    pss: int | None  # bytes, proportional set size (shared pages split between their users)
    gpu: int | None  # bytes of GPU memory, all devices; None: not known
    cpu_peak: float | None = None
    memory_peak: int | None = None  # of pss where known, else rss
    gpu_peak: int | None = None

    @property
    def memory(self) -> int:
        """What a stacked plot adds up: PSS where known (shared memory counted once), else RSS."""
        return self.pss if self.pss is not None else self.rss

    @property
    def peak_cpu(self) -> float:
        return self.cpu if self.cpu_peak is None else self.cpu_peak

    @property
    def peak_memory(self) -> int:
        return self.memory if self.memory_peak is None else self.memory_peak

    @property
    def peak_gpu(self) -> int | None:
        return self.gpu if self.gpu_peak is None else self.gpu_peak


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU over one row's span."""

    index: int
    utilization: float  # percent
    used: int  # bytes, whole device
    total: int  # bytes
    utilization_peak: float | None = None
    used_peak: int | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """Readings of every process over ``span`` seconds ending at ``t`` (seconds since the start)."""

    t: float
    span: float
    processes: dict[int, Reading]  # by process number (ProcessInfo.number)
    gpus: tuple[GpuReading, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process of the run's tree, numbered in order of first sight (pids can come back)."""

    number: int
    pid: int
    name: str  # "main", "rank 3", "DataLoader worker 2", "python prep.py"
    t: float  # first seen, seconds since the start


@dataclass(frozen=True, slots=True)
class Mark:
    """A labelled moment of the run: ``mark("eval", 3)``, or one nbmonitor makes (start, end,
    stalled, recovered)."""

    t: float  # seconds since the start
    label: str
    value: float | int | str | None = None
    by: str = "user"  # "user" or "nbmonitor"

    @property
    def text(self) -> str:
        return self.label if self.value is None else f"{self.label} {self.value}"


@dataclass
class History:
    """A history file, read: what it says, and how many lines could not be read."""

    run_id: str
    start: float  # wall time of t = 0, on the writing host's clock
    host: str = ""
    name: str = ""
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    gpu_names: dict[int, str] = field(default_factory=dict)
    skipped: int = 0  # bad lines left out
    first_bad: int | None = None  # the number of the first bad line (1-based)

    @property
    def duration(self) -> float:
        return max((r.t for r in self.rows), default=0.0)


@dataclass(frozen=True, slots=True)
class Peak:
    """The highest total of one resource, when it was, and the process that held most of it."""

    value: float
    t: float
    process: str
    process_value: float  # that process's own peak


# -- writing ------------------------------------------------------------------------------


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"


def encode_header(run_id: str, start: float, host: str, name: str) -> str:
    return _dump(
        {
            "format": FORMAT,
            "kind": "nbmonitor-usage",
            "run": run_id,
            "start": start,
            "host": host,
            "name": clip(name, NAME_MAX),
        }
    )


def encode_process(info: ProcessInfo) -> str:
    return _dump(
        {"proc": info.number, "pid": info.pid, "name": clip(info.name, NAME_MAX), "t": _time(info.t)}
    )


def encode_mark(mark: Mark) -> str:
    value = mark.value
    if isinstance(value, str):
        value = clip(value, LABEL_MAX)
    elif isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    return _dump({"mark": clip(mark.label, LABEL_MAX), "value": value, "t": _time(mark.t), "by": mark.by})


def encode_gpu_names(names: dict[int, str]) -> str:
    return _dump({"gpus": {str(i): clip(n, NAME_MAX) for i, n in names.items()}})


def encode_row(row: Row) -> str:
    """``{"t":..,"d":..,"p":{"<n>":[cpu,rss,pss,gpu],..},"g":[[util,used,total],..]}``; a row of more
    than a second adds ``"k"`` (peaks per process: cpu, memory, gpu) and GPU peaks."""
    data: dict[str, Any] = {"t": _time(row.t), "d": row.span}
    data["p"] = {str(n): [round(r.cpu, 1), r.rss, r.pss, r.gpu] for n, r in row.processes.items()}
    if row.span > 1:
        data["k"] = {
            str(n): [round(r.peak_cpu, 1), r.peak_memory, r.peak_gpu] for n, r in row.processes.items()
        }
    if row.gpus:
        data["g"] = [[g.index, round(g.utilization, 1), g.used, g.total] for g in row.gpus]
        if row.span > 1:
            data["gk"] = [
                [g.index, round(g.utilization_peak or g.utilization, 1), g.used_peak or g.used]
                for g in row.gpus
            ]
    return _dump(data)


def _time(t: float) -> float:
    return round(t, 2)


def clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters: control characters and line breaks become
    spaces, so a label is never a second line of the file or a log."""
    return _format.clip(_format.one_line(str(text)), limit)


# -- coarsening ---------------------------------------------------------------------------


def span_for(t: float, now: float) -> float:
    """The span a row ending at ``t`` is kept at, at ``now``: the coarsest tier whose bucket
    around ``t`` has aged, all of it, past the tier's age. Only whole buckets are merged, so a
    bucket is merged once and no second row ever shares it."""
    for (older_than, _), (_, span) in reversed(list(pairwise(TIERS))):
        end = (math.floor((t - 1e-9) / span) + 1) * span
        if now - end >= older_than:
            return span
    return TIERS[0][1]


def coarsen(rows: Sequence[Row], now: float) -> list[Row]:
    """``rows`` (in time order) merged into the spans their age asks for at ``now`` (seconds
    since the start): the rows of one bucket of ``span`` seconds become one row with their
    averages (weighted by span) and peaks. Rows already coarse enough are kept as they are."""
    out: list[Row] = []
    bucket: list[Row] = []
    key: tuple[int, float] | None = None
    for row in rows:
        span = span_for(row.t, now)
        this = (math.floor((row.t - 1e-9) / span), span)
        if key is not None and this != key:
            out.append(merge(bucket, key[1]))
            bucket = []
        bucket.append(row)
        key = this
    if bucket and key is not None:
        out.append(merge(bucket, key[1]))
    return out


_ROW_START = re.compile(r'\{"t":([-0-9.eE+]+),"d":([-0-9.eE+]+),')


def coarsen_lines(lines: Sequence[str], now: float) -> list[str]:
    """A history file's lines, coarsened as ``coarsen`` does, parsing only the rows it merges:
    the header, then every other whole line as it was (processes, GPU names, marks), then the
    rows in time order. A row's time and span are read from the start of its line, where
    ``encode_row`` puts them; a line that is not whole (no newline) is dropped."""
    if not lines:
        return []
    others: list[str] = []
    rows: list[tuple[float, float, str]] = []
    for line in lines[1:]:
        found = _ROW_START.match(line)
        if found is not None and line.endswith("\n"):
            rows.append((float(found.group(1)), float(found.group(2)), line))
        elif line.endswith("\n") and line.strip():
            others.append(line)
    rows.sort(key=lambda r: r[0])
    out = [lines[0], *others]
    bucket: list[tuple[float, float, str]] = []
    key: tuple[int, float] | None = None

    def close() -> None:
        if len(bucket) == 1:
            out.append(bucket[0][2])
        elif bucket and key is not None:
            try:
                merged = merge(
                    [_row(json.loads(line, parse_constant=_no_constants)) for *_, line in bucket], key[1]
                )
            except (ValueError, TypeError, KeyError, AttributeError):
                out.extend(line for *_, line in bucket)  # left as they were; readers skip bad ones
                return
            out.append(encode_row(merged))

    for t, _span, line in rows:
        span = span_for(t, now)
        this = (math.floor((t - 1e-9) / span), span)
        if key is not None and this != key:
            close()
            bucket = []
        bucket.append((t, _span, line))
        key = this
    close()
    return out


def merge(rows: Sequence[Row], span: float) -> Row:
    """One row for ``rows`` (of one bucket of ``span`` seconds): averages weighted by each row's
    span, peaks the highest seen. Its span is the seconds the rows cover, at most ``span`` (a
    run's first bucket may be covered in part)."""
    if len(rows) == 1:
        return rows[0]
    total = sum(r.span for r in rows) or 1.0
    processes: dict[int, Reading] = {}
    for number in sorted({n for r in rows for n in r.processes}):
        readings = [(r.span, r.processes[number]) for r in rows if number in r.processes]
        weight = sum(w for w, _ in readings) or 1.0
        pss_known = all(x.pss is not None for _, x in readings)
        gpu_known = [x.gpu for _, x in readings if x.gpu is not None]
        # A process present for part of the span contributes its share of the whole span.
        share = weight / total
        processes[number] = Reading(
            cpu=sum(w * x.cpu for w, x in readings) / weight * share,
            rss=round(sum(w * x.rss for w, x in readings) / weight * share),
            pss=round(sum(w * (x.pss or 0) for w, x in readings) / weight * share) if pss_known else None,
            gpu=round(sum(gpu_known) / len(gpu_known) * share) if gpu_known else None,
            cpu_peak=max(x.peak_cpu for _, x in readings),
            memory_peak=max(x.peak_memory for _, x in readings),
            gpu_peak=max((x.peak_gpu or 0 for _, x in readings), default=0) if gpu_known else None,
        )
    gpus: list[GpuReading] = []
    for index in sorted({g.index for r in rows for g in r.gpus}):
        seen = [(r.span, g) for r in rows for g in r.gpus if g.index == index]
        weight = sum(w for w, _ in seen) or 1.0
        gpus.append(
            GpuReading(
                index,
                sum(w * g.utilization for w, g in seen) / weight,
                round(sum(w * g.used for w, g in seen) / weight),
                max(g.total for _, g in seen),
                max(g.utilization_peak or g.utilization for _, g in seen),
                max(g.used_peak or g.used for _, g in seen),
            )
        )
    return Row(max(r.t for r in rows), min(span, total), processes, tuple(gpus))


# -- reading --------------------------------------------------------------------------------


class _Bad(ValueError):
    pass


def parse(lines: Iterable[str], run_id: str = "") -> History:
    """A history from the lines of its file; bad lines are skipped and counted. Raises
    ValueError when the first line is not a history header of a format this reads."""
    numbered = enumerate(lines, 1)
    history: History | None = None
    for _, line in numbered:
        if not line.strip():
            continue
        try:
            head = json.loads(line)
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("kind") != "nbmonitor-usage":
            raise ValueError("not a usage history (its first line is no header)")
        version = head.get("format")
        if not isinstance(version, int) or version > FORMAT:
            raise ValueError(f"usage history of format {version!r}; this nbmonitor reads {FORMAT}")
        try:
            start = _t(head.get("start"))
            host, name = _text(head.get("host")), _text(head.get("name"))
        except _Bad:
            raise ValueError("usage history header without a start time, host or name") from None
        history = History(str(head.get("run") or run_id), start, host, name)
        break
    if history is None:
        raise ValueError("empty usage history")
    for number, line in numbered:
        if not line.strip():
            continue
        try:
            _read_line(history, line)
        except (ValueError, TypeError, KeyError, AttributeError):
            history.skipped += 1
            if history.first_bad is None:
                history.first_bad = number
    history.rows.sort(key=lambda r: r.t)
    history.marks.sort(key=lambda m: m.t)
    return history


def _read_line(history: History, line: str) -> None:
    data = json.loads(line, parse_constant=_no_constants)
    if not isinstance(data, dict):
        raise _Bad("not an object")
    if "t" in data and "p" in data:
        history.rows.append(_row(data))
    elif "proc" in data:
        number = data["proc"]
        if not isinstance(number, int) or not isinstance(data["pid"], int):
            raise _Bad("bad process")
        history.processes[number] = ProcessInfo(
            number, data["pid"], clip(_text(data["name"]), NAME_MAX), _t(data["t"])
        )
    elif "mark" in data:
        value = data.get("value")
        if (value is not None and not isinstance(value, int | float | str)) or isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            value = clip(value, LABEL_MAX)
        by = "nbmonitor" if data.get("by") == "nbmonitor" else "user"
        history.marks.append(Mark(_t(data["t"]), clip(_text(data["mark"]), LABEL_MAX), value, by))
    elif "gpus" in data:
        names = data["gpus"]
        if not isinstance(names, dict):
            raise _Bad("bad gpu names")
        history.gpu_names.update({int(i): clip(_text(n), NAME_MAX) for i, n in names.items()})
    else:
        raise _Bad("unknown line")


_NUMBER = (int, float)  # by exact type: a bool is no reading (json.loads never gives NaN here)


def _count(value: object) -> bool:
    """A byte count: a non-negative integer (an exact type check, fast: run for every reading)."""
    return type(value) is int and value >= 0


def _share(value: object) -> bool:
    return type(value) in _NUMBER and value >= 0  # type: ignore[operator]  # checked


def _row(data: dict[str, Any]) -> Row:
    span = data.get("d", 1.0)
    if not _share(span) or span == 0:
        raise _Bad("bad span")
    readings, peaks = data["p"], data.get("k") or {}
    if type(readings) is not dict or type(peaks) is not dict:
        raise _Bad("bad readings")
    processes: dict[int, Reading] = {}
    for key, values in readings.items():
        cpu, rss, pss, gpu = values
        if not (
            _share(cpu) and _count(rss) and (pss is None or _count(pss)) and (gpu is None or _count(gpu))
        ):
            raise _Bad("bad reading")
        peak = peaks.get(key)
        if peak is None:
            processes[int(key)] = Reading(float(cpu), rss, pss, gpu)
            continue
        cpu_peak, memory_peak, gpu_peak = peak
        if not (_share(cpu_peak) and _count(memory_peak) and (gpu_peak is None or _count(gpu_peak))):
            raise _Bad("bad peak")
        processes[int(key)] = Reading(float(cpu), rss, pss, gpu, float(cpu_peak), memory_peak, gpu_peak)
    gpu_peaks = {int(g[0]): g for g in data.get("gk") or ()}
    gpus = []
    for index, utilization, used, total in data.get("g") or ():
        peak = gpu_peaks.get(int(index))
        gpus.append(
            GpuReading(
                int(index),
                _nonneg(utilization),
                int(_nonneg(used)),
                int(_nonneg(total)),
                None if peak is None else _nonneg(peak[1]),
                None if peak is None else int(_nonneg(peak[2])),
            )
        )
    return Row(_t(data["t"]), float(span), processes, tuple(gpus))


def _no_constants(name: str) -> None:
    raise _Bad(f"{name} is no reading")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _t(value: object) -> float:
    if not _number(value):
        raise _Bad("bad time")
    return float(value)  # type: ignore[arg-type]  # checked


def _nonneg(value: object) -> float:
    if not _number(value) or value < 0:  # type: ignore[operator]  # checked
        raise _Bad("bad reading")
    return float(value)  # type: ignore[arg-type]  # checked


def _maybe_int(value: object) -> int | None:
    return None if value is None else int(_nonneg(value))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad("not text") if value is not None else _Bad("missing text")
    return value


# -- summaries ---------------------------------------------------------------------------


def peaks(history: History) -> dict[str, Peak]:
    """For "cpu", "memory" and "gpu_memory": the highest total of the tree, and the process with
    the highest peak of its own (the one that held most of it). Absent when never read."""
    found: dict[str, Peak] = {}
    getters: dict[str, tuple[Callable[[Reading], float], Callable[[Reading], float]]] = {
        "cpu": (lambda r: r.cpu, lambda r: r.peak_cpu),
        "memory": (lambda r: r.memory, lambda r: r.peak_memory),
        "gpu_memory": (lambda r: r.gpu or 0, lambda r: r.peak_gpu or 0),
    }
    for resource, (value, peak) in getters.items():
        best: tuple[float, float] | None = None
        top: tuple[float, int] | None = None
        for row in history.rows:
            if not row.processes:
                continue
            total = sum(value(r) for r in row.processes.values())
            if best is None or total > best[0]:
                best = (total, row.t)
            for number, reading in row.processes.items():
                own = peak(reading)
                if top is None or own > top[0]:
                    top = (own, number)
        if best is None or top is None or (resource == "gpu_memory" and top[0] <= 0):
            continue
        info = history.processes.get(top[1])
        found[resource] = Peak(best[0], best[1], info.name if info else f"process {top[1]}", top[0])
    return found


def combine(histories: Sequence[tuple[str, History]]) -> History:
    """Several runs' histories (a group's members) as one: each member's processes prefixed by
    its label ("rank 3"), times on the first member's clock by each file's start."""
    if not histories:
        raise ValueError("nothing to combine")
    base = min(h.start for _, h in histories)
    out = History(histories[0][1].run_id, base, name=histories[0][1].name)
    for offset, (label, history) in enumerate(histories):
        shift = history.start - base
        renumber = {n: offset * 10_000 + n for n in history.processes}
        for n, info in history.processes.items():
            name = info.name if info.name.startswith(label) else f"{label} {info.name}"
            out.processes[renumber[n]] = replace(info, number=renumber[n], name=name, t=info.t + shift)
        for row in history.rows:
            moved = {renumber.get(n, offset * 10_000 + n): r for n, r in row.processes.items()}
            out.rows.append(Row(row.t + shift, row.span, moved, row.gpus if offset == 0 else ()))
        out.marks += [replace(m, t=m.t + shift, label=f"{label}: {m.label}") for m in history.marks]
        out.skipped += history.skipped
    out.rows = _merged_in_time(out.rows)
    out.marks.sort(key=lambda m: m.t)
    return out


def _merged_in_time(rows: list[Row]) -> list[Row]:
    # Members sample on their own beat: put rows within a second of each other together.
    rows.sort(key=lambda r: r.t)
    merged: list[Row] = []
    for row in rows:
        last = merged[-1] if merged else None
        if last is not None and row.t - last.t < 1.0 and not set(row.processes) & set(last.processes):
            merged[-1] = Row(
                last.t, max(last.span, row.span), {**last.processes, **row.processes}, last.gpus or row.gpus
            )
        else:
            merged.append(row)
    return merged
