"""Claims: observations turned into events, each claimed once in the repo, and handed to delivery.

``Claimer.claim()`` asks the rules which events a run's state makes due
(``rules.due_events``), claims each in the repo (``outbox.claim_event``: the
pending deliveries first, then the claim, so a crash in between loses
nothing) and emits the ones it won. Several claimers (watchers, kernels)
may look at the same runs; each event is won by exactly one of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from . import _process, rules
from ._once import Trouble
from .config import NotifierConfig
from .events import Event
from .observe import Observation
from .outbox import claim_event
from .repo import Repo
from .templates import describe

__all__ = ["Claimer", "log_event"]

log = logging.getLogger("nbmonitor.watcher")
event_log = logging.getLogger("nbmonitor.events")


def log_event(event: Event) -> None:
    """The built-in logger notifier: one line per event on the watcher's output and log."""
    event_log.info(describe(event))


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
    ) -> None:
        self.repo = repo
        self.notifiers = notifiers  # who wants which event, as the sender knows them now
        self.emit = emit
        self.seen_by = f"{role} {os.getpid()}@{_process.host()}"
        self.wall = wall
        #: Runs whose end is claimed: nothing more can be due for them.
        self.done: set[str] = set()
        self._claimed: dict[str, _Claimed] = {}
        self._trouble = Trouble(log)  # the repo cannot be written: said once per cause

    def claim(self, observations: Iterable[Observation]) -> list[Event]:
        """Claim what each observation makes due; returns the events this claimer won (another
        may have claimed the rest)."""
        now = self.wall()
        won: list[Event] = []
        for obs in observations:
            won += self._claim_due(obs, now)
        return won

    def keep_only(self, run_ids: Collection[str]) -> None:
        """Forget every run but these (the others are gone from the repo)."""
        self._claimed = {k: v for k, v in self._claimed.items() if k in run_ids}
        self.done = {k for k in self.done if k in run_ids}

    def _claim_due(self, obs: Observation, now: float) -> list[Event]:
        run = obs.run
        claimed = self._claimed.get(run.id)
        if claimed is None or claimed.progress != run.progress:
            # New progress: another claimer may have claimed since; read the claims again.
            claimed = self._claimed[run.id] = _Claimed(run.progress, self.repo.claims(run.id))
        won: list[Event] = []
        for due in rules.due_events(obs.state, run.progress, claimed.keys):
            grace = obs.grace if due.event == "stalled" else None
            event = Event(due.event, due.key, run, now, obs.since_progress, grace, self.seen_by)
            targets = [n for n in self.notifiers() if n.wants(due.event)]
            try:
                mine = claim_event(self.repo, event, targets)
            except OSError as e:
                # Claimed and sent once the repo can be written again; said once, not every look.
                cause = e.strerror or str(e)
                message = (
                    "cannot record event %s of run %s in %s (%s); it is reported once the repo can be written"
                )
                self._trouble.happened(cause, message, event.kind, run.id[:8], self.repo.path, cause)
                return won
            self._trouble.over("events are recorded in %s again", self.repo.path)
            claimed.keys.add(due.key)
            if mine:
                won.append(event)
                self.emit(event)
        if obs.state in rules.TERMINAL and rules.END_KEY in claimed.keys:
            self.done.add(run.id)
        return won
