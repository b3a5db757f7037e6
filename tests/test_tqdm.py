"""tqdm bars as progress: read under tqdm's lock, counted for the run that opened them, once."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import tqdm

import nbmonitor
from nbmonitor import _writer
from nbmonitor._tqdm import TqdmProbe, attribute_bars, restore_bars
from nbmonitor.repo import Repo


@pytest.fixture(autouse=True)
def attributed() -> Iterator[None]:
    assert attribute_bars(nbmonitor.current_run)
    yield
    restore_bars()


def bar(**kwargs: object) -> tqdm.tqdm[int]:
    return tqdm.tqdm(file=io.StringIO(), mininterval=0, **kwargs)


def test_bars_count_for_the_run_current_where_they_were_opened(monitor: _writer.Writer, repo: Repo) -> None:
    outside = bar()
    with nbmonitor.watch(name="a", repo=repo) as a:
        probe_a = TqdmProbe(a, time.time(), nbmonitor.current_run)
        mine = bar()
        with nbmonitor.watch(name="b", repo=repo) as b:
            probe_b = TqdmProbe(b, time.time(), nbmonitor.current_run)
            inner = bar()
    outside.update(100)
    mine.update(3)
    inner.update(5)
    assert (probe_a(), probe_b()) == (3, 5)
    mine.update(2)
    assert probe_a() == 5
    mine.reset()  # an epoch's bar starting again: nothing is taken back, the new epoch counts
    mine.update(4)
    assert (probe_a(), probe_b()) == (9, 5)


def test_bars_that_open_and_close_between_two_looks_still_count(monitor: _writer.Writer, repo: Repo) -> None:
    with nbmonitor.watch(name="quick", repo=repo) as run:
        probe = TqdmProbe(run, time.time(), nbmonitor.current_run)
        for _ in range(3):
            for _ in bar(iterable=range(4)):
                pass
        seen = bar()
        seen.update(2)
        assert probe() == 14
        seen.update(3)
        seen.close()
        assert probe() == 17
        assert probe() == 17


def test_the_probe_reads_tqdms_bars_under_tqdms_lock(monitor: _writer.Writer, repo: Repo) -> None:
    # As tqdm's own monitor thread does: a copy of the set taken under tqdm.get_lock().
    with nbmonitor.watch(name="locked", repo=repo) as run:
        probe = TqdmProbe(run, time.time(), nbmonitor.current_run)
        bar().update(3)
    counted: list[int] = []
    lock = tqdm.tqdm.get_lock()
    lock.acquire()
    try:
        reader = threading.Thread(target=lambda: counted.append(probe()))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive()
        assert counted == []
    finally:
        lock.release()
    reader.join(10)
    assert counted == [3]


def test_bars_opening_all_the_time_in_another_thread_are_never_counted_twice(
    monitor: _writer.Writer, repo: Repo
) -> None:
    # Seen: when reading the set failed once (a bar opened at that moment), every bar's whole
    # count was added again at the next look. Two hundred open bars and thread switches every
    # microsecond make such a moment certain here (the old probe over-counted by thousands).
    others = [bar() for _ in range(200)]
    with nbmonitor.watch(name="busy", repo=repo) as run:
        probe = TqdmProbe(run, time.time(), nbmonitor.current_run)
        long_lived = bar()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            bar().close()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for _ in range(2000):
            long_lived.update()
            assert probe() <= long_lived.n
    finally:
        stop.set()
        churner.join(10)
        sys.setswitchinterval(interval)
        for other in others:
            other.close()
    assert probe() == 2000


def looked(probe: TqdmProbe) -> tuple[int, int | None]:
    return probe(), probe.total


def test_the_total_of_a_runs_only_bar_is_its_total_and_nested_bars_give_none(
    monitor: _writer.Writer, repo: Repo
) -> None:
    with nbmonitor.watch(name="one", repo=repo) as run:
        probe = TqdmProbe(run, time.time(), nbmonitor.current_run)
        assert (probe(), probe.total) == (0, None)
        epoch = bar(total=30)
        epoch.update(3)
        assert (probe(), probe.total) == (3, 30)
        epoch.close()
        assert (probe(), probe.total) == (3, 30)  # still the total once the bar is closed
    with nbmonitor.watch(name="nested", repo=repo) as run:
        probe = TqdmProbe(run, time.time(), nbmonitor.current_run)
        outer = bar(total=2)
        assert probe.total is None  # until the probe looked
        assert looked(probe) == (0, 2)
        inner = bar(total=100)
        inner.update(1)
        assert (probe(), probe.total) == (1, None)  # 1 of 2 epochs, or of 200 batches? neither
        inner.close()
        outer.update(1)
        assert (probe(), probe.total) == (2, None)
