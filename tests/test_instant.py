"""Alarms at the instant: the watcher is told of file changes (inotify) and process deaths
(pidfd), and wakes for the earliest deadline, rather than looking on a beat.

The unit tests drive ``Watcher.update()`` on an injected clock; the end-to-end ones start a
real ``nbmonitor-watcher`` with a poll interval far longer than the test, so only a notice can
explain what it sees in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbmonitor import _notices
from nbmonitor._notices import Notices
from nbmonitor.record import GroupField
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, run_id_from, wait_until
from .records import World
from .test_e2e_watcher import BUSY

LONG = "60"  # the watcher's --interval in the end-to-end tests: no poll comes in time

HANGS = """
import os, sys, time
import nbmonitor
run = nbmonitor.Run(name="hangs", expect_next_in=1, grace=0.5)
run.report_progress()
print("hang", run.id, run.record().last_progress_mono, flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
run.report_progress()
run.report_successful_finish()
print("done", flush=True)
"""


@pytest.fixture
def world(repo: Repo, clock: FakeClock) -> World:
    return World(repo, clock)


# -- Watcher.update(): only what changed --------------------------------------------------


def test_update_reads_only_the_files_named_and_wakes_for_the_earliest_deadline(world: World) -> None:
    watcher = world.watcher()
    first = world.write("a" * 32, eta=5.0, grace=1.0)
    world.write("b" * 32, eta=2.0, grace=1.0)
    watcher.poll()
    # b is late at 2 s, a at 5 s: the watcher wakes for b first, a moment after its deadline.
    assert watcher.next_wake() == pytest.approx(world.clock.mono() + 2.0, abs=0.01)
    world.clock.advance(2.01)
    assert watcher.update() == []  # late is no event
    assert watcher.next_wake() == pytest.approx(world.clock.mono() + 0.99, abs=0.01)  # b stalls at 3 s
    world.clock.advance(1.0)
    assert [e.run.id[0] for e in watcher.update()] == ["b"]
    assert world.kinds() == ["stalled"]
    # a makes progress: only its file is named, and only it is read again.
    world.progress(first)
    watcher.update(names=[f"{'a' * 32}.json"])
    assert watcher.next_wake() == pytest.approx(world.clock.mono() + 5.0, abs=0.01)
    # b's file was rewritten with progress, but nobody named it: the watcher does not know yet.
    moved = world.progress(world.repo.read_run("b" * 32))
    assert watcher.update() == []
    assert world.kinds() == ["stalled"]
    watcher.update(names=[f"{moved.id}.json"])
    assert world.kinds() == ["stalled", "recovered"]


def test_a_process_that_ended_is_looked_at_once_told(world: World) -> None:
    watcher = world.watcher()
    world.write("a" * 32, eta=3600.0, pid=77)
    world.write("b" * 32, eta=3600.0, pid=78)
    watcher.poll()
    assert {key[0] for key in watcher.processes} == {77, 78}
    world.dead.add(77)
    assert watcher.update() == []  # not told: nothing is looked at
    (crashed,) = watcher.update(ended=[k for k in watcher.processes if k[0] == 77])
    assert (crashed.kind, crashed.run.id) == ("crashed", "a" * 32)
    assert watcher.next_wake() is not None  # b's deadline, an hour away


def test_a_process_that_cannot_be_watched_is_looked_at_every_interval(world: World) -> None:
    watcher = world.watcher(interval=2.0)
    world.write("a" * 32, eta=3600.0, pid=77)
    watcher.poll()
    (key,) = watcher.new_processes
    watcher.unwatched.add(key)  # as the loop does when no pidfd can be had
    watcher.poll_again(watcher.processes[key], world.clock.mono() + 2.0)
    for _ in range(3):  # each look plans the next, an interval on, not at its deadline an hour on
        assert watcher.next_wake() == pytest.approx(world.clock.mono() + 2.0)
        world.clock.advance(2.0)
        assert watcher.update() == []
    world.dead.add(77)
    world.clock.advance(2.0)
    assert [e.kind for e in watcher.update()] == ["crashed"]


def test_a_group_is_judged_whole_when_one_member_changes(world: World) -> None:
    watcher = world.watcher()
    for rank, run_id in enumerate(("a" * 32, "b" * 32)):
        group = GroupField(job="job-1", launcher="torchrun", rank=rank, world_size=2)
        world.write(run_id, eta=3600.0, pid=70 + rank, group=group, name="ddp")
    watcher.poll()
    world.dead.add(71)
    (crashed,) = watcher.update(ended=[k for k in watcher.processes if k[0] == 71])
    assert crashed.group is not None
    assert crashed.kind == "crashed"
    assert crashed.run.id == "b" * 32


def test_a_run_file_removed_is_forgotten(world: World) -> None:
    watcher = world.watcher()
    world.write("a" * 32, eta=1.0)
    watcher.poll()
    world.repo.run_path("a" * 32).unlink()
    watcher.update(names=[f"{'a' * 32}.json"])
    world.clock.advance(10)
    assert watcher.update() == []
    assert watcher.next_wake() is None


# -- Notices: real inotify and pidfds ----------------------------------------------------------


def test_notices_name_files_written_whole_and_processes_that_end(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.ensure()
    notices: Notices[str] = Notices(repo.runs_dir)
    try:
        assert notices.files, notices.why_not
        assert notices.wait(0) is False
        (repo.runs_dir / "x.json").write_text("{}")
        os.replace(repo.runs_dir / "x.json", repo.runs_dir / "y.json")
        assert notices.wait(5)
        taken = notices.take()
        assert {"x.json", "y.json"} <= taken.names
        assert not taken.everything
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert notices.watch_process("child", child.pid)
        assert notices.wait(0.05) is False
        child.kill()
        started = time.monotonic()
        assert notices.wait(5)
        assert time.monotonic() - started < 1
        assert notices.take().ended == ["child"]
        child.wait()
        # The folder removed and made again: everything must be looked at.
        for name in os.listdir(repo.runs_dir):
            os.unlink(repo.runs_dir / name)
        repo.runs_dir.rmdir()
        assert notices.wait(5)
        assert notices.take().everything
        assert notices.watching is False
        repo.runs_dir.mkdir()
        assert notices.watching is True
        assert notices.take().everything
    finally:
        notices.close()


def test_a_filesystem_that_does_not_tell_other_hosts_changes_is_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _notices.filesystem(Path("/proc/self")) == "proc"
    assert _notices.filesystem(tmp_path) not in (None, "proc")
    monkeypatch.setattr(_notices, "filesystem", lambda path: "nfs4")
    notices: Notices[str] = Notices(tmp_path)
    try:
        assert not notices.files
        assert notices.why_not == "the repo is on nfs4, which does not report changes made on other hosts"
    finally:
        notices.close()


# -- the real watcher ------------------------------------------------------------------------


def start(repo: Repo, procs: list[Proc], *args: str) -> Proc:
    watcher = Proc.watcher(repo.path, *args)
    procs.append(watcher)
    watcher.wait_for("watching")
    return watcher


def test_a_sigkilled_script_is_crashed_at_once_with_no_poll_to_wait_for(
    repo: Repo, procs: list[Proc], tmp_path: Path
) -> None:
    watcher = start(repo, procs, "--interval", LONG)
    assert watcher.matching("told of changes")
    script = Path(tmp_path / "busy.py")
    script.write_text(BUSY)
    busy = Proc.python(script, repo=repo.path)
    procs.append(busy)
    run_id = run_id_from(busy, "started")
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file")
    time.sleep(0.3)  # the watcher has seen the file (it is told within milliseconds)
    busy.popen.send_signal(signal.SIGKILL)
    busy.popen.wait(10)
    killed = time.monotonic()
    crashed = watcher.wait_for("CRASHED", run_id[:8], timeout=int(LONG) / 2)
    assert crashed - killed < 1.0


def test_a_deadline_is_reported_when_it_passes_and_progress_when_it_is_written(
    repo: Repo, procs: list[Proc], tmp_path: Path
) -> None:
    watcher = start(repo, procs, "--interval", LONG)
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    go = tmp_path / "go"
    hangs = Proc.python(script, str(go), repo=repo.path)
    procs.append(hangs)
    hung = hangs.wait_for("hang")
    run_id = run_id_from(hangs, "hang")
    stalled = watcher.wait_for("STALLED", run_id[:8], timeout=15)
    # ETA 1 s + grace 0.5 s + the writer's declared lag, from the moment it printed.
    lag = repo.read_run(run_id).write_lag or 0.0
    assert stalled - hung > 1.5 - 0.2  # not before its deadline (0.2 s: the print's own lag)
    assert stalled - hung <= 1.5 + lag + 0.5
    go.touch()
    told = hangs.wait_for("done")
    finished = watcher.wait_for("FINISHED", run_id[:8], timeout=15)
    assert finished - told < 1.0
    assert len(watcher.matching("RECOVERED", run_id[:8])) == 1


def test_with_notices_off_a_changed_run_file_is_still_seen_at_the_poll(
    repo: Repo, procs: list[Proc], tmp_path: Path
) -> None:
    watcher = start(repo, procs, "--poll", "--interval", "0.5")
    assert watcher.matching("polling every 0.5 s: change notices are turned off")
    status = subprocess.run(
        [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "status"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "watcher: polling every 0.5 s, since change notices are turned off" in status.stdout
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    go = tmp_path / "go"
    go.touch()  # it finishes at once
    hangs = Proc.python(script, str(go), repo=repo.path)
    procs.append(hangs)
    run_id = run_id_from(hangs, "hang")
    told = hangs.wait_for("done")
    finished = watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    assert finished - told < 0.5 + 0.5
