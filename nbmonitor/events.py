"""Events: what happened to a run (stalled, recovered, crashed, ...).

An event is claimed once in the repo (see Repo.claim) and the claim file
holds ``Event.to_dict()``, so whoever delivers it later has all it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import NewerFormatError
from .record import FORMAT, RunRecord

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
        try:
            grace = data.get("grace")
            return cls(
                kind=str(data["event"]),
                key=str(data["key"]),
                run=RunRecord.from_dict(data["run"]),
                at=float(data["at"]),
                since_progress=float(data["since_progress"]),
                grace=None if grace is None else float(grace),
                seen_by=str(data.get("seen_by", "")),
            )
        except KeyError as e:
            raise ValueError(f"field {e.args[0]!r} is missing") from None
        except NewerFormatError:
            raise
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
