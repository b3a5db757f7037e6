"""The run rules: a run's state at a moment, and the events that state makes due.

Pure functions over plain values, no clock reads and no I/O: the kernel's
monitor thread and the standalone watcher both call them with their own
readings, and tests call them with made-up ones.

A run that promised its next progress within ``eta`` seconds is *late* once
that time has passed and *stalled* once a grace period more has passed too
(Aim's rule). A run whose process is gone without reporting an end is
*crashed*, at once, whatever its deadline.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeGuard

__all__ = [
    "END_KEY",
    "EVENTS",
    "HEARTBEATS_MISSED",
    "RESTARTED",
    "STALL_EXIT",
    "TERMINAL",
    "Due",
    "State",
    "default_grace",
    "due_events",
    "end_of_attempt",
    "grace_for",
    "is_event_key",
    "stall_key",
    "state",
    "write_lag",
]

GRACE_SHARE = 0.10
GRACE_MIN = 2.0
GRACE_MAX = 60.0

#: A run on another host is lost when its file was not refreshed for this many heartbeats.
HEARTBEATS_MISSED = 3

#: The write lag of run files that declare none: their writers wrote at most once a second, on a
#: 0.1 s tick, so their progress could trail the process's by that much and a tick more.
LEGACY_WRITE_LAG = 1.2


class State(str, enum.Enum):
    """What a run is doing, as the rules see it."""

    RUNNING = "running"
    LATE = "late"
    STALLED = "stalled"
    FINISHED = "finished"
    FAILED = "failed"
    CRASHED = "crashed"
    LOST = "lost"  # on another host, which stopped answering: it may be dead, we cannot look
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({State.FINISHED, State.FAILED, State.CRASHED, State.LOST, State.INTERRUPTED})

#: Every event name, in the order a run can produce them. *restarting* and *gave-up* end an
#: attempt of a job that is restarted (by ``nbmonitor-watcher run`` or torchrun) in place of its
#: crashed, failed, lost or stalled: one message says what happened and what comes next.
EVENTS = (
    "stalled",
    "recovered",
    "crashed",
    "lost",
    "failed",
    "finished",
    "interrupted",
    "restarting",
    "gave-up",
)

#: The ends of an attempt that a launcher restarts.
RESTARTED = frozenset({"crashed", "failed", "lost"})

#: The error type of a run that ended its own process for its stall (on_stall="exit"), so that
#: its launcher restarts it: in a group, the one that brought the others down.
STALL_EXIT = "Stalled"

#: Claim key of the one terminal event a run can have, whoever sees it first.
END_KEY = "end"


def default_grace(eta: float) -> float:
    """Grace after a missed ETA before a run counts as stalled: 10 % of the ETA, within 2 s..60 s."""
    return min(max(eta * GRACE_SHARE, GRACE_MIN), GRACE_MAX)


def grace_for(eta: float, run_grace: float | None, watcher_grace: float | None = None) -> float:
    """The grace that applies: the run's own, else the watcher's, else the default."""
    if run_grace is not None:
        return run_grace
    if watcher_grace is not None:
        return watcher_grace
    return default_grace(eta)


def write_lag(declared: float | None) -> float:
    """Seconds a run file's progress may trail its process's: what its writer declared, else the
    bound of the writers that declared nothing."""
    return LEGACY_WRITE_LAG if declared is None else declared


def state(
    status: str,
    *,
    alive: bool | None,
    since_progress: float,
    eta: float | None,
    grace: float,
    lag: float = 0.0,
    silent: bool = False,
) -> State:
    """The state of a run whose owner reports ``status``.

    ``alive`` is False when its process is known to be gone, None when it
    cannot be checked (another host); ``silent`` when such a run's writer has
    stopped refreshing its file (its heartbeat). ``since_progress`` is the time since
    its last progress, measured by the caller in a clock it trusts, from a
    view of the run that may trail the run itself by up to ``lag`` seconds
    (a file written now and then): every deadline moves by that much, so a
    run that keeps its promise is never late, whatever its ETA.
    """
    if status != "running":
        return State(status)
    if alive is False:
        return State.CRASHED
    if silent:
        return State.LOST
    if eta is None or since_progress <= eta + lag:
        return State.RUNNING
    if since_progress <= eta + grace + lag:
        return State.LATE
    return State.STALLED


@dataclass(frozen=True, slots=True)
class Due:
    """An event a run's state calls for, and the key that claims it exactly once."""

    event: str
    key: str


def stall_key(progress: int) -> str:
    """Claim key of the stall that began after progress report number ``progress``."""
    return f"stalled-{progress}"


def due_events(current: State, progress: int, claimed: Collection[str]) -> list[Due]:
    """Events due for a run in state ``current`` after ``progress`` progress reports.

    ``claimed`` holds the keys already claimed by anyone. A stall is one
    incident per progress count, so it is reported once however often it is
    seen; it is "recovered" once progress moves past it, or when the run then
    finishes successfully.
    """
    due: list[Due] = []
    for key in sorted(claimed):
        if not key.startswith("stalled-"):
            continue
        stalled_at = _count(key)
        if stalled_at is None or f"recovered-{stalled_at}" in claimed:
            continue
        if stalled_at < progress or current is State.FINISHED:
            due.append(Due("recovered", f"recovered-{stalled_at}"))
    if current is State.STALLED and stall_key(progress) not in claimed:
        due.append(Due("stalled", stall_key(progress)))
    if current in TERMINAL and END_KEY not in claimed:
        due.append(Due(current.value, END_KEY))
    return due


def end_of_attempt(ended: str, attempt: int, max_restarts: int | None) -> str:
    """The event that ends an attempt of a job whose launcher restarts it by itself (torchrun):
    *restarting* while restarts are left, *gave-up* after the last; otherwise ``ended`` as it is."""
    if max_restarts is None or max_restarts < 1 or ended not in RESTARTED:
        return ended
    return "restarting" if attempt < max_restarts else "gave-up"


def is_event_key(key: object) -> TypeGuard[str]:
    """True for a claim key these rules make: ``end``, ``stalled-<n>`` or ``recovered-<n>``."""
    if not isinstance(key, str):
        return False
    if key == END_KEY:
        return True
    kind, sep, count = key.partition("-")
    return bool(sep) and kind in ("stalled", "recovered") and count.isdigit() and count.isascii()


def _count(key: str) -> int | None:
    tail = key.partition("-")[2]
    return int(tail) if tail.isdigit() else None
