"""Events: what happened to a run (stalled, recovered, crashed, ...), and its default text.

An event is claimed once in the repo (see Repo.claim) and the claim file
holds ``Event.to_dict()``, so whoever delivers it later has all it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _format
from .record import RunRecord

__all__ = ["Event", "describe"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one run, as claimed by a watcher or a kernel."""

    kind: str  # one of rules.EVENTS
    key: str  # claim key, unique per run
    run: RunRecord
    at: float  # wall time it was seen
    since_progress: float  # seconds without progress when it was seen
    grace: float | None  # grace that applied (stalls)
    seen_by: str  # "watcher <pid>@<host>" or "kernel <pid>@<host>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "event": self.kind,
            "key": self.key,
            "at": self.at,
            "since_progress": self.since_progress,
            "grace": self.grace,
            "seen_by": self.seen_by,
            "run": self.run.to_dict(),
        }


def describe(event: Event) -> str:
    """The default one-line text: which run, where, what happened, for how long, which step."""
    run = event.run
    who = f"{run.name!r} ({run.origin.describe()}) on {run.host}, pid {run.pid}"
    where = f"step {_format.steps(run.step, run.total)}"
    kind = event.kind
    if kind == "stalled":
        promise = f"promised within {_format.duration(run.eta or 0)}"
        if event.grace is not None:
            promise += f" + {_format.duration(event.grace)} grace"
        what = f"no progress for {_format.duration(event.since_progress)} ({promise})"
    elif kind == "recovered":
        what = "making progress again"
    elif kind == "crashed":
        what = (
            f"process {run.pid} is gone without finishing; "
            f"last progress {_format.duration(event.since_progress)} before"
        )
    elif kind == "failed":
        error = run.error
        what = error.summary() if error else "failed"
        if error and error.where:
            what += f" at {error.where}"
    elif kind == "finished":
        what = f"finished in {_format.duration(_elapsed(run))}"
    elif kind == "interrupted":
        what = f"interrupted after {_format.duration(_elapsed(run))}"
    else:
        what = kind
    return f"{kind.upper()} {who}: {what}; {where} [run {run.id[:8]}]"


def _elapsed(run: RunRecord) -> float:
    return (run.ended_at if run.ended_at is not None else run.updated_at) - run.started_at
