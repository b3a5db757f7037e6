"""The notifier configuration: one file in the repo, 0600, changed only under its lock.

``notifiers.json`` holds ``{"format": 1, "notifiers": [...]}``; each entry
is a NotifierConfig (docs/repo-format.md has the fields). The CLI, the
configure() form and every watcher read and write it through NotifierStore;
every write is validated first, so nothing invalid is ever saved.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import CorruptRecordError, NbmonitorError
from .fields import ConfigError
from .notifiers import DEFAULT_TIMEOUT, TYPES, Notifier
from .repo import Repo, make_private, owned, write_atomic
from .rules import EVENTS

__all__ = ["DEFAULT_EVENTS", "NotifierConfig", "NotifierStore", "UnknownNotifierError"]

FORMAT = 1

#: The events a notifier gets unless told otherwise; finished and interrupted are opt-in.
DEFAULT_EVENTS = ("stalled", "crashed", "lost", "failed", "recovered", "restarting", "gave-up")
#: The defaults before restarts had events of their own. A notifier saved with exactly these
#: gets today's: restarting and gave-up take the place of crashed and failed for a restarted job,
#: which would otherwise go untold.
_DEFAULTS_BEFORE = ("stalled", "crashed", "lost", "failed", "recovered")


class UnknownNotifierError(NbmonitorError, LookupError):
    """No notifier (or more than one) has that id or id prefix."""


@dataclass(frozen=True)
class NotifierConfig:
    """One configured notifier. Its repr masks secrets."""

    type: str
    args: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = DEFAULT_EVENTS
    templates: Mapping[str, str] = field(default_factory=dict)
    message: str | None = None
    enabled: bool = True
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def wants(self, event: str) -> bool:
        return self.enabled and event in self.events

    def notifier(self, timeout: float | None = None, repo: Repo | None = None) -> Notifier:
        """The notifier, sending from ``repo`` (where the logger notifier writes its lines)."""
        cls = TYPES[self.type]
        return cls(self.args, DEFAULT_TIMEOUT if timeout is None else timeout, repo)

    def target(self, repo: Repo | None = None) -> str:
        return self.notifier(repo=repo).target()

    def shown_args(self) -> dict[str, str]:
        """Each argument as it may be shown: secrets masked."""
        return {f.name: f.show(self.args.get(f.name)) for f in TYPES[self.type].fields}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "enabled": self.enabled,
            "args": dict(self.args),
            "events": list(self.events),
            "templates": dict(self.templates),
            "message": self.message,
        }

    def __repr__(self) -> str:
        return (
            f"NotifierConfig(id={self.id!r}, type={self.type!r}, enabled={self.enabled}, "
            f"args={self.shown_args()!r}, events={list(self.events)!r})"
        )

    @classmethod
    def create(
        cls,
        type: str,
        args: Mapping[str, Any] | None = None,
        events: Any = None,
        templates: Mapping[str, str] | None = None,
        message: str | None = None,
        enabled: bool = True,
        id: str | None = None,
    ) -> NotifierConfig:
        """A validated config: unknown types, missing or bad fields and unknown events raise
        ConfigError naming the field (secrets masked)."""
        if type not in TYPES:
            raise ConfigError("type", f"unknown notifier type {str(type)[:40]!r}; known: {', '.join(TYPES)}")
        spec = TYPES[type].fields
        given = dict(args or {})
        unknown = sorted(set(given) - {f.name for f in spec})
        if unknown:
            raise ConfigError(unknown[0] or "args", f"{type} notifiers have no setting {unknown[0]!r}")
        parsed = {f.name: f.parse(given.get(f.name)) for f in spec}
        if not isinstance(enabled, bool):
            raise ConfigError("enabled", f"must be true or false, got {enabled!r}")
        return cls(
            type=type,
            args={k: v for k, v in parsed.items() if v is not None},
            events=_events(DEFAULT_EVENTS if events is None else events),
            templates=_templates(templates or {}),
            message=_message(message),
            enabled=enabled,
            id=_uuid(id) if id is not None else str(uuid.uuid4()),
        )

    @classmethod
    def from_dict(cls, data: Any) -> NotifierConfig:
        if not isinstance(data, dict):
            raise ConfigError("notifier", f"must be an object, got {type(data).__name__}")
        events = data.get("events")
        if isinstance(events, list) and tuple(events) == _DEFAULTS_BEFORE:
            events = None
        return cls.create(
            type=str(data.get("type")),
            args=_mapping("args", data.get("args", {})),
            events=events,
            templates=_mapping("templates", data.get("templates") or {}),
            message=data.get("message"),
            enabled=data.get("enabled", True),
            id=data.get("id"),
        )


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(name, f"must be an object, got {type(value).__name__}")
    return value


def _events(value: Any) -> tuple[str, ...]:
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError("events", f"must be a list of event names, got {value!r}")
    for name in names:
        if name not in EVENTS:
            raise ConfigError("events", f"unknown event {name[:40]!r}; known: {', '.join(EVENTS)}")
    if not names:
        raise ConfigError("events", "choose at least one event")
    return tuple(dict.fromkeys(names))


def _templates(value: Mapping[str, Any]) -> dict[str, str]:
    for event, text in value.items():
        if event not in EVENTS:
            raise ConfigError("templates", f"unknown event {str(event)[:40]!r}; known: {', '.join(EVENTS)}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"templates.{event}", "must be non-empty text")
    return dict(value)


def _message(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError("message", f"must be text, got {type(value).__name__}")
    return value


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ConfigError("id", f"{str(value)[:40]!r} is not a notifier id") from None


class NotifierStore:
    """Reads and changes ``<repo>/notifiers.json`` under ``notifiers.lock``."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.path = repo.notifiers_file
        self.lock_path = repo.notifiers_lock
        self._cache: tuple[tuple[int, int, int], list[NotifierConfig]] | None = None

    def load(self) -> list[NotifierConfig]:
        """Every notifier; CorruptRecordError names the file and the problem if it is bad, or if
        it belongs to another user (whose file could send your runs anywhere)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise CorruptRecordError(str(self.path), f"unreadable ({e.strerror})") from e
        if not owned(st):
            raise CorruptRecordError(
                str(self.path), f"belongs to another user (uid {st.st_uid}), so it is not used; remove it"
            )
        make_private(self.path, st, 0o600)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptRecordError(str(self.path), f"not valid JSON ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("notifiers"), list):
            raise CorruptRecordError(str(self.path), 'expected {"format": 1, "notifiers": [...]}')
        if not isinstance(data.get("format"), int) or data["format"] > FORMAT:
            raise CorruptRecordError(str(self.path), f"format {data.get('format')!r} is not supported")
        found = []
        for i, item in enumerate(data["notifiers"]):
            try:
                found.append(NotifierConfig.from_dict(item))
            except ConfigError as e:
                raise CorruptRecordError(str(self.path), f"notifier {i + 1}: {e}") from None
        return found

    def load_if_changed(self) -> list[NotifierConfig] | None:
        """The notifiers if the file changed since the last call (a running watcher's reload), else None."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except (FileNotFoundError, NotADirectoryError):  # no repo (yet): no notifiers
            stamp = (0, 0, 0)
        if self._cache is not None and self._cache[0] == stamp:
            return None
        notifiers = self.load()
        self._cache = (stamp, notifiers)
        return notifiers

    def get(self, id_or_prefix: str) -> NotifierConfig:
        """The notifier whose id is, or starts with, the given text."""
        return _match(self.load(), id_or_prefix)

    def add(self, notifier: NotifierConfig) -> NotifierConfig:
        with self._editing() as notifiers:
            notifiers.append(NotifierConfig.from_dict(notifier.to_dict()))
        return notifier

    def update(self, id_or_prefix: str, **changes: Any) -> NotifierConfig:
        """Change fields of one notifier (validated); returns it as saved."""
        with self._editing() as notifiers:
            old = _match(notifiers, id_or_prefix)
            new = NotifierConfig.from_dict(replace(old, **changes).to_dict())
            notifiers[notifiers.index(old)] = new
        if "enabled" in changes and not new.enabled:
            self.drop_pending(new.id)
        return new

    def remove(self, id_or_prefix: str) -> NotifierConfig:
        with self._editing() as notifiers:
            old = _match(notifiers, id_or_prefix)
            notifiers.remove(old)
        self.drop_pending(old.id)
        return old

    def drop_pending(self, notifier_id: str) -> None:
        """Forget deliveries still waiting for a notifier that was removed or disabled."""
        shutil.rmtree(self.repo.outbox(_uuid(notifier_id)), ignore_errors=True)

    @contextmanager
    def _editing(self) -> Iterator[list[NotifierConfig]]:
        from filelock import FileLock

        self.repo.ensure()
        with FileLock(str(self.lock_path), timeout=30, mode=0o600):
            notifiers = self.load()
            yield notifiers
            write_atomic(self.path, {"format": FORMAT, "notifiers": [n.to_dict() for n in notifiers]})


def _match(notifiers: list[NotifierConfig], id_or_prefix: str) -> NotifierConfig:
    text = id_or_prefix.strip().lower()
    matches = [n for n in notifiers if text and n.id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownNotifierError(f"no notifier has an id starting with {id_or_prefix!r}")
    raise UnknownNotifierError(
        f"{id_or_prefix!r} matches {len(matches)} notifiers ({', '.join(n.id[:8] for n in matches)});"
        " give more of the id"
    )
