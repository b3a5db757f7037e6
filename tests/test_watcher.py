"""Watcher.poll() over a real repo, with injected clocks and process checks: no sleeps."""

from __future__ import annotations

import logging

import pytest

import nbmonitor
from nbmonitor import _writer
from nbmonitor.events import Event
from nbmonitor.record import GroupField, SupervisorField
from nbmonitor.repo import Repo
from nbmonitor.rules import State
from nbmonitor.templates import text_for
from nbmonitor.watcher import Watcher

from .helpers import FakeClock
from .records import World


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

    def exits_after_writing_its_end(pid: int, start: float | None, ticks: int | None) -> bool:
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
    # It sees that host's progress only at its next look, so it allows one interval more.
    watcher = world.watcher(interval=0.5)
    # Its clock is an hour behind ours, and its monotonic clock means nothing here.
    run = world.write(host="elsewhere", boot_id="x", last_progress_at=world.clock.wall() - 3600)
    watcher.poll()
    world.clock.advance(3.4)  # ETA 1 s + grace 2 s + one interval 0.5 s not yet over
    watcher.poll()
    assert world.events == []
    world.clock.advance(0.2)
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


@pytest.mark.parametrize(
    ("eta", "run_grace", "watcher_grace"),
    [(0.5, 0.2, None), (0.8, None, 0.0), (0.05, 0.0, 0.0), (3.0, None, 0.0)],
    ids=["eta-0.5-grace-0.2", "eta-0.8-watcher-grace-0", "eta-0.05-no-grace", "eta-3-watcher-grace-0"],
)
def test_a_run_keeping_a_short_promise_is_never_late_to_a_watcher_reading_its_file(
    monitor: _writer.Writer,
    repo: Repo,
    clock: FakeClock,
    eta: float,
    run_grace: float | None,
    watcher_grace: float | None,
) -> None:
    # Progress every 20 ms for ten seconds, the writer ticking every 0.1 s (every seventh tick a
    # tick late), the real watcher reading the real file after every report. Run files were
    # written at most once a second, so a 0.5 s promise looked broken every second.
    events: list[Event] = []
    watcher = Watcher(repo, grace=watcher_grace, emit=events.append, wall=clock.wall, mono=clock.mono)
    run = nbmonitor.Run(repo=repo, expect_next_in=eta, grace=run_grace)
    monitor.tick()
    next_tick, ticks = clock.mono() + monitor.TICK, 0
    for _ in range(500):
        run.report_progress()
        clock.advance(0.02)
        if clock.mono() >= next_tick - 1e-9:
            monitor.tick()
            ticks += 1
            next_tick += monitor.TICK * (2 if ticks % 7 == 0 else 1)
        watcher.poll()
        (seen,) = watcher.observe([repo.read_run(run.id)])
        assert seen.state is State.RUNNING, f"{seen.state} after {seen.since_progress:.2f} s"
    assert events == []
    run.close()
    monitor.tick()
    watcher.poll()
    assert [e.kind for e in events] == ["finished"]


# -- restarted jobs: the end of an attempt is told as restarting or gave-up ----------------


def test_a_supervised_crash_is_left_to_its_live_supervisor_and_told_once_it_is_gone(world: World) -> None:
    watcher = world.watcher()
    world.write(pid=77, eta=3600.0, supervisor=SupervisorField(88, None))
    world.dead.add(77)
    watcher.poll()
    watcher.poll()
    assert world.events == []  # nbmonitor-watcher run (pid 88) says how the attempt ended
    assert world.repo.claims("a" * 32) == set()
    world.dead.add(88)  # it was killed before it could: the crash is told as it always was
    watcher.poll()
    assert world.kinds() == ["crashed"]


def test_a_supervised_run_s_stall_and_finish_are_told_as_ever(world: World) -> None:
    watcher = world.watcher()
    run = world.write(eta=1.0, supervisor=SupervisorField(88, None))
    world.clock.advance(3.5)
    watcher.poll()
    world.repo.write_run(run.with_changes(status="finished", ended_at=world.clock.wall()))
    watcher.poll()
    assert world.kinds() == ["stalled", "recovered", "finished"]


@pytest.mark.parametrize(("attempt", "told"), [(0, "restarting"), (1, "restarting"), (2, "gave-up")])
def test_a_torchrun_group_that_fails_is_restarting_until_its_restarts_run_out(
    world: World, attempt: int, told: str
) -> None:
    watcher = world.watcher()
    group = GroupField(f"job-9 restart {attempt}", "torchrun", 0, 2, 0)
    for rank, pid in ((0, 70), (1, 71)):
        world.write(
            f"{rank}" * 32,
            pid=pid,
            eta=3600.0,
            step=30,
            group=GroupField(group.job, "torchrun", rank, 2, rank),
            restart_count=attempt,
            max_restarts=2,
        )
    watcher.poll()
    world.dead.update({70, 71})
    watcher.poll()
    watcher.poll()
    (event,) = world.events
    assert event.kind == told
    assert event.group is not None
    assert event.restart is not None
    assert (event.restart.ended, event.restart.attempt, event.restart.max_restarts) == ("crashed", attempt, 2)
    assert event.restart.by == "torchrun"
    assert event.restart.checkpoint_step is None  # none saved: from the start
    # As claimed, and read back by whoever delivers it.
    assert Event.from_dict(world.repo.read_claim(event.subject, "end")).restart == event.restart
    text = text_for(event)
    if told == "restarting":
        blamed = "rank 0 on box, pid 70: step 30; rank 1 on box, pid 71: step 30"
        assert text.startswith(f"train crashed: {blamed}; restarting {attempt + 1} of 2 ")
        assert "from the start (no checkpoint yet)" in text
    else:
        assert text.startswith(
            "train gave up after 3 attempts: crashed: rank 0 on box, pid 70: step 30; rank 1 "
        )
        assert (
            "; no restarts left (torchrun --max-restarts 2). torchrun job job-9 re…, 2 ranks: 2 crashed."
            in text
        )
