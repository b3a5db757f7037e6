"""Retention: ended runs past the period go with their claims, usage and logs; nothing running,
nothing waiting for a delivery, nothing inside the period; a prune killed halfway leaves a
consistent repo, and the next one finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbmonitor import retention
from nbmonitor.membership import group_id
from nbmonitor.record import GroupField, RunRecord
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, nbw, wait_until
from .records import World

DAY = 86400.0


@pytest.fixture
def world(repo: Repo) -> World:
    repo.ensure()
    return World(repo, FakeClock(wall=time.time()))  # files' times are real: so is the wall clock


def ended(
    world: World, run_id: str, days_ago: float, status: str = "finished", **changes: object
) -> RunRecord:
    """A run that ended ``days_ago``, with a claim, a usage history and a log tail."""
    at = world.clock.wall() - days_ago * DAY
    record = world.write(run_id, status=status, ended_at=at, started_at=at - 60, updated_at=at, **changes)
    world.repo.append_usage(run_id, '{"t": 1}\n')
    world.repo.append_log(run_id, '{"t": 1}\n')
    world.repo.append_log(run_id, '{"t": 1}\n', part=4242)
    world.repo.claim(run_id, "end", {"kind": status})
    return record


def parts(repo: Repo, run_id: str) -> list[str]:
    """Which of a run's parts are on disk."""
    found = [
        name
        for name, path in (
            ("run", repo.run_path(run_id)),
            ("usage", repo.usage_path(run_id)),
            ("log", repo.log_path(run_id)),
            ("log part", repo.log_path(run_id, 4242)),
            ("events", repo.events_dir / run_id),
        )
        if path.exists()
    ]
    return found


ALL = ["run", "usage", "log", "log part", "events"]


def test_ended_runs_past_the_period_go_whole_and_nothing_else_does(world: World) -> None:
    repo = world.repo
    ended(world, "a" * 32, days_ago=40)
    ended(world, "b" * 32, days_ago=10)  # inside the period
    ended(world, "c" * 32, days_ago=40, status="failed")
    world.write("d" * 32, status="running", started_at=world.clock.wall() - 90 * DAY)  # still running
    # A crashed run never wrote its end; its end claim (40 days old) says when it ended.
    crashed = ended(world, "e" * 32, days_ago=40, status="running")
    os.utime(repo.claim_path(crashed.id, "end"), (crashed.updated_at, crashed.updated_at))
    # A run whose notification still waits in the outbox.
    ended(world, "f" * 32, days_ago=40)
    waiting = repo.pending_path("0" * 8 + "-0000-0000-0000-" + "0" * 12, "f" * 32, "end", "1" * 32)
    waiting.parent.mkdir(parents=True)
    waiting.write_text("{}")

    done = retention.prune(repo, 30 * DAY, wall=world.clock.wall)

    assert sorted(r.id[0] for r in done.runs) == ["a", "c", "e"]
    assert done.waiting == ["f" * 32]
    assert done.bytes > 0
    for run_id in ("a" * 32, "c" * 32, "e" * 32):
        assert parts(repo, run_id) == []
    for run_id in ("b" * 32, "f" * 32):
        assert parts(repo, run_id) == ALL
    assert parts(repo, "d" * 32) == ["run"]
    assert os.listdir(repo.pruning_dir) == []


def test_a_dry_run_changes_nothing_and_says_the_same(world: World) -> None:
    repo = world.repo
    ended(world, "a" * 32, days_ago=40)
    ended(world, "b" * 32, days_ago=1)
    before = sorted(str(p.relative_to(repo.path)) for p in repo.path.rglob("*"))
    dry = retention.prune(repo, 30 * DAY, dry_run=True, wall=world.clock.wall)
    assert sorted(str(p.relative_to(repo.path)) for p in repo.path.rglob("*") if p.name != "prune.lock") == [
        p for p in before if p != "prune.lock"
    ]
    wet = retention.prune(repo, 30 * DAY, wall=world.clock.wall)
    assert [r.id for r in dry.runs] == [r.id for r in wet.runs] == ["a" * 32]
    assert dry.bytes == wet.bytes


def test_a_group_goes_whole_once_every_member_is_due(world: World) -> None:
    repo = world.repo
    members = []
    for rank, run_id in enumerate(("a" * 32, "b" * 32)):
        group = GroupField(job="job-1", launcher="torchrun", rank=rank, world_size=2)
        members.append(ended(world, run_id, days_ago=40 if rank == 0 else 10, group=group, name="ddp"))
    gid = group_id("job-1", "ddp")
    repo.claim(gid, "end", {"kind": "finished"})
    assert retention.prune(repo, 30 * DAY, wall=world.clock.wall).runs == []  # rank 1 is recent
    assert (repo.events_dir / gid).is_dir()
    world.clock.advance(30 * DAY)
    done = retention.prune(repo, 30 * DAY, wall=world.clock.wall)
    assert sorted(r.id for r in done.runs) == ["a" * 32, "b" * 32]
    assert not (repo.events_dir / gid).exists()


def test_orphans_and_checkpoint_records_without_files_go(world: World, tmp_path: Path) -> None:
    repo = world.repo
    ended(world, "a" * 32, days_ago=1)
    repo.run_path("a" * 32).unlink()  # removed by hand: its parts stay behind
    old = world.clock.wall() - 40 * DAY
    for path in (repo.usage_path("a" * 32), repo.log_path("a" * 32), repo.events_dir / ("a" * 32)):
        os.utime(path, (old, old))
    kept = tmp_path / "ckpt" / "step-1"
    kept.mkdir(parents=True)
    first, second = "100000000000001-aaaaaaaaaaaa", "100000000000002-bbbbbbbbbbbb"
    for name, where in ((first, kept), (second, tmp_path / "gone")):
        record = repo.checkpoint_path("c" * 32, name)
        record.write_text(json.dumps({"path": str(where), "step": 1, "at": 1.0, "metadata": {}}))
    done = retention.prune(repo, 30 * DAY, wall=world.clock.wall)
    assert done.orphans == 3  # the usage, the log tail, the claims (the log part is recent)
    assert done.checkpoint_records == 1
    assert [p.name for p in (repo.checkpoints_dir / ("c" * 32)).iterdir()] == [f"{first}.json"]
    assert kept.is_dir()  # checkpoint files are the user's


# A prune of many runs, each removal slowed so that the test can kill it halfway.
PRUNE_SLOWLY = """
import sys, time
from nbmonitor import retention
from nbmonitor.repo import Repo
slow = retention._remove_parts
def remove_parts(repo, run_id, key):
    print("removing", run_id, flush=True)
    time.sleep(0.05)
    slow(repo, run_id, key)
    time.sleep(0.05)
retention._remove_parts = remove_parts
retention.prune(Repo(sys.argv[1]), 86400.0)
"""


def test_a_prune_killed_halfway_leaves_a_consistent_repo_and_the_next_one_finishes(
    world: World, repo: Repo, tmp_path: Path
) -> None:
    ids = [f"{i:032x}" for i in range(1, 41)]
    for run_id in ids:
        ended(world, run_id, days_ago=3)
    script = tmp_path / "prune.py"
    script.write_text(PRUNE_SLOWLY)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(repo.path)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout is not None
    for _ in range(10):
        assert proc.stdout.readline().startswith("removing")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # Consistent: every run still listed has all its parts; the one being removed is not listed.
    listed = {r.id for r in repo.runs()}
    assert 25 <= len(listed) < 40
    for run_id in listed:
        assert parts(repo, run_id) == ALL
    assert len(os.listdir(repo.pruning_dir)) == 1
    # The next prune finishes it, and the rest.
    result = nbw(repo, "prune", "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert f"removed {len(listed)} run(s) that ended over 1 day ago" in result.stdout
    assert "finished removing 1 run(s) an interrupted prune had begun" in result.stdout
    assert repo.runs() == []
    for run_id in ids:
        assert parts(repo, run_id) == []
    assert os.listdir(repo.pruning_dir) == []


def test_the_command_line_prunes_by_the_repos_retention_or_older_than(world: World, repo: Repo) -> None:
    ended(world, "a" * 32, days_ago=40, name="old-train")
    ended(world, "b" * 32, days_ago=10)
    said = nbw(repo, "retention")
    assert said.stdout.strip() == f"{repo.path} keeps ended runs 30 days after they end"
    dry = nbw(repo, "prune", "--dry-run")
    assert dry.stdout.startswith("would remove 1 run(s) that ended over 30 days ago (")
    assert "old-train" in dry.stdout
    assert parts(repo, "a" * 32) == ALL
    assert nbw(repo, "retention", "1w").returncode == 0
    assert retention.period(repo) == 7 * DAY
    assert oct(repo.settings_file.stat().st_mode & 0o777) == "0o600"
    wet = nbw(repo, "prune")
    assert wet.stdout.startswith("removed 2 run(s) that ended over 1 week ago (")
    assert repo.runs() == []
    assert nbw(repo, "retention", "never").returncode == 0
    assert "keeps ended runs for ever" in nbw(repo, "prune").stdout
    for bad, says in (("7", "not a period: '7'"), ("-3d", "not a period: '-3d'"), ("0d", "than nothing")):
        result = nbw(repo, "prune", f"--older-than={bad}")
        assert result.returncode == 2
        assert says in result.stderr
        assert len(result.stderr.strip().splitlines()[-1]) < 200


def test_the_watcher_prunes_at_start(world: World, repo: Repo) -> None:
    ended(world, "a" * 32, days_ago=40)
    ended(world, "b" * 32, days_ago=1)
    watcher = Proc.watcher(repo.path)
    try:
        watcher.wait_for("pruned 1 run(s) that ended over 30 days ago")
        wait_until(lambda: parts(repo, "a" * 32) == [], 5, "the old run to go")
        assert parts(repo, "b" * 32) == ALL
    finally:
        watcher.stop()
