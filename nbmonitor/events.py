"""Events: what happened to a run or a group (stalled, recovered, crashed, ...).

An event is claimed once in the repo (see Repo.claim) and the claim file
holds ``Event.to_dict()``, so whoever delivers it later has all it needs.
An event of a group is claimed under the group's id; its ``run`` is the
member to blame (or the first), and ``group`` says who else is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import NewerFormatError
from .logtail import LogLine
from .record import FORMAT, RunRecord, is_run_id
from .rules import EVENTS, is_event_key

__all__ = ["Event", "GroupInfo", "MemberInfo", "RestartInfo"]

_MAX_BLAMED = 8  # members named in one event at most
#: Lines of its run's log tail an event carries: enough for the longest default (e-mail,
#: webhook); a template shows at most these.
TAIL_LINES = 40


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member of a group, as an event names it."""

    run_id: str
    role: str  # "rank 5", "member"
    host: str
    pid: int
    step: int
    state: str
    since_progress: float
    error: str | None = None
    stuck: str | None = None  # where its thread is stuck (RunRecord.stuck_in)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, data: Any) -> MemberInfo:
        if not isinstance(data, dict):
            raise ValueError(f"a blamed member must be an object, got {type(data).__name__}")
        error = data.get("error")
        member = cls(
            run_id=_text(data, "run_id"),
            role=_text(data, "role"),
            host=_text(data, "host"),
            pid=_count(data, "pid"),
            step=_count(data, "step"),
            state=_text(data, "state"),
            since_progress=_number(data, "since_progress"),
            error=None if error is None else _text(data, "error"),
            stuck=None if data.get("stuck") is None else _text(data, "stuck"),
        )
        if not is_run_id(member.run_id):
            raise ValueError(f"field 'run_id' is not a run id: {member.run_id[:40]!r}")
        return member


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group, as an event tells of it: who is to blame, and how many members are in which state."""

    id: str
    name: str
    job: str
    launcher: str
    mode: str
    size: int  # members seen
    world_size: int | None
    step: int
    total: int | None
    median_step: float
    blamed: tuple[MemberInfo, ...]
    states: tuple[tuple[str, int], ...]  # (state, how many members), in the rules' order

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__slots__}
        data["blamed"] = [m.to_dict() for m in self.blamed]
        data["states"] = [list(pair) for pair in self.states]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> GroupInfo:
        if not isinstance(data, dict):
            raise ValueError(f"field 'group' must be an object, got {type(data).__name__}")
        blamed, states = data.get("blamed"), data.get("states")
        if not isinstance(blamed, list) or len(blamed) > _MAX_BLAMED:
            raise ValueError(f"field 'group.blamed' must be a list of at most {_MAX_BLAMED} members")
        if not isinstance(states, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int
            for p in states
        ):
            raise ValueError("field 'group.states' must be a list of [state, count] pairs")
        world, total = data.get("world_size"), data.get("total")
        info = cls(
            id=_text(data, "id"),
            name=_text(data, "name"),
            job=_text(data, "job"),
            launcher=_text(data, "launcher"),
            mode=_text(data, "mode"),
            size=_count(data, "size"),
            world_size=None if world is None else _count(data, "world_size"),
            step=_count(data, "step"),
            total=None if total is None else _count(data, "total"),
            median_step=_number(data, "median_step"),
            blamed=tuple(MemberInfo.from_dict(m) for m in blamed),
            states=tuple((str(p[0]), int(p[1])) for p in states),
        )
        if not is_run_id(info.id):
            raise ValueError(f"field 'group.id' is not a group id: {info.id[:40]!r}")
        return info


@dataclass(frozen=True, slots=True)
class RestartInfo:
    """How an attempt of a restarted job ended, and what comes next (*restarting*, *gave-up*)."""

    ended: str  # crashed, failed, lost or stalled
    why: str  # "killed by SIGKILL", "exit status 1", "RuntimeError: ...", or nothing
    attempt: int  # the attempt that ended: 0 for the first
    max_restarts: int
    by: str  # who restarts: "nbmonitor-watcher run" or "torchrun"
    #: For *gave-up*: why no restart follows ("no restarts left", a line matching --no-restart-on).
    reason: str = ""
    #: The latest checkpoint of the job, which the next attempt resumes from (None: from the start).
    checkpoint_step: int | None = None
    checkpoint_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, data: Any) -> RestartInfo:
        if not isinstance(data, dict):
            raise ValueError(f"field 'restart' must be an object, got {type(data).__name__}")
        step, at = data.get("checkpoint_step"), data.get("checkpoint_at")
        return cls(
            ended=_text(data, "ended"),
            why=_text(data, "why"),
            attempt=_count(data, "attempt"),
            max_restarts=_count(data, "max_restarts"),
            by=_text(data, "by"),
            reason=_text(data, "reason"),
            checkpoint_step=None if step is None else _count(data, "checkpoint_step"),
            checkpoint_at=None if at is None else _number(data, "checkpoint_at"),
        )


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
    group: GroupInfo | None = None  # an event of a group: ``run`` is its member to blame
    #: The last lines ``run`` logged and printed when the event was claimed (alarms quote them).
    log_tail: tuple[LogLine, ...] = ()
    #: A *restarting* or *gave-up* event: how the attempt ended, and what comes next.
    restart: RestartInfo | None = None

    @property
    def subject(self) -> str:
        """The id the event is claimed under: its group's, or its run's."""
        return self.group.id if self.group is not None else self.run.id

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "event": self.kind,
            "key": self.key,
            "at": self.at,
            "since_progress": self.since_progress,
            "grace": self.grace,
            "seen_by": self.seen_by,
            "run": self.run.to_dict(),
        }
        if self.group is not None:
            data["group"] = self.group.to_dict()
        if self.log_tail:
            data["log_tail"] = [line.to_dict() for line in self.log_tail]
        if self.restart is not None:
            data["restart"] = self.restart.to_dict()
        return data

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
        grace, group, restart = data.get("grace"), data.get("group"), data.get("restart")
        tail = data.get("log_tail", [])
        if not isinstance(tail, list) or len(tail) > TAIL_LINES:
            raise ValueError(f"field 'log_tail' must be a list of at most {TAIL_LINES} lines")
        return cls(
            kind=kind,
            key=key,
            run=RunRecord.from_dict(data["run"]),
            at=_number(data, "at"),
            since_progress=_number(data, "since_progress"),
            grace=None if grace is None else _number(data, "grace"),
            seen_by=seen_by,
            group=None if group is None else GroupInfo.from_dict(group),
            log_tail=tuple(LogLine.from_dict(line) for line in tail),
            restart=None if restart is None else RestartInfo.from_dict(restart),
        )


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if name not in data:
        raise ValueError(f"field {name!r} is missing")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"field {name!r} must be a finite number, got {_shown(value)}")
    return float(value)


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {_shown(value)}")
    return value


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if type(value) is not int or value < 0:
        raise ValueError(f"field {name!r} must be a whole number >= 0, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, str | int | float | bool | None) else type(value).__name__
