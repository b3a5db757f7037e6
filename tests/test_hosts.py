"""Other hosts, for real: members in their own UTS and PID namespaces (another host name, their own
pids) sharing only the repo directory with a real watcher, which can look up neither. Judged by
their heartbeat: alive while their files are refreshed, lost when that stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbmonitor.repo import Repo
from nbmonitor.rules import HEARTBEATS_MISSED

from .helpers import Proc, event_lines, wait_until, watching

POLL = 0.2
HEARTBEAT = 0.3


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare (Linux namespaces)")

# A member of group "job-h": reports a step every 0.1 s for a number of steps, or until killed.
MEMBER = """
import sys, time
import nbmonitor
from nbmonitor import _writer

rank, steps, eta, clock_off = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
_writer.get().wall = lambda: time.time() + clock_off  # this host's clock, off by that much
with nbmonitor.watch(eta=eta, name="sharded", group="job-h", rank=rank, world_size=2) as run:
    print("started", run.id, flush=True)
    for step in range(steps):
        time.sleep(0.1)
        run.report_progress(step=step + 1)
print("done", flush=True)
"""


@pytest.fixture
def watcher(repo: Repo) -> Iterator[Proc]:
    with watching(repo.path, POLL) as proc:
        yield proc


def member(
    tmp_path: Path, repo: Repo, rank: int, steps: int, eta: float, *, host: str | None, clock_off: float = 0
) -> Proc:
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    command = [sys.executable, str(script), str(rank), str(steps), str(eta), str(clock_off)]
    if host is not None:  # another host: its own host name and pids; killing unshare kills it
        inner = f"hostname {host} && exec {' '.join(command)}"
        command = ["unshare", "--uts", "--pid", "--mount-proc", "--kill-child=SIGKILL", "sh", "-c", inner]
    return Proc(command, repo.path, env={"NBMONITOR_HEARTBEAT": str(HEARTBEAT)})


def kinds(watcher: Proc) -> list[str]:
    return [line.split()[2] for line in event_lines(watcher)]


def both_finish(watcher: Proc, local: Proc, remote: Proc) -> None:
    """Both members run to their end, and the group's one event is that it finished."""
    try:
        assert remote.wait_exit(60) == 0, remote.text
        assert local.wait_exit(60) == 0, local.text
        watcher.wait_for("FINISHED", timeout=10)
    finally:
        local.stop()
        remote.stop()
    assert kinds(watcher) == ["FINISHED"]


def test_a_live_member_on_another_host_is_never_called_crashed_or_lost(
    tmp_path: Path, repo: Repo, watcher: Proc
) -> None:
    both_finish(
        watcher,
        member(tmp_path, repo, 0, 30, 30.0, host=None),
        member(tmp_path, repo, 1, 30, 30.0, host="node-b"),
    )
    hosts = {run.group.rank: (run.host, run.pid) for run in repo.runs() if run.group}
    assert hosts[1][0] == "node-b"
    assert hosts[1][1] < 10  # a pid of its own namespace, which the watcher cannot look up


def test_a_member_on_another_host_that_is_killed_is_lost_within_three_heartbeats_and_a_poll(
    tmp_path: Path, repo: Repo, watcher: Proc
) -> None:
    local = member(tmp_path, repo, 0, 600, 30.0, host=None)
    remote = member(tmp_path, repo, 1, 600, 30.0, host="node-b")
    try:
        remote.wait_for("started", timeout=30)
        wait_until(
            lambda: any(r.host == "node-b" and r.step > 2 for r in repo.runs()), 30, "the remote's steps"
        )
        remote.popen.kill()  # unshare dies, and takes the member with it: no last words
        killed_at = time.monotonic()
        lost_at = watcher.wait_for("LOST", timeout=30)
        # Three heartbeats, a poll to see it, and the last refresh may be up to a poll old.
        assert lost_at - killed_at < HEARTBEATS_MISSED * HEARTBEAT + 2 * POLL + 1.0
        (lost,) = watcher.matching("LOST")
        assert "rank 1 on node-b" in lost
        assert "stopped answering" in lost
    finally:
        local.stop()
        remote.stop()
    assert kinds(watcher) == ["LOST"]


def test_a_member_whose_clock_is_an_hour_off_raises_no_false_alarm(
    tmp_path: Path, repo: Repo, watcher: Proc
) -> None:
    local = member(tmp_path, repo, 0, 30, 1.0, host=None)
    both_finish(watcher, local, member(tmp_path, repo, 1, 30, 1.0, host="node-c", clock_off=3600.0))
    remote = next(r for r in repo.runs() if r.host == "node-c")
    assert remote.started_at > time.time() + 3000  # its own clock, as written
