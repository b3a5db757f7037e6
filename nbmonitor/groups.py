"""Groups: the members of one job (torchrun ranks, SLURM tasks, MPI ranks) judged as one.

Each member writes its own run file (nbmonitor.membership). Readers gather
the observations of the members that share a group id and ``combine`` them:
one state for the job, its step (the slowest rank's, or the members' added
up when they share a pool of work), and the members to blame for it. The
group has incidents, not its members: a rank that hangs in an all-reduce
leaves the others waiting behind it, and only the one that stopped first is
named. Pure: observations in, a GroupObservation out.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .events import GroupInfo, MemberInfo
from .membership import group_id
from .observe import Observation
from .record import GroupField
from .rules import EVENTS, STALL_EXIT, State

__all__ = ["GroupObservation", "combine", "gather", "role"]

_MAX_BLAMED = 8
_BAD_ENDS = (State.CRASHED, State.LOST)
# Members whose last progress is this close to the oldest count as stopping together.
_TOGETHER = 1.0


@dataclass(frozen=True, slots=True)
class GroupObservation:
    """A group at one moment: its members, one state, and whom to blame."""

    id: str
    name: str
    membership: GroupField  # job, launcher, mode and world size, as its members say
    members: tuple[Observation, ...]  # by rank
    state: State
    step: int
    total: int | None
    progress: int  # the members' progress counts added up: it only grows (incident keys)
    since_progress: float
    blamed: tuple[Observation, ...]
    median_step: float
    problems: tuple[str, ...]  # what does not add up (two members claiming one rank, ...)

    def info(self) -> GroupInfo:
        """What an event tells of the group."""
        counts = Counter(m.state.value for m in self.members)
        order = ["running", "late", *EVENTS]
        states = tuple((s, counts[s]) for s in dict.fromkeys(order) if counts[s])
        return GroupInfo(
            id=self.id,
            name=self.name,
            job=self.membership.job,
            launcher=self.membership.launcher,
            mode=self.membership.mode,
            size=len(self.members),
            world_size=self.membership.world_size,
            step=self.step,
            total=self.total,
            median_step=self.median_step,
            blamed=tuple(_member_info(m) for m in self.blamed[:_MAX_BLAMED]),
            states=states,
        )


def role(obs: Observation) -> str:
    """How a person names a member: ``rank 3``, or ``member`` without a rank."""
    group = obs.run.group
    return f"rank {group.rank}" if group is not None and group.rank is not None else "member"


def gather(observations: Iterable[Observation]) -> tuple[list[Observation], list[GroupObservation]]:
    """Split observations into runs of their own and groups (members by group id)."""
    alone: list[Observation] = []
    members: dict[str, list[Observation]] = {}
    for obs in observations:
        group = obs.run.group
        if group is None:
            alone.append(obs)
        else:
            members.setdefault(group_id(group.job, obs.run.name), []).append(obs)
    return alone, [combine(found) for found in members.values()]


def combine(members: list[Observation]) -> GroupObservation:
    """One group from the observations of its members (all with the same group id)."""
    ordered = tuple(sorted(members, key=_order))
    first = ordered[0].run
    assert first.group is not None
    membership = first.group
    state, blamed = _judge(ordered)
    steps = [m.run.step for m in ordered]
    lockstep = membership.mode == "lockstep"
    running = [m for m in ordered if m.state not in (State.FINISHED,)] or list(ordered)
    step = min(m.run.step for m in running) if lockstep else sum(steps)
    totals = [m.run.total for m in ordered]
    if None in totals:
        total = None
    else:
        total = (
            max(t for t in totals if t is not None) if lockstep else sum(t for t in totals if t is not None)
        )
    pending = [m for m in ordered if m.state not in (State.FINISHED, State.INTERRUPTED)] or list(ordered)
    since = max(m.since_progress for m in blamed) if blamed else min(m.since_progress for m in pending)
    return GroupObservation(
        id=group_id(membership.job, first.name),
        name=first.name,
        membership=membership,
        members=ordered,
        state=state,
        step=step,
        total=total,
        progress=sum(m.run.progress for m in ordered),
        since_progress=since,
        blamed=blamed,
        median_step=float(statistics.median(steps)),
        problems=_problems(ordered),
    )


def _judge(members: tuple[Observation, ...]) -> tuple[State, tuple[Observation, ...]]:
    """The group's state and the members to blame for it."""
    exited = [m for m in members if _ended_for_stall(m)]
    if exited:  # a straggler ended its process for its stall; its launcher stopped the rest
        return State.FAILED, _stragglers(exited)
    gone = [m for m in members if m.state in _BAD_ENDS]
    if gone:  # the first to go brought the rest down: name the one that got least far
        state = State.CRASHED if any(m.state is State.CRASHED for m in gone) else State.LOST
        return state, _stragglers(gone)
    failed = [m for m in members if m.state is State.FAILED]
    if failed:
        return State.FAILED, _stragglers(failed)
    stalled = [m for m in members if m.state is State.STALLED]
    if stalled:
        # The ranks waiting behind a hung one stall too, and one of them may cross its deadline
        # a tick before the hung one, still only late then: it is the one to name.
        if any(m.run.waiting for m in stalled):
            stalled += [m for m in members if m.state is State.LATE and not m.run.waiting]
        return State.STALLED, _stragglers(stalled)
    late = [m for m in members if m.state is State.LATE]
    if late:
        return State.LATE, _stragglers(late)
    if all(m.state is State.FINISHED for m in members):
        return State.FINISHED, ()
    if all(m.state in (State.FINISHED, State.INTERRUPTED) for m in members):
        return State.INTERRUPTED, ()
    return State.RUNNING, ()


def _ended_for_stall(obs: Observation) -> bool:
    error = obs.run.error
    return obs.state is State.FAILED and error is not None and error.type == STALL_EXIT


def _stragglers(candidates: list[Observation]) -> tuple[Observation, ...]:
    """Those not waiting in a collective call for the others (when some are); of them, those that
    got least far; of those, the ones that have made no progress the longest."""
    candidates = [m for m in candidates if not m.run.waiting] or candidates
    lowest = min(m.run.step for m in candidates)
    behind = [m for m in candidates if m.run.step == lowest]
    oldest = max(m.since_progress for m in behind)
    return tuple(m for m in behind if m.since_progress >= oldest - _TOGETHER)


def _problems(members: tuple[Observation, ...]) -> tuple[str, ...]:
    found = []
    ranks = Counter(m.run.group.rank for m in members if m.run.group and m.run.group.rank is not None)
    found += [f"{n} members claim rank {rank}" for rank, n in sorted(ranks.items()) if n > 1]
    sizes = {m.run.group.world_size for m in members if m.run.group and m.run.group.world_size is not None}
    if len(sizes) > 1:
        found.append(f"members disagree on the world size ({', '.join(str(s) for s in sorted(sizes))})")
    elif sizes and len(members) > max(sizes):
        found.append(f"{len(members)} members in a world of {max(sizes)}")
    return tuple(found)


def _order(obs: Observation) -> tuple[int, int, float]:
    group = obs.run.group
    rank = group.rank if group is not None and group.rank is not None else -1
    return (rank < 0, rank, obs.run.started_at)


def _member_info(obs: Observation) -> MemberInfo:
    run = obs.run
    error = run.error.summary() if run.error else None
    return MemberInfo(
        run.id,
        role(obs),
        run.host,
        run.pid,
        run.step,
        obs.state.value,
        obs.since_progress,
        error,
        run.stuck_in,
    )
