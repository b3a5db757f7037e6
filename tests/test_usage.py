"""Usage arithmetic, and a real sampler against a real busy child process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from nbmonitor.usage import History, Sampler, Usage, cpu_percent, human_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"), (5 * 2**30, "5.0 GB"), (2**50, "1024.0 TB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_cpu_percent_counts_new_processes_in_full_and_gone_ones_no_more() -> None:
    assert cpu_percent({1: 10.0}, {1: 11.0}, 1.0) == 100.0
    assert cpu_percent({1: 10.0}, {1: 10.5, 2: 0.5}, 1.0) == 100.0
    assert cpu_percent({1: 10.0, 2: 50.0}, {1: 10.25}, 0.5) == 50.0
    assert cpu_percent({}, {1: 3.0}, 0.0) == 0.0


def test_history_is_bounded_and_keeps_peaks() -> None:
    history = History(size=3)
    for cpu, rss in ((10.0, 5), (90.0, 50), (20.0, 7), (30.0, 6)):
        history.add(Usage(cpu, rss, None, 1))
    assert len(history.samples) == 3
    assert (history.peak_cpu, history.peak_rss) == (90.0, 50)


def test_the_sampler_sees_a_busy_child_and_reports_gpus_or_why_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = Sampler()
        sampler.sample(time.monotonic())
        start = time.monotonic()
        busy = 0.0
        while time.monotonic() - start < 10 and busy < 50:
            time.sleep(0.5)  # CPU use is measured over an interval of real time
            usage = sampler.sample(time.monotonic())
            busy = usage.cpu_percent
        assert busy >= 50, "the busy child's CPU use was not seen"
        assert usage.processes == 2
        assert usage.rss > 0
        assert usage.gpus or usage.gpu_error  # "no GPU" here; readings on a GPU machine
    finally:
        child.kill()
        child.wait()


def test_pss_is_read_for_a_few_processes_a_sample_and_scaled_from_rss_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbmonitor import usage

    reads: list[int] = []
    real = usage._pss

    def counted(proc: object) -> int | None:
        reads.append(proc.pid)  # type: ignore[attr-defined]  # a psutil.Process
        return real(proc)

    monkeypatch.setattr(usage, "_pss", counted)
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(4)]
    try:
        sampler = Sampler()
        wait = time.monotonic() + 10
        while len(Sampler().sample(0.0).each) < 5 and time.monotonic() < wait:
            time.sleep(0.05)  # the children are listed once they have started
        reads.clear()
        samples = [sampler.sample(float(i)) for i in range(4)]
        assert len(reads) == 2 * 4  # never all of them at once
        assert len(set(reads)) == 5  # every process had its turn
        last = samples[-1]
        assert all(p.pss is not None for p in last.each)  # read, or scaled from its last read
        assert all(0 < p.pss <= p.rss for p in last.each if p.pss is not None)
    finally:
        for child in children:
            child.kill()
            child.wait()


class _FakeNvml:
    """The calls Sampler makes of pynvml, answering for two GPUs (no GPU is lent to these tests:
    a machine with one checks the readings against nvidia-smi)."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # pynvml's names
        pass

    class NVMLError_DriverNotLoaded(NVMLError):
        pass

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        return type("Memory", (), {"used": (handle + 1) * 2**30, "total": 80 * 2**30})()

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> object:
        return type("Rates", (), {"gpu": 50 + handle})()

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[object]:
        # Ours on both devices, another user's process on device 1, one with no figure.
        mine = [type("P", (), {"pid": pid, "usedGpuMemory": 2**28})() for pid in self.pids]
        other = type("P", (), {"pid": 1, "usedGpuMemory": 2**33})()
        hidden = type("P", (), {"pid": self.pids[0], "usedGpuMemory": None})()
        return [*mine, other, hidden] if handle else mine

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[object]:
        return []


def test_gpu_memory_is_each_processes_own_summed_over_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([os.getpid(), child.pid]))
        wait_until = time.monotonic() + 10
        usage = Sampler().sample(0.0)
        while len(usage.each) < 2 and time.monotonic() < wait_until:
            usage = Sampler().sample(0.0)
        by_pid = {p.pid: p for p in usage.each}
        assert by_pid[os.getpid()].gpu_memory == 2 * 2**28  # 256 MB on each of two devices
        assert by_pid[child.pid].gpu_memory == 2 * 2**28
        assert [g.process_memory for g in usage.gpus] == [2 * 2**28, 2 * 2**28]  # not the other user's
        assert [(g.utilization, g.memory_used) for g in usage.gpus] == [(50.0, 2**30), (51.0, 2 * 2**30)]
        assert usage.gpu_error is None
    finally:
        child.kill()
        child.wait()
