"""Events: what happened to a run (stalled, recovered, crashed, ...).

An event is claimed once in the repo (see Repo.claim) and the claim file
holds ``Event.to_dict()``, so whoever delivers it later has all it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import NewerFormatError
from .record import FORMAT, RunRecord
from .rules import EVENTS, is_event_key

__all__ = ["Event"]


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
            "format": FORMAT,
            "event": self.kind,
            "key": self.key,
            "at": self.at,
            "since_progress": self.since_progress,
            "grace": self.grace,
            "seen_by": self.seen_by,
            "run": self.run.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Parse a claim or pending-delivery payload; ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format", FORMAT)
        if type(fmt) is not int or fmt < 1:
            raise ValueError(f"field 'format' must be an integer >= 1, got {fmt!r}")
        if fmt > FORMAT:
            raise NewerFormatError(f"format {fmt} is newer than this nbmonitor understands ({FORMAT})")
        kind, key = data.get("event"), data.get("key")
        if not isinstance(kind, str) or kind not in EVENTS:
            raise ValueError(f"field 'event' must be one of {', '.join(EVENTS)}, got {_shown(kind)}")
        if not is_event_key(key):
            raise ValueError(f"field 'key' must be end, stalled-<n> or recovered-<n>, got {_shown(key)}")
        seen_by = data.get("seen_by", "")
        if not isinstance(seen_by, str):
            raise ValueError(f"field 'seen_by' must be a string, got {_shown(seen_by)}")
        if "run" not in data:
            raise ValueError("field 'run' is missing")
        grace = data.get("grace")
        return cls(
            kind=kind,
            key=key,
            run=RunRecord.from_dict(data["run"]),
            at=_number(data, "at"),
            since_progress=_number(data, "since_progress"),
            grace=None if grace is None else _number(data, "grace"),
            seen_by=seen_by,
        )


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if name not in data:
        raise ValueError(f"field {name!r} is missing")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"field {name!r} must be a finite number, got {_shown(value)}")
    return float(value)


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, str | int | float | bool | None) else type(value).__name__
