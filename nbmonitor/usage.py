"""Resource usage of this process and its children: CPU, memory, GPUs, with a short history.

``Sampler.sample()`` does the reading (psutil, NVML through nvidia-ml-py);
everything else here is arithmetic on plain numbers. With no NVIDIA driver
or no ``pynvml`` module, GPUs read as "no GPU" instead of failing.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._format import human_bytes

__all__ = [
    "GpuUsage",
    "History",
    "ProcessUsage",
    "Sampler",
    "Usage",
    "command_name",
    "human_bytes",
]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class GpuUsage:
    """One GPU: device utilisation, device memory, and this process tree's share of it."""

    index: int
    name: str
    utilization: float  # percent of the device's time busy
    memory_used: int  # bytes, whole device
    memory_total: int  # bytes
    process_memory: int | None = None  # bytes used by this process and its children, when visible


@dataclass(frozen=True, slots=True)
class Usage:
    """One sample of this process and its children."""

    cpu_percent: float  # 100 = one core
    rss: int  # bytes
    pss: int | None  # bytes; proportional set size where the OS reports it
    processes: int  # this one plus live children
    gpus: tuple[GpuUsage, ...] = ()
    gpu_error: str | None = None  # why there are no GPU readings ("no GPU", ...)
    each: tuple[ProcessUsage, ...] = ()  # the same, process by process


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """One process of the tree in one sample."""

    pid: int
    started: float  # its start time (psutil's create_time): a pid with another start is another process
    cpu_percent: float
    rss: int
    pss: int | None
    gpu_memory: int | None  # bytes on all GPUs; None when GPUs cannot say


def cpu_percent(previous: Mapping[K, float], current: Mapping[K, float], seconds: float) -> float:
    """CPU use over an interval from per-process CPU seconds; a process new in ``current`` counts
    in full (it started within the interval), one gone from it counts nothing more."""
    if seconds <= 0:
        return 0.0
    used = sum(total - previous.get(pid, 0.0) for pid, total in current.items())
    return max(0.0, used / seconds * 100)


@dataclass
class History:
    """Bounded history of samples (default: the last five minutes at one a second), and peaks."""

    size: int = 300
    samples: deque[Usage] = field(default_factory=deque)
    peak_cpu: float = 0.0
    peak_rss: int = 0
    peak_gpu_memory: int = 0

    def add(self, usage: Usage) -> None:
        self.samples.append(usage)
        while len(self.samples) > self.size:
            self.samples.popleft()
        self.peak_cpu = max(self.peak_cpu, usage.cpu_percent)
        self.peak_rss = max(self.peak_rss, usage.rss)
        gpu_memory = sum(g.process_memory or 0 for g in usage.gpus)
        self.peak_gpu_memory = max(self.peak_gpu_memory, gpu_memory)

    @property
    def last(self) -> Usage | None:
        return self.samples[-1] if self.samples else None


class Sampler:
    """Reads usage of a process (default: this one) and its children."""

    def __init__(self, pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(pid if pid is not None else os.getpid())
        self._previous_cpu: dict[tuple[int, float], float] = {}
        #: Each process's PSS over RSS when its PSS was last read, and when (monotonic).
        self._ratio: dict[tuple[int, float], tuple[float, float]] = {}
        self._pss_works = True
        self._last_at: float | None = None
        self._nvml: Any = None
        self._gpu_error: str | None = None
        self._nvml_tried = False

    #: PSS reads a sample: reading it walks the process's page tables (``smaps_rollup``), about
    #: 5 ms a GB, so it is read for a few processes a sample (new ones first, then the longest
    #: unread) and, in between, a process's RSS is scaled by its PSS/RSS ratio when last read.
    PSS_READS = 2

    def sample(self, now: float) -> Usage:
        """One reading; ``now`` is a monotonic time, for the CPU rate."""
        psutil = self._psutil
        processes = [self._process]
        with contextlib.suppress(psutil.Error):  # a child may exit while being listed
            processes += self._process.children(recursive=True)
        cpu: dict[tuple[int, float], float] = {}
        read: list[tuple[int, float, float, int, int | None]] = []
        due = self.PSS_READS
        read_at = {pid: at for (pid, _), (_, at) in self._ratio.items()}  # never read: first in line
        for proc in sorted(processes, key=lambda p: read_at.get(p.pid, -math.inf)):
            try:
                with proc.oneshot():
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue  # it has ended; its parent has not reaped it yet
                    started = proc.create_time()
                    times = proc.cpu_times()
                    info = proc.memory_info()
            except psutil.Error:
                continue
            key = (proc.pid, started)
            full: int | None = None
            if self._pss_works and due > 0:
                due -= 1
                full = _pss(proc)
                if full is None and not self._ratio:
                    self._pss_works = False  # no PSS on this system: RSS it is
                elif full is not None:
                    self._ratio[key] = (full / info.rss if info.rss else 1.0, now)
            if full is None and key in self._ratio:
                full = round(info.rss * self._ratio[key][0])
            # Not children_*: a reaped child's time would then count twice, live and reaped.
            cpu[key] = times.user + times.system
            read.append((proc.pid, started, times.user + times.system, info.rss, full))
        self._ratio = {key: value for key, value in self._ratio.items() if key in cpu}
        seconds = now - self._last_at if self._last_at is not None else 0.0
        first = self._last_at is None
        previous, self._previous_cpu, self._last_at = self._previous_cpu, cpu, now
        gpus, per_pid = self._gpus({pid for pid, *_ in read})
        each = tuple(
            ProcessUsage(
                pid,
                started,
                0.0 if first else cpu_percent(previous, {(pid, started): used}, seconds),
                rss,
                pss,
                per_pid.get(pid, 0) if per_pid is not None else None,
            )
            for pid, started, used, rss, pss in read
        )
        pss_known = all(p.pss is not None for p in each)
        return Usage(
            sum(p.cpu_percent for p in each),
            sum(p.rss for p in each),
            sum(p.pss or 0 for p in each) if pss_known else None,
            len(each),
            gpus,
            self._gpu_error,
            each,
        )

    def _gpus(self, pids: set[int]) -> tuple[tuple[GpuUsage, ...], dict[int, int] | None]:
        nvml = self._nvml_handle()
        if nvml is None:
            return (), None
        found = []
        per_pid: dict[int, int] | None = {}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                mine = _process_gpu_memory(nvml, handle, pids)
                if mine is None:
                    per_pid = None
                elif per_pid is not None:
                    for pid, used in mine.items():
                        per_pid[pid] = per_pid.get(pid, 0) + used
                found.append(
                    GpuUsage(
                        index,
                        name.decode() if isinstance(name, bytes) else str(name),
                        float(busy),
                        int(memory.used),
                        int(memory.total),
                        None if mine is None else sum(mine.values()),
                    )
                )
        except nvml.NVMLError as e:
            self._gpu_error = f"GPU readings failed: {e}"
            return (), None
        return tuple(found), per_pid

    def _nvml_handle(self) -> Any:
        if self._nvml_tried:
            return self._nvml
        self._nvml_tried = True
        try:
            import pynvml
        except ImportError:
            self._gpu_error = "no GPU readings (pip install nvidia-ml-py)"
            return None
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            missing = (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded)
            self._gpu_error = "no GPU" if isinstance(e, missing) else f"no GPU readings ({e})"
            return None
        if count == 0:
            self._gpu_error = "no GPU"
        self._nvml = pynvml
        return pynvml


def _pss(proc: Any) -> int | None:
    # From smaps_rollup (Linux 4.14+): one read, but it walks the page tables, about 5 ms a GB
    # (Sampler.PSS_READS); other systems have no PSS.
    import psutil

    try:
        return int(proc.memory_full_info().pss)
    except (AttributeError, OSError, psutil.Error):
        return None


def _process_gpu_memory(nvml: Any, handle: Any, pids: Iterable[int]) -> dict[int, int] | None:
    """GPU memory each of ``pids`` uses on one device (NVML's running-process lists); None when
    the driver does not say (some containers hide other processes' use)."""
    wanted = set(pids)
    try:
        running = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        running += list(nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
    except nvml.NVMLError:
        return None
    used: dict[int, int] = {}
    for p in running:
        if p.pid in wanted and p.usedGpuMemory is not None:
            used[p.pid] = used.get(p.pid, 0) + int(p.usedGpuMemory)
    return used


def command_name(cmdline: Sequence[str], fallback: str) -> str:
    """A process as a person recognises it from its command line: ``python prep.py``,
    ``torchrun train.py``, ``sleep``; ``fallback`` (its name) when there is none."""
    if not cmdline:
        return fallback
    program = os.path.basename(cmdline[0]) or fallback
    rest = [a for a in cmdline[1:] if a and not a.startswith("-")]
    if program.startswith("python") and len(cmdline) > 2 and cmdline[1] == "-m":
        return f"python -m {cmdline[2]}"
    if "-c" in cmdline[1:2]:
        return f"{program} -c"  # the code itself is no name
    if rest and (program.startswith(("python", "bash", "sh", "node", "ruby", "perl")) or "/" in rest[0]):
        return f"{program} {os.path.basename(rest[0])}"
    return program
