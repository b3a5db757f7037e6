"""Groups: membership from launchers' variables, the group's state and straggler, one incident per
group, and members on other hosts judged by their heartbeat. Real repo, injected clocks."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import nbmonitor
from nbmonitor import _writer, membership, rules, templates
from nbmonitor import run as run_module
from nbmonitor.errors import CorruptRecordError
from nbmonitor.groups import combine, gather
from nbmonitor.observe import Observation
from nbmonitor.record import GroupField, RunRecord
from nbmonitor.repo import Repo
from nbmonitor.rules import State

from .helpers import FakeClock
from .records import World, sample

TORCHRUN = {"TORCHELASTIC_RUN_ID": "job-7", "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}


# -- who is a member --------------------------------------------------------------------


def test_torchrun_and_accelerate_variables_make_a_member() -> None:
    found, warning = membership.from_environment(TORCHRUN)
    assert warning is None
    assert found == GroupField("job-7", "torchrun", rank=3, world_size=8, local_rank=1)


def test_each_torchrun_restart_is_a_group_of_its_own() -> None:
    first, _ = membership.from_environment(TORCHRUN | {"TORCHELASTIC_RESTART_COUNT": "0"})
    again, _ = membership.from_environment(TORCHRUN | {"TORCHELASTIC_RESTART_COUNT": "2"})
    assert first is not None
    assert again is not None
    assert first.job == "job-7"
    assert again.job == "job-7 restart 2"


def test_a_multi_task_slurm_step_makes_members_and_a_batch_script_does_not() -> None:
    step = {"SLURM_JOB_ID": "991", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "16"}
    found, _ = membership.from_environment(step | {"SLURM_LOCALID": "1"})
    assert found == GroupField("991.0", "slurm", rank=5, world_size=16, local_rank=1)
    assert membership.from_environment(step | {"SLURM_STEP_ID": "batch"}) == (None, None)
    assert membership.from_environment(step | {"SLURM_NTASKS": "1"}) == (None, None)


def test_open_mpi_and_pmi_ranks_are_members() -> None:
    ompi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_MCA_ess_base_jobid": "123.0"}
    found, _ = membership.from_environment(ompi)
    assert found is not None
    assert (found.launcher, found.job, found.rank, found.world_size) == (
        "mpi",
        "123",
        1,
        4,
    )
    pmi, _ = membership.from_environment({"PMI_RANK": "2", "PMI_SIZE": "3", "PMI_PORT": "node1:4444"})
    assert pmi is not None
    assert (pmi.job, pmi.rank, pmi.world_size) == ("node1:4444", 2, 3)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (TORCHRUN | {"RANK": "three"}, "RANK='three' is not a rank"),
        (TORCHRUN | {"RANK": "9"}, "RANK=9 is not below WORLD_SIZE=8"),
        (TORCHRUN | {"TORCHELASTIC_RUN_ID": ""}, "torchrun gave this process no job id"),
    ],
)
def test_bad_launcher_variables_are_said_and_the_run_is_one_of_its_own(
    env: dict[str, str], said: str
) -> None:
    found, warning = membership.from_environment(env)
    assert found is None
    assert warning is not None
    assert said in warning
    assert "watched as a run of its own" in warning


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"group": " "}, "group must be a non-empty name"),
        ({"group": "g", "rank": -1}, "rank must be a whole number >= 0"),
        ({"group": "g", "rank": 2, "world_size": 2}, "rank 2 is not below world_size 2"),
        ({"rank": 1}, "rank and world_size need a group"),
        ({"group": "g", "mode": "both"}, "mode must be one of lockstep, sharded"),
    ],
)
def test_a_group_given_by_hand_is_checked(repo: Repo, kwargs: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        nbmonitor.Run(repo=repo, **kwargs)


def test_a_run_given_a_group_is_a_member_in_its_file(repo: Repo, monitor: _writer.Writer) -> None:
    run = nbmonitor.watch(name="train", repo=repo, group="sweep-4", rank=1, world_size=2, mode="sharded")
    monitor.tick()
    assert repo.read_run(run.id).group == GroupField("sweep-4", "manual", 1, 2, None, "sharded")


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set a launcher's variables for runs made next in this process."""

    def set_env(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(run_module, "_launch_cache", {})

    return set_env


def test_the_same_code_joins_its_launchers_group_by_itself(
    repo: Repo, monitor: _writer.Writer, launched: Any
) -> None:
    launched(TORCHRUN)
    run = nbmonitor.Run(name="train", repo=repo)
    monitor.tick()
    assert repo.read_run(run.id).group == GroupField("job-7", "torchrun", 3, 8, 1)


def test_a_bad_rank_is_warned_of_once_and_the_run_is_still_watched(
    repo: Repo, monitor: _writer.Writer, launched: Any, caplog: pytest.LogCaptureFixture
) -> None:
    launched(TORCHRUN | {"RANK": "x1"})
    with caplog.at_level(logging.WARNING, logger="nbmonitor"):
        runs = [nbmonitor.Run(name="train", repo=repo) for _ in range(3)]
    monitor.tick()
    said = "nbmonitor: RANK='x1' is not a rank; this run is watched as a run of its own, not as a torchrun "
    assert [r.getMessage() for r in caplog.records].count(said + "member") == 1
    assert all(repo.read_run(r.id).group is None for r in runs)


# -- the group's state and whom it blames ------------------------------------------------


def member(
    rank: int | None, state: State = State.RUNNING, *, step: int = 10, since: float = 1.0, **changes: Any
) -> Observation:
    group = GroupField("job", "torchrun", rank, 4, rank, changes.pop("mode", "lockstep"))
    fields: dict[str, Any] = {"id": f"{(rank or 0) + 1:032x}", "pid": 100 + (rank or 0)}
    run = sample(**(fields | {"step": step, "progress": step, "group": group} | changes))
    return Observation(run, state, since, 2.0)


def test_lockstep_ranks_show_the_group_at_the_slowest_rank_and_sharded_members_add_up() -> None:
    ranks = [member(0, step=12), member(1, step=9), member(2, step=11)]
    assert combine(ranks).step == 9
    assert combine(ranks).median_step == 11
    shards = [member(r, step=s, mode="sharded", total=50) for r, s in ((0, 12), (1, 9), (2, 11))]
    assert (combine(shards).step, combine(shards).total) == (32, 150)


def test_the_rank_that_stopped_first_is_blamed_and_not_those_waiting_behind_it() -> None:
    group = combine(
        [
            member(0, State.STALLED, step=1200, since=95, waiting="all_reduce"),
            member(1, State.STALLED, step=1200, since=95),
            member(2, State.STALLED, step=1200, since=94.5, waiting="all_reduce"),
        ]
    )
    assert group.state is State.STALLED
    assert [m.run.group.rank for m in group.blamed if m.run.group] == [1]


def test_a_hung_rank_still_only_late_is_blamed_when_one_waiting_for_it_stalls_first() -> None:
    # Their deadlines are a writer's tick apart: the one waiting in all_reduce may cross first.
    group = combine(
        [
            member(0, State.LATE, step=10, since=2.1, waiting="all_reduce"),
            member(1, State.LATE, step=10, since=2.1),
            member(2, State.STALLED, step=10, since=2.2, waiting="all_reduce"),
        ]
    )
    assert group.state is State.STALLED
    assert [m.run.group.rank for m in group.blamed if m.run.group] == [1]
    sharded = combine([member(0, State.STALLED, step=30, mode="sharded"), member(1, State.LATE, step=5)])
    assert [m.run.pid for m in sharded.blamed] == [100]  # no one waits for anyone: the stalled one


def test_the_group_alarm_names_where_the_straggler_is_stuck() -> None:
    from nbmonitor import templates
    from nbmonitor.events import Event
    from nbmonitor.record import StackFrame

    stuck = (StackFrame("wait_for_batch", "/w/data.py", 42), StackFrame("train", "/w/train.py", 88))
    waiting = (StackFrame("all_reduce", "/t/distributed_c10d.py", 2501),)
    group = combine(
        [
            member(
                0, State.STALLED, step=1200, since=95, waiting="all_reduce", stack=waiting, stack_at=2050.0
            ),
            member(1, State.STALLED, step=1200, since=95, stack=stuck, stack_at=2050.0),
        ]
    )
    event = Event("stalled", "stalled-2400", group.members[0].run, 2100.0, 95.0, 3.0, "test", group.info())
    text = templates.text_for(event)
    assert (
        "rank 1 on box, pid 101: step 1200, no progress for 1 min 35 s, "
        "stuck in wait_for_batch (data.py:42) ← train (train.py:88)" in text
    )
    assert "all_reduce (distributed_c10d.py" not in text  # the ranks waiting behind it are not named


def test_without_a_collective_to_see_the_lowest_step_then_the_longest_silence_is_blamed() -> None:
    lowest = combine([member(0, State.STALLED, step=1240), member(5, State.STALLED, step=1200)])
    assert [m.run.pid for m in lowest.blamed] == [105]
    longest = combine([member(0, State.STALLED, since=30), member(1, State.STALLED, since=95)])
    assert [m.run.pid for m in longest.blamed] == [101]


def test_a_crashed_member_brings_the_group_down_and_is_named_over_the_ranks_that_failed_after() -> None:
    group = combine(
        [
            member(0, State.FAILED, status="failed"),
            member(1, State.CRASHED),
            member(2, State.CRASHED, waiting="all_reduce"),  # torn down behind it
        ]
    )
    assert group.state is State.CRASHED
    assert [m.run.pid for m in group.blamed] == [101]


def test_a_rank_that_ended_for_its_stall_is_named_over_the_ranks_its_launcher_killed_after() -> None:
    # on_stall="exit": the hung rank ends its process; torchrun then kills the one waiting for it.
    from nbmonitor.record import ErrorInfo

    stalled = ErrorInfo(rules.STALL_EXIT, "no progress for 12 s", None)
    group = combine(
        [
            member(0, State.CRASHED, step=29, waiting="all_reduce"),
            member(1, State.FAILED, step=29, status="failed", error=stalled),
        ]
    )
    assert group.state is State.FAILED
    assert [m.run.pid for m in group.blamed] == [101]
    waited = ErrorInfo(rules.STALL_EXIT, "no progress for 22 s", None)  # it left after its wait
    both = combine(
        [
            member(0, State.FAILED, step=29, status="failed", error=waited, waiting="all_reduce"),
            member(1, State.FAILED, step=29, status="failed", error=stalled),
        ]
    )
    assert [m.run.pid for m in both.blamed] == [101]


def test_a_group_finishes_when_every_member_has() -> None:
    assert combine([member(0, State.FINISHED), member(1, State.RUNNING)]).state is State.RUNNING
    assert combine([member(0, State.FINISHED), member(1, State.FINISHED)]).state is State.FINISHED


def test_two_members_claiming_one_rank_are_a_problem_said_and_both_still_watched() -> None:
    group = combine([member(1), member(1, pid=999, id="f" * 32), member(2)])
    assert group.problems == ("2 members claim rank 1",)
    assert len(group.members) == 3


def test_runs_of_another_job_with_the_same_name_are_another_group() -> None:
    mine = member(0)
    other = Observation(
        mine.run.with_changes(id="e" * 32, group=GroupField("job-2", "torchrun", 0, 4)), State.RUNNING, 1.0
    )
    alone, groups = gather([mine, other, Observation(sample(id="d" * 32), State.RUNNING, 1.0)])
    assert len(alone) == 1
    assert len(groups) == 2
    assert {g.membership.job for g in groups} == {"job", "job-2"}


def test_the_stalled_text_names_the_straggler_its_host_pid_step_and_lag() -> None:
    group = combine(
        [
            member(r, State.STALLED, step=1240, since=80, waiting="all_reduce", host=f"node{r}")
            for r in (0, 1, 2)
        ]
        + [member(3, State.STALLED, step=1200, since=95, host="node3")]
    )
    from nbmonitor.events import Event

    event = Event(
        "stalled", "stalled-x", group.blamed[0].run, 0.0, group.since_progress, 2.0, "w", group.info()
    )
    text = templates.text_for(event)
    assert "rank 3 on node3, pid 103: step 1200, 40 behind the median, no progress for 1 min 35 s" in text
    assert "torchrun job job, 4 ranks: 4 stalled" in text


# -- one incident for the group, through the watcher ---------------------------------------


@pytest.fixture
def world(repo: Repo, clock: FakeClock) -> World:
    return World(repo, clock)


def write_members(world: World, count: int = 3, **changes: Any) -> list[RunRecord]:
    return [
        world.write(
            f"{rank + 1:032x}",
            pid=200 + rank,
            group=GroupField("job-9", "torchrun", rank, count, rank),
            **changes,
        )
        for rank in range(count)
    ]


def test_a_hung_rank_makes_one_stalled_event_for_the_group_naming_it_then_one_recovered(world: World) -> None:
    watcher = world.watcher()
    members = write_members(world, eta=1.0)
    world.clock.advance(2.0)
    for record in (members[0], members[2]):  # they get one step further, then wait in all_reduce
        world.repo.write_run(world.progress(record).with_changes(waiting="all_reduce"))
    world.clock.advance(0.9)
    watcher.poll()
    assert world.kinds() == []
    world.clock.advance(0.2)  # rank 1: 3.1 s without progress, past ETA 1 s + grace 2 s
    for _ in range(3):
        watcher.poll()
    assert world.kinds() == ["stalled"]
    stalled = world.events[0]
    assert stalled.group is not None
    assert stalled.subject == stalled.group.id
    assert [m.role for m in stalled.group.blamed] == ["rank 1"]
    assert stalled.run.pid == 201
    world.clock.advance(10)  # the others stall behind it: no alarm of their own
    watcher.poll()
    assert world.kinds() == ["stalled"]
    for record in members:
        world.progress(world.repo.read_run(record.id).with_changes(waiting=None))
    watcher.poll()
    assert world.kinds() == ["stalled", "recovered"]


def test_a_crashed_rank_is_one_group_event_even_as_the_others_are_torn_down(world: World) -> None:
    watcher = world.watcher()
    write_members(world, count=4, eta=60.0)
    watcher.poll()
    world.dead.add(202)
    watcher.poll()
    world.dead.update({200, 201, 203})  # the launcher tears the rest down
    for _ in range(3):
        watcher.poll()
    assert world.kinds() == ["crashed"]
    crashed = world.events[0]
    assert crashed.group is not None
    assert [m.role for m in crashed.group.blamed] == ["rank 2"]
    assert "rank 2 on box, pid 202" in templates.text_for(crashed)
    assert world.repo.claims(crashed.group.id) == {"end"}
    assert all(world.repo.claims(f"{rank + 1:032x}") == set() for rank in range(4))


def test_the_group_finishes_once_when_the_last_member_does(world: World) -> None:
    watcher = world.watcher()
    members = write_members(world, eta=60.0)
    for i, record in enumerate(members):
        watcher.poll()
        assert world.kinds() == []
        world.repo.write_run(record.with_changes(status="finished", ended_at=world.clock.wall(), step=10 + i))
    watcher.poll()
    watcher.poll()
    assert world.kinds() == ["finished"]


def test_two_members_claiming_one_rank_are_warned_of_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = world.watcher()
    write_members(world, count=2)
    world.write("f" * 32, pid=299, group=GroupField("job-9", "torchrun", 1, 2, 1))
    with caplog.at_level(logging.WARNING, logger="nbmonitor"):
        for _ in range(3):
            watcher.poll()
    said = [r.getMessage() for r in caplog.records if "claim rank" in r.getMessage()]
    assert len(said) == 1
    assert "3 members in a world of 2" not in said[0]
    assert "2 members claim rank 1" in said[0]


# -- other hosts: a heartbeat ---------------------------------------------------------------


def remote(world: World, **changes: Any) -> RunRecord:
    fields: dict[str, Any] = {"host": "node-b", "boot_id": "other-boot", "heartbeat": 1.0, "eta": 3600.0}
    return world.write(**(fields | changes))


def test_a_remote_run_whose_file_keeps_being_refreshed_is_never_lost(world: World) -> None:
    watcher = world.watcher(interval=0.5)
    record = remote(world)
    for _beat in range(20):
        world.clock.advance(1.0)
        record = record.with_changes(updated_at=record.updated_at + 1.0)
        world.repo.write_run(record)
        watcher.poll()
    assert world.kinds() == []


def test_a_remote_run_is_lost_after_three_missed_heartbeats_and_a_poll(world: World) -> None:
    watcher = world.watcher(interval=0.5)
    remote(world)
    watcher.poll()
    world.clock.advance(3.5)  # three heartbeats and a poll: not yet
    watcher.poll()
    assert world.kinds() == []
    world.clock.advance(0.1)
    watcher.poll()
    watcher.poll()
    assert world.kinds() == ["lost"]
    assert "its host node-b stopped answering" in templates.text_for(world.events[0])


def test_a_remote_clock_an_hour_off_raises_no_false_alarm(world: World) -> None:
    watcher = world.watcher(interval=0.5)
    record = remote(world, eta=2.0)
    for _ in range(30):  # its clock is an hour behind, and moves: only its changes count
        world.clock.advance(0.5)
        record = world.progress(record).with_changes(updated_at=world.clock.wall() - 3600)
        world.repo.write_run(record.with_changes(last_progress_at=world.clock.wall() - 3600))
        watcher.poll()
    assert world.kinds() == []


def test_a_remote_run_that_ended_is_not_lost_when_its_file_stops_changing(world: World) -> None:
    watcher = world.watcher(interval=0.5)
    remote(world, status="finished", ended_at=world.clock.wall())
    watcher.poll()
    world.clock.advance(60)
    watcher.poll()
    assert world.kinds() == ["finished"]


def test_a_bad_group_in_a_run_file_is_a_clear_error(repo: Repo) -> None:
    data = sample().to_dict() | {"group": {"job": "j", "launcher": "kubectl"}}
    with pytest.raises(
        ValueError, match=r"field 'group\.launcher' must be one of torchrun, slurm, mpi, manual"
    ):
        RunRecord.from_dict(data)
    data["group"] = {"job": "j", "launcher": "torchrun", "rank": "1"}
    with pytest.raises(ValueError, match=r"field 'group\.rank' must be a non-negative integer, got '1'"):
        RunRecord.from_dict(data)
    path = repo.runs_dir / f"{'0' * 32}.json"
    repo.ensure()
    path.write_text('{"format": 1, "group": 3}')
    with pytest.raises(CorruptRecordError):
        repo.read_run("0" * 32)
