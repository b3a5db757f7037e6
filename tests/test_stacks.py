"""Where a stalled run is stuck: its thread's stack, taken inside its process, in the alarm."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import nbmonitor
from nbmonitor import _process, _stacks, _writer
from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, wait_until, watching
from .servers import HttpRecorder

POLL = 0.2

STUCK = """
import time
import nbmonitor


def wait_for_batch():
    time.sleep(120)  # the data never comes


def train():
    with nbmonitor.watch(eta=1, grace=0.5, name="stuck") as run:
        for _ in range(3):
            run.report_progress()
            time.sleep(0.05)
        print("waiting", run.id, flush=True)
        wait_for_batch()


train()
"""

# One C call that holds the GIL for hours: the run's monitor thread cannot run either.
GIL = """
import re, time
import nbmonitor

with nbmonitor.watch(eta=1, grace=0.5, name="regex") as run:
    for _ in range(3):
        run.report_progress()
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while not run.repo.run_path(run.id).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # its file is written (the watcher knows it) before the GIL is held
    print("matching", run.id, flush=True)
    re.match(r"(a+)+$", "a" * 40 + "b")
"""


def line_of(text: str, part: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if part in line)


def wait_for_batch(ready: threading.Event, release: threading.Event) -> None:
    secret = "hunter2"  # a local variable: never part of a stack
    ready.set()
    release.wait(30)
    del secret


def test_a_thread_s_stack_is_its_code_locations_innermost_first_and_no_variables() -> None:
    ready, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=wait_for_batch, args=(ready, release))
    worker.start()
    try:
        assert ready.wait(10)
        stack = _stacks.capture(worker)
    finally:
        release.set()
        worker.join()
    functions = [frame.function for frame in stack]
    here = functions.index("wait_for_batch")
    assert functions[:here] == ["wait", "wait"]  # threading's Event.wait, Condition.wait
    assert stack[here].file == __file__
    assert stack[here].line == line_of(Path(__file__).read_text(), "release.wait(30)")
    assert stack[here].code == "release.wait(30)"
    assert "run" in functions  # Thread.run, outward
    assert "hunter2" not in repr(stack)  # every field of every frame


def test_a_run_takes_its_stack_once_late_and_again_stalled_and_keeps_it_after_recovering(
    repo: Repo, clock: FakeClock, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run(name="stepped", repo=repo, expect_next_in=1.0, grace=1.0, usage=False)
    run.report_progress()
    monitor.tick()
    clock.advance(0.9)
    monitor.tick()
    assert repo.read_run(run.id).stack == ()
    clock.advance(0.2)  # past the ETA: late
    monitor.tick()
    late = repo.read_run(run.id)
    assert late.stack_state == "late"
    assert (
        late.stack[0].function
        == "test_a_run_takes_its_stack_once_late_and_again_stalled_and_keeps_it_after_recovering"
    )
    assert late.stuck_in is not None
    clock.advance(1.0)  # past ETA + grace: stalled
    monitor.tick()
    stalled = repo.read_run(run.id)
    assert stalled.stack_state == "stalled"
    assert stalled.stack_at is not None
    assert late.stack_at is not None
    assert stalled.stack_at > late.stack_at
    run.report_progress()
    clock.advance(0.1)
    monitor.tick()
    recovered = repo.read_run(run.id)
    assert recovered.stack_state is None
    assert recovered.stack == stalled.stack  # where it was, for whoever asks
    assert recovered.stuck_in is None  # not stuck now
    run.close()


def test_the_stalled_alarm_says_where_the_code_is_stuck(
    tmp_path: Path, repo: Repo, http: HttpRecorder
) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))
    with watching(repo.path, POLL) as watcher:
        stuck = Proc.python(script, repo=repo.path)
        try:
            stuck.wait_for("waiting", timeout=30)
            watcher.wait_for("STALLED", timeout=30)
            wait_until(lambda: http.answered(200), 10, "the webhook delivery")
        finally:
            stuck.stop()
    (post,) = [r for r in http.answered(200) if r.json()["event"] == "stalled"]
    text = post.json()["text"]
    sleep_line, call_line = line_of(STUCK, "time.sleep(120)"), line_of(STUCK, "        wait_for_batch()")
    assert f"Stuck in wait_for_batch (stuck.py:{sleep_line}) ← train (stuck.py:{call_line})" in text
    (line,) = watcher.matching("STALLED")
    assert f"wait_for_batch (stuck.py:{sleep_line})" in line


def test_a_run_held_in_one_c_call_is_still_stalled_and_its_stack_read_from_outside(
    tmp_path: Path, repo: Repo
) -> None:
    script = tmp_path / "regex.py"
    script.write_text(GIL)
    with watching(repo.path, POLL) as watcher:
        held = Proc.python(script, repo=repo.path)
        try:
            held.wait_for("matching", timeout=30)
            watcher.wait_for("STALLED", timeout=30)
        finally:
            held.stop()
    (line,) = watcher.matching("STALLED")
    match = line_of(GIL, "re.match(")
    assert "Stuck in match (__init__.py:" in line  # re.match, then the line that called it
    assert f"← <module> (regex.py:{match}) (read by py-spy: its process could not say)." in line


def test_without_py_spy_or_the_right_to_use_it_the_alarm_says_why_there_is_no_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbmonitor import _pyspy, templates
    from nbmonitor.events import Event

    stalled = templates.SAMPLE.run.with_changes(stack=(), stack_state=None, stack_at=None, heartbeat=10.0)
    here = stalled.with_changes(host=_process.host(), pid=2**22 + 12345)  # no such process
    monkeypatch.setattr(_pyspy, "_py_spy", lambda: None)
    missing = _pyspy.outside_stack(here)
    assert missing.stack == ()
    event = Event("stalled", "stalled-1", missing, 0.0, 9.0, 2.0, "watcher")
    assert "py-spy is not installed (pip install 'nbmonitor[stacks]')" in templates.text_for(event)
    monkeypatch.undo()
    failed = _pyspy.outside_stack(here)
    assert failed.stack_error is not None
    assert failed.stack_error.startswith(f"py-spy could not read pid {here.pid}: ")
    assert _pyspy.outside_stack(stalled) is stalled  # another host's process: nothing to read here


def test_on_request_every_thread_s_stack_is_kept_and_status_prints_them(
    repo: Repo, clock: FakeClock, monitor: _writer.Writer
) -> None:
    from .helpers import nbw

    ready, release = threading.Event(), threading.Event()
    loader = threading.Thread(target=wait_for_batch, args=(ready, release), name="loader")
    loader.start()
    try:
        assert ready.wait(10)
        alone = nbmonitor.Run(name="own-thread", repo=repo, expect_next_in=1.0, usage=False, logs=False)
        every = nbmonitor.Run(name="all", repo=repo, expect_next_in=1.0, usage=False, stacks="all")
        monitor.tick()
        clock.advance(1.5)  # late
        monitor.tick()
    finally:
        release.set()
        loader.join()
    assert repo.read_run(alone.id).threads == ()  # its own thread's only, unless asked
    record = repo.read_run(every.id)
    (kept,) = [t for t in record.threads if t.name == "loader"]
    assert kept.thread_id == loader.native_id
    assert [f.function for f in kept.frames if f.function == "wait_for_batch"] == ["wait_for_batch"]
    assert "hunter2" not in repr(record.threads)
    shown = nbw(repo, "status", every.id)
    assert "  thread loader, innermost first:" in shown.stdout
    assert "    wait_for_batch  " in shown.stdout
    with pytest.raises(ValueError, match="stacks must be 'thread' or 'all', got 'some'"):
        nbmonitor.Run(name="bad", repo=repo, stacks="some")
    alone.close()
    every.close()
