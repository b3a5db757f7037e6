"""Claims: observations of runs and groups turned into events, each claimed once, handed to delivery.

``Claimer.claim()`` asks the rules which events a run's state makes due
(``rules.due_events``), claims each in the repo (``outbox.claim_event``: the
pending deliveries first, then the claim, so a crash in between loses
nothing) and emits the ones it won. Several claimers (watchers, kernels)
may look at the same runs; each event is won by exactly one of them. A
group's events are claimed under its id (nbmonitor.groups): its members
raise none of their own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from . import _process, rules
from ._once import Trouble
from .config import NotifierConfig
from .events import TAIL_LINES, Event, RestartInfo
from .groups import GroupObservation
from .logtail import LogLine
from .observe import Observation
from .outbox import claim_event
from .record import RunRecord
from .repo import Repo
from .templates import describe

__all__ = ["Claimer", "log_event", "restart_info"]

log = logging.getLogger("nbmonitor.watcher")
event_log = logging.getLogger("nbmonitor.events")


def log_event(event: Event) -> None:
    """The built-in logger notifier: one line per event on the watcher's output and log."""
    event_log.info(describe(event))


#: The events whose alarms quote what the run said last.
_TOLD_WITH_TAIL = frozenset({"stalled", "crashed", "lost", "failed", "restarting", "gave-up"})


def restart_info(
    repo: Repo,
    run: RunRecord,
    *,
    attempt: int,
    ended: str,
    why: str,
    by: str,
    max_restarts: int,
    reason: str = "",
) -> RestartInfo:
    """What a *restarting* or *gave-up* event of ``run``'s attempt tells: how it ended, and the
    latest checkpoint of its job (the next attempt resumes from it)."""
    from . import checkpoints  # here: only the end of a restarted attempt needs it

    latest = checkpoints.latest(repo, run.job) if run.job is not None else None
    return RestartInfo(
        ended=ended,
        why=why,
        attempt=attempt,
        max_restarts=max_restarts,
        by=by,
        reason=reason,
        checkpoint_step=latest.step if latest is not None else None,
        checkpoint_at=latest.at if latest is not None else None,
    )


@dataclass(slots=True)
class _Claimed:
    progress: int  # the run's progress count when the keys were read
    keys: set[str]


class Claimer:
    """Claims the events that observations make due, for one repo."""

    def __init__(
        self,
        repo: Repo,
        *,
        notifiers: Callable[[], Sequence[NotifierConfig]] = tuple,
        emit: Callable[[Event], None] = log_event,
        role: str = "watcher",
        wall: Callable[[], float] = time.time,
        outside: Callable[[RunRecord], RunRecord] | None = None,
    ) -> None:
        self.repo = repo
        #: For a stalled run whose process did not say where it is stuck: the record with a stack
        #: read from outside (a watcher's py-spy), or saying why there is none.
        self.outside = outside
        self.notifiers = notifiers  # who wants which event, as the sender knows them now
        self.emit = emit
        self.seen_by = f"{role} {os.getpid()}@{_process.host()}"
        self.wall = wall
        #: Runs whose end is claimed: nothing more can be due for them.
        self.done: set[str] = set()
        self._claimed: dict[str, _Claimed] = {}  # by run or group id
        #: The groups seen, by id: their members' run ids (kept while any is in the repo).
        self.groups: dict[str, set[str]] = {}
        self._trouble = Trouble(log)  # the repo cannot be written: said once per cause
        #: The runs and groups whose due event the last ``claim()`` could not record: look again.
        self.unrecorded: set[str] = set()

    def claim(
        self, observations: Iterable[Observation], groups: Iterable[GroupObservation] = ()
    ) -> list[Event]:
        """Claim what each run's and each group's state makes due; returns the events this
        claimer won (another may have claimed the rest)."""
        now = self.wall()
        won: list[Event] = []
        self.unrecorded.clear()
        for obs in observations:
            event = partial(self._event, obs, now)
            won += self._claim_due(obs.run.id, obs.state, obs.run.progress, event, obs.run, obs.supervised)
        for group in groups:
            self.groups[group.id] = {m.run.id for m in group.members}
            subject = (group.blamed or group.members)[0].run
            supervised = any(m.supervised for m in group.members)
            event = partial(self._group_event, group, now)
            won += self._claim_due(group.id, group.state, group.progress, event, subject, supervised)
            if group.id in self.done:
                self.done.update(m.run.id for m in group.members)  # nothing more for its members either
        return won

    def keep_only(self, run_ids: Collection[str]) -> None:
        """Forget every run but these (the others are gone from the repo), and groups with none of them."""
        self.groups = {k: ids for k, ids in self.groups.items() if any(i in run_ids for i in ids)}
        self._claimed = {k: v for k, v in self._claimed.items() if k in run_ids or k in self.groups}
        self.done = {k for k in self.done if k in run_ids or k in self.groups}

    def forget(self, run_id: str, group: str | None = None) -> None:
        """Forget a run gone from the repo (and its group, when it was the last member)."""
        self._claimed.pop(run_id, None)
        self.done.discard(run_id)
        if group is not None:
            self.groups.pop(group, None)
            self._claimed.pop(group, None)
            self.done.discard(group)

    def _claim_due(
        self,
        subject: str,
        state: rules.State,
        progress: int,
        event: Callable[[rules.Due], Event],
        run: RunRecord,
        supervised: bool,
    ) -> list[Event]:
        claimed = self._claimed.get(subject)
        if claimed is None or claimed.progress != progress:
            # New progress: another claimer may have claimed since; read the claims again.
            claimed = self._claimed[subject] = _Claimed(progress, self.repo.claims(subject))
        won: list[Event] = []
        for due in rules.due_events(state, progress, claimed.keys):
            if due.key == rules.END_KEY and due.event in rules.RESTARTED:
                kind = rules.end_of_attempt(due.event, run.restart_count, run.max_restarts)
                if kind != "restarting" and supervised:
                    continue  # its nbmonitor-watcher run says how the attempt ended, and what next
                due = rules.Due(kind, due.key)
            made = event(due)
            targets = [n for n in self.notifiers() if n.wants(due.event)]
            try:
                mine = claim_event(self.repo, made, targets)
            except OSError as e:
                # Claimed and sent once the repo can be written again; said once, not every look.
                cause = e.strerror or str(e)
                message = (
                    "cannot record event %s of %s in %s (%s); it is reported once the repo can be written"
                )
                self._trouble.happened(cause, message, made.kind, subject[:8], self.repo.path, cause)
                self.unrecorded.add(subject)
                return won
            self._trouble.over("events are recorded in %s again", self.repo.path)
            claimed.keys.add(due.key)
            if mine:
                won.append(made)
                self.emit(made)
        if state in rules.TERMINAL and rules.END_KEY in claimed.keys:
            self.done.add(subject)
        return won

    def _event(self, obs: Observation, now: float, due: rules.Due) -> Event:
        grace = obs.grace if due.event == "stalled" else None
        run = obs.run
        if due.event == "stalled" and self.outside is not None and run.stuck_in is None:
            run = self.outside(run)
        tail = self._tail(due.event, run.id)
        restart = self._restart(due.event, obs.state.value, run)
        return Event(
            due.event, due.key, run, now, obs.since_progress, grace, self.seen_by, None, tail, restart
        )

    def _group_event(self, group: GroupObservation, now: float, due: rules.Due) -> Event:
        # The event speaks of the member to blame (or the first): its host, pid and step.
        subject = group.blamed[0] if group.blamed else group.members[0]
        grace = subject.grace if due.event == "stalled" else None
        return Event(
            due.event,
            due.key,
            subject.run,
            now,
            group.since_progress,
            grace,
            self.seen_by,
            group.info(),
            self._tail(due.event, subject.run.id),
            self._restart(due.event, group.state.value, subject.run),
        )

    def _restart(self, kind: str, ended: str, run: RunRecord) -> RestartInfo | None:
        """For the end of an attempt that torchrun restarts (or gave up restarting): how it
        ended and the checkpoint the next attempt resumes from."""
        if kind not in ("restarting", "gave-up") or run.max_restarts is None:
            return None
        last = kind == "gave-up"
        return restart_info(
            self.repo,
            run,
            attempt=run.restart_count,
            ended=ended,
            why=run.error.summary() if run.error is not None else "",
            by="torchrun",
            max_restarts=run.max_restarts,
            reason=f"no restarts left (torchrun --max-restarts {run.max_restarts})" if last else "",
        )

    def _tail(self, kind: str, run_id: str) -> tuple[LogLine, ...]:
        """What the run said last, for an alarm about it (read when the event is claimed, so
        every notifier and every retry quotes the same lines)."""
        if kind not in _TOLD_WITH_TAIL:
            return ()
        return self.repo.log_tail(run_id, TAIL_LINES)
