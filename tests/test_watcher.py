"""Watcher.poll() over a real repo, with injected clocks and process checks: no sleeps."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nbmonitor.events import Event
from nbmonitor.record import RunRecord
from nbmonitor.repo import Repo
from nbmonitor.watcher import Watcher

from .helpers import FakeClock
from .test_record import sample

HOST, BOOT = "box", "boot-1"


class World:
    """A repo, a clock, the set of live processes, and watchers over them."""

    def __init__(self, repo: Repo, clock: FakeClock) -> None:
        self.repo, self.clock = repo, clock
        self.dead: set[int] = set()
        self.events: list[Event] = []

    def watcher(self, **kwargs: Any) -> Watcher:
        kwargs.setdefault("host", HOST)
        kwargs.setdefault("boot_id", BOOT)
        return Watcher(
            self.repo,
            emit=self.events.append,
            wall=self.clock.wall,
            mono=self.clock.mono,
            alive=lambda pid, start: pid not in self.dead,
            **kwargs,
        )

    def write(self, run_id: str = "a" * 32, **changes: Any) -> RunRecord:
        fields: dict[str, Any] = {
            "id": run_id,
            "host": HOST,
            "boot_id": BOOT,
            "eta": 1.0,
            "progress": 0,
            "step": 0,
            "last_progress_at": self.clock.wall(),
            "last_progress_mono": self.clock.mono(),
        }
        record = sample(**(fields | changes))
        self.repo.write_run(record)
        return record

    def progress(self, record: RunRecord) -> RunRecord:
        moved = record.with_changes(
            progress=record.progress + 1,
            step=record.step + 1,
            last_progress_at=self.clock.wall(),
            last_progress_mono=self.clock.mono(),
        )
        self.repo.write_run(moved)
        return moved

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def world(repo: Repo, clock: FakeClock) -> World:
    return World(repo, clock)


def test_a_stall_is_reported_once_after_eta_plus_grace_then_recovery_once(world: World) -> None:
    watcher = world.watcher()
    run = world.write(eta=1.0)
    world.clock.advance(2.9)  # ETA 1 s + default grace 2 s not yet over
    watcher.poll()
    assert world.events == []
    world.clock.advance(0.2)
    watcher.poll()
    watcher.poll()
    assert world.kinds() == ["stalled"]
    stalled = world.events[0]
    assert stalled.since_progress == pytest.approx(3.1)
    assert stalled.grace == 2.0
    world.clock.advance(30)
    watcher.poll()
    assert world.kinds() == ["stalled"]
    world.progress(run)
    watcher.poll()
    watcher.poll()
    assert world.kinds() == ["stalled", "recovered"]


def test_the_watchers_grace_applies_to_runs_that_set_none(world: World) -> None:
    watcher = world.watcher(grace=10.0)
    world.write(eta=1.0)
    world.write("b" * 32, eta=1.0, grace=0.5)
    world.clock.advance(5)
    watcher.poll()
    assert [e.run.id[0] for e in world.events] == ["b"]


def test_a_dead_process_is_crashed_at_the_next_poll_without_waiting_for_its_deadline(world: World) -> None:
    watcher = world.watcher()
    world.write(eta=3600.0, pid=77)
    watcher.poll()
    world.dead.add(77)
    watcher.poll()
    watcher.poll()
    assert world.kinds() == ["crashed"]


def test_a_process_that_wrote_its_end_just_before_dying_is_not_crashed(world: World) -> None:
    run = world.write(pid=77)
    watcher = world.watcher()
    watcher.poll()

    def exits_after_writing_its_end(pid: int, start: float | None) -> bool:
        world.repo.write_run(run.with_changes(status="finished", ended_at=world.clock.wall()))
        return False

    watcher.alive = exits_after_writing_its_end
    watcher.poll()
    assert world.kinds() == ["finished"]


@pytest.mark.parametrize("status", ["finished", "failed", "interrupted"])
def test_a_reported_end_is_an_event_once(world: World, status: str) -> None:
    watcher = world.watcher()
    world.write(status=status, ended_at=world.clock.wall())
    watcher.poll()
    watcher.poll()
    assert world.kinds() == [status]


def test_a_restarted_watcher_repeats_nothing_and_pushes_no_deadline_back(world: World) -> None:
    first = world.watcher()
    world.write("a" * 32, eta=1.0)
    world.clock.advance(5)
    first.poll()
    assert world.kinds() == ["stalled"]
    world.write("b" * 32, eta=1.0)  # stalls while no watcher runs
    world.clock.advance(4)
    world.write("c" * 32, pid=99)
    world.dead.add(99)  # crashes while no watcher runs
    second = world.watcher()
    second.poll()
    second.poll()
    assert sorted((e.run.id[0], e.kind) for e in world.events) == [
        ("a", "stalled"),
        ("b", "stalled"),
        ("c", "crashed"),
    ]


def test_two_watchers_on_one_repo_report_each_event_once_between_them(world: World) -> None:
    one, two = world.watcher(), world.watcher()
    run = world.write(eta=1.0, pid=5)
    world.clock.advance(10)
    one.poll()
    two.poll()
    world.progress(run)
    two.poll()
    one.poll()
    world.dead.add(5)
    two.poll()
    one.poll()
    assert world.kinds() == ["stalled", "recovered", "crashed"]


def test_a_wall_clock_jump_raises_no_false_alarm_on_this_host(world: World) -> None:
    watcher = world.watcher()
    world.write(eta=1.0)
    world.clock.jump_wall(3600)
    watcher.poll()
    world.clock.jump_wall(-7200)
    watcher.poll()
    assert world.events == []


def test_runs_of_another_host_are_timed_by_this_watchers_clock(world: World) -> None:
    watcher = world.watcher()
    # Its clock is an hour behind ours, and its monotonic clock means nothing here.
    run = world.write(host="elsewhere", boot_id="x", last_progress_at=world.clock.wall() - 3600)
    watcher.poll()
    world.clock.advance(2.5)
    watcher.poll()
    assert world.events == []
    world.clock.advance(1.0)
    watcher.poll()
    assert world.kinds() == ["stalled"]
    world.progress(run)
    watcher.poll()
    assert world.kinds() == ["stalled", "recovered"]


def test_runs_of_another_host_are_never_called_crashed(world: World) -> None:
    watcher = world.watcher()
    world.write(host="elsewhere", eta=None, pid=5)
    world.dead.add(5)
    watcher.poll()
    world.clock.advance(1e6)
    watcher.poll()
    assert world.events == []


def test_a_corrupt_file_is_skipped_and_the_other_runs_are_still_watched(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = world.watcher()
    world.write(eta=1.0)
    bad = world.repo.runs_dir / f"{'f' * 32}.json"
    bad.write_text('{"format": 1, "id": "ff')
    world.clock.advance(5)
    with caplog.at_level(logging.WARNING, "nbmonitor"):
        watcher.poll()
    assert world.kinds() == ["stalled"]
    assert str(bad) in caplog.text


def test_observe_reports_states_without_claiming(world: World) -> None:
    world.write("a" * 32, eta=1.0)
    world.write("b" * 32, status="finished", ended_at=world.clock.wall())
    world.clock.advance(10)
    states = {o.run.id[0]: o.state.value for o in world.watcher().observe()}
    assert states == {"a": "stalled", "b": "finished"}
    assert world.events == []
    assert world.repo.claims("a" * 32) == set()
