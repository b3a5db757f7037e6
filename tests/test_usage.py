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
