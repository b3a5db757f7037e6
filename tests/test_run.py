"""Runs in this process: what they report, when their file is written, how they end."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbmonitor
from nbmonitor import _writer
from nbmonitor.record import RunRecord
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, child_env


class CountingRepo(Repo):
    """A real repo that counts its run-file writes."""

    writes = 0

    def write_run(self, record: RunRecord) -> None:
        self.writes += 1
        super().write_run(record)


@pytest.fixture
def counting(tmp_path: Path) -> CountingRepo:
    return CountingRepo(tmp_path / "counted")


def on_disk(run: nbmonitor.Run) -> RunRecord:
    return run.repo.read_run(run.id)


def test_report_progress_touches_memory_only(
    monitor: _writer.Writer, counting: CountingRepo, clock: FakeClock
) -> None:
    run = nbmonitor.Run(name="hot", repo=counting, expect_next_in=3)
    monitor.tick()
    assert counting.writes == 1
    before = counting.run_path(run.id).stat().st_mtime_ns
    for i in range(100_000):
        run.report_progress(expect_next_in=3, step=i)
    assert counting.writes == 1
    assert counting.run_path(run.id).stat().st_mtime_ns == before
    clock.advance(1.0)
    monitor.tick()
    assert counting.writes == 2
    assert on_disk(run).step == 99_999
    assert on_disk(run).progress == 100_000


def test_a_busy_run_is_written_at_most_once_a_second(
    monitor: _writer.Writer, counting: CountingRepo, clock: FakeClock
) -> None:
    run = nbmonitor.Run(repo=counting)
    for _ in range(100):  # ten seconds of ticks, progress before each
        run.report_progress()
        monitor.tick()
        clock.advance(monitor.TICK)
    assert 10 <= counting.writes <= 11


def test_an_idle_run_is_rewritten_only_once_a_heartbeat(
    monitor: _writer.Writer, counting: CountingRepo, clock: FakeClock
) -> None:
    run = nbmonitor.Run(repo=counting)
    stamps = []
    for _ in range(50):  # fifty seconds, no progress: written at 0, 10, 20, 30 and 40 s
        monitor.tick()
        stamps.append(counting.read_run(run.id).updated_at)
        clock.advance(1.0)
    assert counting.writes == 5
    assert len(set(stamps)) == 5  # each rewrite is a sign of life: a new stamp
    assert counting.read_run(run.id).heartbeat == 10.0


def test_progress_is_stamped_at_the_tick_that_sees_it(
    monitor: _writer.Writer, repo: Repo, clock: FakeClock
) -> None:
    run = nbmonitor.Run(repo=repo)
    monitor.tick()
    started = on_disk(run)
    assert started.last_progress_mono == clock.mono()
    clock.advance(5.0)
    run.report_progress()
    monitor.tick()
    moved = on_disk(run)
    assert (moved.last_progress_mono, moved.last_progress_at) == (clock.mono(), clock.wall())
    assert moved.progress == 1


def test_a_run_records_who_and_where(
    monitor: _writer.Writer, repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbmonitor.run, "_ipython", lambda: None)  # no IPython shell in this process
    run = nbmonitor.Run(name="train", repo=repo, expect_next_in=3, grace=4, total=10)
    monitor.tick()
    record = on_disk(run)
    assert (record.name, record.eta, record.grace, record.total) == ("train", 3.0, 4.0, 10)
    assert record.pid == os.getpid()
    assert record.process_start is not None
    assert record.origin.kind == "script"
    assert record.status == "running"


def test_watch_finishes_on_normal_exit(monitor: _writer.Writer, repo: Repo) -> None:
    with nbmonitor.watch(eta=3, name="ok", repo=repo) as run:
        run.report_progress()
    record = on_disk(run)
    assert (record.status, record.error) == ("finished", None)
    assert record.ended_at is not None


def test_watch_fails_on_an_exception_and_lets_it_through(monitor: _writer.Writer, repo: Repo) -> None:
    with pytest.raises(ZeroDivisionError), nbmonitor.watch(repo=repo) as run:
        1 / 0  # noqa: B018  # the failure under test
    record = on_disk(run)
    assert record.status == "failed"
    assert record.error is not None
    assert (record.error.type, record.error.message) == ("ZeroDivisionError", "division by zero")
    assert record.error.where is not None
    assert "test_run.py" in record.error.where


def test_watch_marks_keyboard_interrupt_as_interrupted(monitor: _writer.Writer, repo: Repo) -> None:
    with pytest.raises(KeyboardInterrupt), nbmonitor.watch(repo=repo) as run:
        raise KeyboardInterrupt
    assert on_disk(run).status == "interrupted"


def test_explicit_ends_are_kept_and_a_second_end_changes_nothing(monitor: _writer.Writer, repo: Repo) -> None:
    run = nbmonitor.Run(repo=repo)
    run.report_failure("loss is NaN")
    run.report_successful_finish()
    run.close()
    record = on_disk(run)
    assert record.status == "failed"
    assert record.error is not None
    assert record.error.message == "loss is NaN"
    assert monitor.runs() == []


def test_track_yields_every_item_and_finishes_its_run(monitor: _writer.Writer, repo: Repo) -> None:
    items = ["a", "b", "c"]
    assert list(nbmonitor.track(items, name="loop", repo=repo)) == items
    (record,) = repo.runs()
    assert (record.status, record.step, record.total, record.progress) == ("finished", 3, 3, 3)


def test_track_takes_total_from_len_or_leaves_it_unknown(monitor: _writer.Writer, repo: Repo) -> None:
    def gen() -> Iterator[int]:
        yield from range(4)

    list(nbmonitor.track(range(7), name="sized", repo=repo))
    list(nbmonitor.track(gen(), name="gen", repo=repo))
    list(nbmonitor.track(gen(), name="given", total=4, repo=repo))
    by_name = {r.name: r for r in repo.runs()}
    assert (by_name["sized"].total, by_name["gen"].total, by_name["given"].total) == (7, None, 4)
    assert by_name["gen"].step == 4


def test_track_counts_an_item_once_its_work_is_done(
    monitor: _writer.Writer, repo: Repo, clock: FakeClock
) -> None:
    steps = []
    for _ in nbmonitor.track(range(3), name="counting", repo=repo):
        clock.advance(2.0)
        monitor.tick()
        (record,) = repo.runs()
        steps.append(record.step)
    assert steps == [0, 1, 2]
    assert repo.runs()[0].step == 3


def test_track_inside_watch_counts_for_that_run_and_leaves_it_open(
    monitor: _writer.Writer, repo: Repo, clock: FakeClock
) -> None:
    with nbmonitor.watch(eta=5, name="epochs", repo=repo) as run:
        for _epoch in range(2):
            for _ in nbmonitor.track(range(10)):
                pass
            assert run.status == "running"
            assert (run.step, run.total) == (10, 10)
        assert nbmonitor.current_run() is run
    assert nbmonitor.current_run() is None
    (record,) = repo.runs()
    assert (record.status, record.progress) == ("finished", 20)


def test_a_loop_left_early_finishes_once_no_exception_claims_it(
    monitor: _writer.Writer, repo: Repo, clock: FakeClock
) -> None:
    for i in nbmonitor.track(range(100), name="early", repo=repo):
        if i == 4:
            break
    monitor.tick()
    assert repo.runs()[0].status == "running"
    clock.advance(monitor.SETTLE_AFTER)
    monitor.tick()
    record = repo.runs()[0]
    assert (record.status, record.step, record.total) == ("finished", 4, 100)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"expect_next_in": -1}, ValueError, "expect_next_in must be a finite number of seconds > 0"),
        ({"expect_next_in": 0}, ValueError, "expect_next_in must be"),
        ({"expect_next_in": float("nan")}, ValueError, "got nan"),
        ({"expect_next_in": float("inf")}, ValueError, "got inf"),
        ({"expect_next_in": "3"}, TypeError, "expect_next_in must be a number of seconds, got '3'"),
        ({"expect_next_in": True}, TypeError, "expect_next_in must be a number"),
        ({"grace": -0.5}, ValueError, "grace must be a finite number of seconds >= 0"),
        ({"total": -1}, ValueError, "total must be >= 0"),
        ({"total": 2.5}, TypeError, "total must be a whole number"),
        ({"name": 3}, TypeError, "name must be a string"),
    ],
)
def test_bad_arguments_get_a_specific_error(
    monitor: _writer.Writer, repo: Repo, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        nbmonitor.Run(repo=repo, **kwargs)
    assert monitor.runs() == []


def test_bad_progress_reports_are_refused_and_the_run_goes_on(monitor: _writer.Writer, repo: Repo) -> None:
    run = nbmonitor.Run(repo=repo, expect_next_in=2)
    with pytest.raises(ValueError, match="expect_next_in"):
        run.report_progress(expect_next_in=float("nan"))
    with pytest.raises(ValueError, match="step must be >= 0"):
        run.report_progress(step=-3)
    with pytest.raises(TypeError, match="step must be a whole number"):
        run.report_progress(step=1.5)  # type: ignore[arg-type]  # the bad input under test
    assert run.eta == 2.0

    class NumpyLikeInt:
        def __index__(self) -> int:
            return 12

    run.report_progress(step=NumpyLikeInt())  # type: ignore[arg-type]  # what numpy ints look like
    monitor.tick()
    assert on_disk(run).step == 12


def test_an_unusable_repo_never_stops_the_work_and_is_written_once_usable(
    monitor: _writer.Writer, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the repo should be")
    with caplog.at_level(logging.WARNING, "nbmonitor"):
        run = nbmonitor.Run(name="patient", repo=blocker / "repo")
        for _ in range(3):
            run.report_progress()
            monitor.tick()
            clock.advance(1.0)
    assert "patient" in caplog.text
    assert str(blocker) in caplog.text
    blocker.unlink()
    clock.advance(1.0)
    monitor.tick()
    assert on_disk(run).progress == 3


def test_two_watch_blocks_in_two_threads_each_count_their_own_progress(
    monitor: _writer.Writer, repo: Repo
) -> None:
    # The current run was one stack for the process: the healthy thread's progress counted for
    # the block opened last, so the hung one looked healthy and the healthy one stalled.
    healthy_open, hung_open, release = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, nbmonitor.Run | None] = {}

    def healthy() -> None:
        with nbmonitor.watch(eta=1, name="healthy", repo=repo):
            healthy_open.set()
            hung_open.wait(10)
            for _ in range(50):
                nbmonitor.report_progress()
            for _ in nbmonitor.track(range(20)):
                pass
            seen["healthy"] = nbmonitor.current_run()

    def hung() -> None:
        healthy_open.wait(10)
        with nbmonitor.watch(eta=1, name="hung", repo=repo):
            hung_open.set()
            seen["hung"] = nbmonitor.current_run()
            release.wait(10)

    threads = [threading.Thread(target=healthy), threading.Thread(target=hung)]
    for thread in threads:
        thread.start()
    threads[0].join(10)
    release.set()
    threads[1].join(10)
    monitor.tick()
    by_name = {r.name: r for r in repo.runs()}
    assert (by_name["healthy"].progress, by_name["hung"].progress) == (70, 0)
    assert seen["healthy"] is not None
    assert seen["healthy"].name == "healthy"
    assert seen["hung"] is not None
    assert seen["hung"].name == "hung"


def test_threads_started_in_a_block_count_for_it_and_older_threads_do_not(
    monitor: _writer.Writer, repo: Repo
) -> None:
    older_go, older_done = threading.Event(), threading.Event()

    def report(times: int) -> None:
        for _ in range(times):
            nbmonitor.report_progress()

    def older() -> None:  # started before the block, like a thread left by an earlier cell
        older_go.wait(10)
        report(1000)
        older_done.set()

    threading.Thread(target=older).start()
    with nbmonitor.watch(name="block", repo=repo) as run:
        inner = threading.Thread(target=report, args=(7,))
        inner.start()
        inner.join(10)
        older_go.set()
        older_done.wait(10)
        assert nbmonitor.current_run() is run
    after = threading.Thread(target=report, args=(5,))  # the block is closed: counts for nothing
    after.start()
    after.join(10)
    monitor.tick()
    (record,) = repo.runs()
    assert record.progress == 7


def test_a_forked_child_never_writes_its_parents_run(monitor: _writer.Writer, repo: Repo) -> None:
    run = nbmonitor.Run(name="parent", repo=repo)
    monitor.tick()
    pid = os.fork()
    if pid == 0:  # the child: try to end the parent's run, then leave without cleanup
        try:
            run.report_failure("from the child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert on_disk(run).status == "running"


def run_script(path: Path, text: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Repo]:
    """Write ``text`` to ``path``, run it as a script with a repo of its own, and return both."""
    path.write_text(text)
    repo = Repo(path.with_suffix(".repo"))
    command = [sys.executable, str(path), *args]
    done = subprocess.run(command, env=child_env(repo.path), capture_output=True, text=True, timeout=120)
    return done, repo


SCRIPT = """
import nbmonitor, sys
run = nbmonitor.Run(name="script", expect_next_in=60)
for _ in nbmonitor.track(range(3)):
    run.report_progress()
how = sys.argv[1]
if how == "raise":
    raise RuntimeError("out of memory")
if how == "interrupt":
    raise KeyboardInterrupt
if how == "exit":
    sys.exit(0)
if how == "exit-none":
    sys.exit()
if how == "exit-1":
    sys.exit(1)
if how == "exit-message":
    sys.exit("bad data")
"""


@pytest.mark.parametrize(
    ("how", "status", "error", "code"),
    [
        ("return", "finished", None, 0),
        ("exit", "finished", None, 0),
        ("exit-none", "finished", None, 0),
        ("exit-1", "failed", "SystemExit: exit status 1", 1),
        ("exit-message", "failed", "SystemExit: bad data (exit status 1)", 1),
        ("raise", "failed", "RuntimeError: out of memory", 1),
        ("interrupt", "interrupted", None, None),
    ],
)
def test_a_script_ends_its_runs_the_way_it_ends(
    tmp_path: Path, how: str, status: str, error: str | None, code: int | None
) -> None:
    done, repo = run_script(tmp_path / "train.py", SCRIPT, how)
    if code is not None:
        assert done.returncode == code, done.stderr
    by_name = {r.name: r for r in repo.runs()}
    assert by_name["script"].status == status
    assert (by_name["script"].error.summary() if by_name["script"].error else None) == error
    assert by_name["script"].origin.describe() == f"train.py {how}"
    assert by_name["train.py"].status == "finished"  # the track() loop ended before the script did
    if how == "raise":
        assert "RuntimeError: out of memory" in done.stderr  # the normal traceback still shows
    if how == "exit-message":
        assert done.stderr.strip() == "bad data"  # and Python still prints the message


BLOCK = """
import nbmonitor, sys
code = {"none": None, "0": 0, "2": 2}.get(sys.argv[1], sys.argv[1])
with nbmonitor.watch(name="block", eta=60):
    sys.exit(code)
"""


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("none", "finished", None),
        ("0", "finished", None),
        ("2", "failed", "SystemExit: exit status 2"),
        ("no data", "failed", "SystemExit: no data (exit status 1)"),
    ],
)
def test_sys_exit_inside_watch_is_a_finish_or_a_failure_by_its_status(
    tmp_path: Path, code: str, status: str, error: str | None
) -> None:
    _, repo = run_script(tmp_path / "block.py", BLOCK, code)
    (run,) = repo.runs()
    assert run.status == status
    assert (run.error.summary() if run.error else None) == error


THREADS = """
import threading, time, nbmonitor
def train():
    for step in nbmonitor.track(range(100), name="in-a-thread"):
        if step == 3:
            raise ValueError("bad batch")
def quiet():
    for _ in nbmonitor.track(range(3), name="ends-well"):
        pass
    nbmonitor.Run(name="left-open").report_progress()
for target in (train, quiet):
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
"""


def test_a_track_loop_ended_by_an_exception_in_a_thread_is_failed(tmp_path: Path) -> None:
    done, repo = run_script(tmp_path / "threads.py", THREADS)
    assert done.returncode == 0
    assert "ValueError: bad batch" in done.stderr  # the thread's traceback shows as usual
    by_name = {r.name: r for r in repo.runs()}
    failed = by_name["in-a-thread"]
    assert (failed.status, failed.step) == ("failed", 3)
    assert failed.error is not None
    assert failed.error.summary() == "ValueError: bad batch"
    assert by_name["ends-well"].status == "finished"
    assert by_name["left-open"].status == "finished"  # its thread ended normally, then the script


WORKERS = """
import multiprocessing as mp, sys, time, nbmonitor

def left_open(name):
    run = nbmonitor.Run(name=name)
    for _ in range(3):
        run.report_progress()
        time.sleep(0.05)

def raises(name):
    run = nbmonitor.Run(name=name)
    run.report_progress()
    time.sleep(0.2)
    raise RuntimeError("worker broke")

def exits(name):
    run = nbmonitor.Run(name=name)
    time.sleep(0.2)
    sys.exit(3)

def task(n):
    for _ in nbmonitor.track(range(5), name=f"pool-task-{n}"):
        time.sleep(0.01)
    return n

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    for target in (left_open, raises, exits):
        worker = ctx.Process(target=target, args=(target.__name__,))
        worker.start()
        worker.join()
    with ctx.Pool(2) as pool:
        assert pool.map(task, range(4)) == [0, 1, 2, 3]
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_workers_end_their_runs_as_their_targets_did(tmp_path: Path, method: str) -> None:
    # fork and forkserver workers leave by os._exit(), skipping atexit: their runs were left
    # "running", and so reported crashed.
    done, repo = run_script(tmp_path / "workers.py", WORKERS, method)
    assert done.returncode == 0, done.stderr
    by_name = {r.name: r for r in repo.runs()}
    assert by_name["left_open"].status == "finished"
    assert by_name["raises"].status == "failed"
    assert by_name["raises"].error is not None
    assert by_name["raises"].error.summary() == "RuntimeError: worker broke"
    assert by_name["exits"].status == "failed"
    assert by_name["exits"].error is not None
    assert by_name["exits"].error.summary() == "SystemExit: exit status 3"
    assert [by_name[f"pool-task-{n}"].status for n in range(4)] == ["finished"] * 4


EXECS = """
import os, sys, time, nbmonitor
run = nbmonitor.Run(name="before-exec", expect_next_in=1)
for _ in range(3):
    run.report_progress()
    time.sleep(0.05)
print("exec", run.id, flush=True)
os.execv(sys.executable, [sys.executable, "-c", "import time; print('replaced', flush=True); time.sleep(3)"])
"""


def test_a_script_that_execs_another_program_ends_its_runs_as_finished(tmp_path: Path) -> None:
    # The pid and its start time stay the same across exec: the run looked alive until the
    # deadline, then stalled, and crashed when the new program exited.
    script = tmp_path / "execs.py"
    script.write_text(EXECS)
    repo = Repo(tmp_path / "execs")
    proc = Proc.python(script, repo=repo.path)
    try:
        proc.wait_for("replaced")
        (run,) = repo.runs()
        assert run.status == "finished"
        assert run.pid == proc.popen.pid
    finally:
        proc.stop()
