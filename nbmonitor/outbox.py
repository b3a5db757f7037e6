"""Deliveries: each (event, notifier) pair is sent once, across crashes and restarts.

Layout in the repo (docs/repo-format.md)::

    outbox/<notifier id>/<run id>.<key>.<nonce>.json   a delivery waiting to be sent
    deliveries/<notifier id>.json                     that notifier's last result

``claim_event`` first writes one pending file per notifier that wants the
event, then claims the event (events/) with the same nonce. A pending file
counts only while the claim holds its nonce: files of a claimer that lost
the race are dropped, and those of one that died before claiming are
claimed later by whoever finds them.

The Sender sends pending files. It holds an flock on a file for the whole
attempt and deletes the file on success or on a permanent failure, so two
senders (a watcher and a kernel) never send the same one, and one that dies
mid-attempt leaves it to the others. Transient failures back off
exponentially (honouring Retry-After) for a bounded time, per notifier, so
one notifier's outage never delays another.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._once import Once, Trouble
from .config import NotifierConfig, NotifierStore
from .errors import CorruptRecordError, NewerFormatError
from .events import Event
from .notifiers import DEFAULT_TIMEOUT, TYPES, Message, NotifierError, TransientError
from .repo import Repo, write_atomic
from .templates import test_event, text_for

try:
    import fcntl
except ImportError:  # Windows: no flock; one sender per repo is then the user's care
    fcntl = None  # type: ignore[assignment]

__all__ = ["Result", "Sender", "claim_event", "last_result", "send_test"]

log = logging.getLogger("nbmonitor.notify")

_DIGEST_LINES = 20


def claim_event(repo: Repo, event: Event, targets: Sequence[NotifierConfig]) -> bool:
    """Claim ``event`` for the whole repo and queue it for ``targets``: True for the one winner."""
    nonce = uuid.uuid4().hex
    payload = event.to_dict() | {"nonce": nonce}
    written: list[Path] = []
    try:
        for target in targets:
            path = repo.pending_path(target.id, event.subject, event.key, nonce)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, payload)
            written.append(path)
        won = repo.claim(event.subject, event.key, payload)
    except BaseException:
        _unlink(written)
        raise
    if not won:
        _unlink(written)
    return won


@dataclass(frozen=True, slots=True)
class Result:
    """One delivery attempt of one notifier."""

    notifier_id: str
    ok: bool
    answer: str
    events: tuple[str, ...]  # claim keys, as run-id/key
    retry_in: float | None = None


def last_result(repo: Repo, notifier_id: str) -> dict[str, Any] | None:
    """The last delivery result of a notifier (``at``, ``ok``, ``answer``, ``pending``), if any;
    None also for a damaged file, which the next delivery replaces."""
    try:
        data = json.loads(repo.delivery_path(notifier_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    at, ok, pending = data.get("at"), data.get("ok"), data.get("pending")
    if not _number(at) or not isinstance(ok, bool) or not (pending is None or _count(pending)):
        return None
    return data | {"answer": str(data.get("answer", ""))}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def send_test(repo: Repo, config: NotifierConfig, timeout: float = DEFAULT_TIMEOUT) -> Result:
    """Send a test message now (not through the outbox) and record what the endpoint answered."""
    from . import _process

    event = test_event(_process.host())
    # Each test is a message of its own: a receiver that drops repeated keys shows every one.
    message = Message(
        "nbmonitor test", text_for(event, config.templates), (event,), f"test-{uuid.uuid4().hex}"
    )
    try:
        answer, ok = config.notifier(timeout, repo).send(message), True
    except NotifierError as e:
        answer, ok = str(e), False
    result = Result(config.id, ok, answer, ())
    _record(repo, result, time.time(), pending=None)
    return result


class _Pending:
    """A pending delivery file, opened and locked by this sender."""

    def __init__(self, path: Path, fd: int, event: Event, nonce: str) -> None:
        self.path, self.fd, self.event, self.nonce = path, fd, event, nonce

    @classmethod
    def take(cls, path: Path) -> _Pending | None:
        """Open and lock it, or None if someone else holds it or it is gone. Raises ValueError if bad."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError  # sent and deleted by someone else meanwhile
            with open(fd, "rb", closefd=False) as f:
                data = json.loads(f.read())
            event = Event.from_dict(data)
            nonce = str(data.get("nonce", ""))
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except NewerFormatError:
            os.close(fd)
            raise
        except (ValueError, UnicodeDecodeError) as e:
            os.close(fd)
            raise ValueError(str(e)) from None
        return cls(path, fd, event, nonce)

    def done(self) -> None:
        """Delivered, or failed for good: nobody sends it again."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def release(self) -> None:
        os.close(self.fd)


@dataclass(slots=True)
class _Backoff:
    until: float
    delay: float


class Sender:
    """Sends what the outbox holds, a thread per notifier (or ``deliver()`` in tests)."""

    def __init__(
        self,
        repo: Repo,
        store: NotifierStore | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        digest_at: int = 4,
        give_up_after: float = 3600.0,
        max_backoff: float = 60.0,
        orphan_after: float = 30.0,
    ) -> None:
        self.repo = repo
        self.store = store or NotifierStore(repo)
        self.clock = clock  # for every wait and age: immune to wall-clock jumps
        self.wall = wall  # only to stamp results
        self.timeout = timeout
        self.digest_at = digest_at
        self.give_up_after = give_up_after
        self.max_backoff = max_backoff
        self.orphan_after = orphan_after
        self._configs: list[NotifierConfig] = []
        self._config_trouble = Trouble(log)
        self._backoff: dict[str, _Backoff] = {}
        self._once = Once(log)
        # Pending files by when (our clock) this sender first failed to send them, and first
        # found them unclaimed: their ages, measured here since another host's clock is not ours.
        self._failing_since: dict[Path, float] = {}
        self._unclaimed_since: dict[Path, float] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._wake = threading.Condition()
        self._stopped = False
        self._running = False
        self._interval = 1.0

    # -- configuration ---------------------------------------------------------

    def refresh(self) -> list[NotifierConfig]:
        """Reload the notifier file if it changed; a bad file keeps the last good one (and says so)."""
        try:
            fresh = self.store.load_if_changed()
        except (CorruptRecordError, OSError) as e:
            self._config_trouble.happened(str(e), "keeping the previous notifiers: %s", e)
            return self._configs
        if fresh is not None:
            self._configs = fresh
            self._config_trouble.over()
            if self._running:
                self._start_threads()
        return self._configs

    def configs(self) -> list[NotifierConfig]:
        return self._configs

    # -- sending -----------------------------------------------------------------

    def deliver(self, now: float | None = None) -> list[Result]:
        """One pass over every enabled notifier's pending deliveries (synchronously); ``now``
        is on ``clock``."""
        now = self.clock() if now is None else now
        results: list[Result] = []
        for config in self.refresh():
            if config.enabled:
                results += self._deliver_for(config, now)
        return results

    def _deliver_for(self, config: NotifierConfig, now: float) -> list[Result]:
        backoff = self._backoff.get(config.id)
        if backoff is not None and now < backoff.until:
            return []
        batch = self._take(config.id, now)
        if not batch:
            return []
        try:
            units = self._units(config.id, batch)
            results = []
            for i, (unit, digest) in enumerate(units):
                result = self._send(config, unit, now, digest)
                results.append(result)
                if result.retry_in is not None:
                    left = sum(len(u) for u, _ in units[i:])
                    _record(self.repo, result, self.wall(), pending=left)
                    return results
            if not results:
                return []
            self._backoff.pop(config.id, None)
            _record(self.repo, results[-1], self.wall(), pending=0)
            return results
        finally:
            for pending in batch:
                pending.release()

    def _units(self, notifier_id: str, batch: list[_Pending]) -> list[tuple[list[_Pending], _Digest | None]]:
        """What to send, in order: first each digest whose first attempt may have reached the
        endpoint, again with the same events and key; then the rest, as one digest when there
        are enough, else one by one."""
        units: list[tuple[list[_Pending], _Digest | None]] = []
        taken = {p.path.name: p for p in batch}
        for digest in _Digest.all(self.repo, notifier_id):
            mine = [taken[name] for name in digest.files if name in taken]
            if len(mine) == len(digest.files):
                units.append((mine, digest))
            elif any((digest.path.parent / name).exists() for name in digest.files if name not in taken):
                pass  # another sender has the rest of it now: leave all of it to that sender
            else:
                digest.forget()  # some of it was sent or given up: what is left goes anew
                continue
            for name in digest.files:
                taken.pop(name, None)
        rest = list(taken.values())
        if len(rest) >= self.digest_at:
            units.append((rest, None))
        else:
            units += [([pending], None) for pending in rest]
        return units

    def _send(
        self, config: NotifierConfig, unit: list[_Pending], now: float, digest: _Digest | None
    ) -> Result:
        keys = tuple(f"{p.event.subject}/{p.event.key}" for p in unit)
        message = self._message(config, [p.event for p in unit], digest.key if digest else None)
        if len(unit) > 1 and digest is None:
            # Before the first attempt: a resend after a crash mid-request carries the same key,
            # even when more events have queued since.
            digest = _Digest.write(self.repo, config.id, message.key, [p.path.name for p in unit])
        try:
            answer = config.notifier(self.timeout, self.repo).send(message)
        except TransientError as e:
            old = self._backoff.get(config.id)
            delay = min(old.delay * 2, self.max_backoff) if old else 1.0
            if e.retry_after is not None:
                delay = min(max(e.retry_after, delay), self.give_up_after)
            self._backoff[config.id] = _Backoff(now + delay, delay)
            for pending in unit:
                self._failing_since.setdefault(pending.path, now)
            expired = [p for p in unit if now - self._failing_since[p.path] >= self.give_up_after]
            for pending in expired:
                self._done(pending)
            if expired:
                give_up = f"gave up after {self.give_up_after:g} s: {e}"
                log.warning("notifier %s (%s): %s", config.id[:8], config.type, give_up)
                return Result(config.id, False, give_up, keys)
            log.warning("notifier %s (%s): %s; retrying in %g s", config.id[:8], config.type, e, delay)
            return Result(config.id, False, f"{e} (retrying in {delay:g} s)", keys, retry_in=delay)
        except NotifierError as e:
            self._settled(unit, digest)
            log.warning("notifier %s (%s) failed: %s", config.id[:8], config.type, e)
            return Result(config.id, False, str(e), keys)
        except Exception as e:  # a bug in one notifier must not stop the others
            self._settled(unit, digest)
            log.exception("notifier %s (%s) broke", config.id[:8], config.type)
            return Result(config.id, False, f"internal error: {type(e).__name__}", keys)
        self._settled(unit, digest)
        return Result(config.id, True, answer, keys)

    def _settled(self, unit: list[_Pending], digest: _Digest | None) -> None:
        """Delivered, or refused for good: nobody sends any of it again."""
        for pending in unit:
            self._done(pending)
        if digest is not None:
            digest.forget()

    def _done(self, pending: _Pending) -> None:
        pending.done()
        self._failing_since.pop(pending.path, None)

    def _message(self, config: NotifierConfig, events: list[Event], key: str | None = None) -> Message:
        if len(events) == 1:
            tail = TYPES[config.type].tail_lines
            text = text_for(events[0], config.templates, config.message, tail)
            title = f"{events[0].run.name} {events[0].kind.replace('-', ' ')}"  # "train gave up"
            return Message(title, text, tuple(events), key)
        # A digest is a line per event: no log tails (each run's alarm had its own).
        lines = [text_for(e, config.templates, config.message, 0) for e in events]
        shown = "\n".join(f"- {line}" for line in lines[:_DIGEST_LINES])
        more = len(lines) - _DIGEST_LINES
        if more > 0:
            shown += f"\n- ... and {more} more (nbmonitor-watcher status lists them)"
        text = f"{len(events)} runs need attention:\n{shown}"
        return Message(f"nbmonitor: {len(events)} events", text, tuple(events), key)

    def _take(self, notifier_id: str, now: float) -> list[_Pending]:
        batch: list[_Pending] = []
        for path in self.repo.pending(notifier_id):
            try:
                pending = _Pending.take(path)
            except NewerFormatError as e:  # left for a newer nbmonitor on this repo to send
                self._once.say(
                    ("newer", path), "leaving pending delivery %s to a newer nbmonitor: %s", path, e
                )
                continue
            except ValueError as e:
                log.warning("setting aside a bad pending delivery %s: %s", path, e)
                with contextlib.suppress(OSError):
                    os.replace(path, self.repo.set_aside_path(path))
                continue
            if pending is None:
                continue
            if self._valid(pending, now):
                batch.append(pending)
            else:
                pending.release()
        return batch

    def _valid(self, pending: _Pending, now: float) -> bool:
        """True if this file's event was claimed with its nonce (claiming it now for a dead claimer)."""
        event = pending.event
        claim = self._claim_nonce(event)
        if claim is None:
            if now - self._unclaimed_since.setdefault(pending.path, now) < self.orphan_after:
                return False  # its claimer may still be at work
            payload = event.to_dict() | {"nonce": pending.nonce}
            self.repo.claim(event.subject, event.key, payload)
            claim = self._claim_nonce(event)
        self._unclaimed_since.pop(pending.path, None)
        if claim == "":
            # Claims are written whole, so this one was damaged by hand or by the disk: better
            # a notification twice than none.
            self._once.say(
                ("unreadable claim", pending.path),
                "the claim of event %s of run %s is unreadable; sending %s anyway",
                event.key,
                event.subject[:8],
                pending.path.name,
            )
            return True
        if claim != pending.nonce:
            pending.done()  # the claimer lost the race for this event
            return False
        return True

    def _claim_nonce(self, event: Event) -> str | None:
        """The nonce of the event's claim; None if unclaimed, "" if the claim is unreadable."""
        try:
            nonce = self.repo.read_claim(event.subject, event.key).get("nonce")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, CorruptRecordError):
            return ""
        return nonce if isinstance(nonce, str) else ""

    # -- threads -------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """Deliver in the background: a thread per enabled notifier."""
        self._interval = interval
        self._stopped = False
        self._running = True
        self.refresh()
        self._start_threads()

    def wake(self) -> None:
        """New deliveries are queued: look now rather than at the next interval."""
        with self._wake:
            self._wake.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        self._running = False
        self.wake()
        for thread in list(self._threads.values()):
            thread.join(timeout)
        self._threads.clear()

    def _start_threads(self) -> None:
        for config in self._configs:
            running = self._threads.get(config.id)
            if config.enabled and (running is None or not running.is_alive()):
                thread = threading.Thread(
                    target=self._send_loop, args=(config.id,), name=f"nbmonitor-{config.type}", daemon=True
                )
                self._threads[config.id] = thread
                thread.start()

    def _send_loop(self, notifier_id: str) -> None:
        while not self._stopped:
            config = next((c for c in self._configs if c.id == notifier_id and c.enabled), None)
            if config is None:
                return
            try:
                self._deliver_for(config, self.clock())
            except Exception:  # keep delivering; say what broke
                log.exception("delivery for notifier %s failed", notifier_id[:8])
            backoff = self._backoff.get(notifier_id)
            wait = self._interval
            if backoff is not None:
                wait = min(wait, max(backoff.until - self.clock(), 0.05))
            with self._wake:
                if not self._stopped:
                    self._wake.wait(wait)


@dataclass(frozen=True, slots=True)
class _Digest:
    """A digest whose sending began: its key and the pending files it holds, recorded beside
    them (``.digest-<key>.json``) before the first attempt, so that every resend of it is the
    same message with the same key."""

    path: Path
    key: str
    files: tuple[str, ...]

    @classmethod
    def write(cls, repo: Repo, notifier_id: str, key: str, files: list[str]) -> _Digest | None:
        path = repo.digest_path(notifier_id, key)
        try:
            write_atomic(path, {"format": 1, "key": key, "files": files})
        except OSError as e:  # the repo cannot be written: it is sent all the same
            log.warning("cannot record digest %s in %s: %s", key, path.parent, e)
            return None
        return cls(path, key, tuple(files))

    @classmethod
    def all(cls, repo: Repo, notifier_id: str) -> list[_Digest]:
        found = []
        for path in repo.digest_paths(notifier_id):
            try:
                data = json.loads(path.read_bytes())
                key, files = data["key"], data["files"]
                if not isinstance(key, str) or not key.startswith("digest-"):
                    raise ValueError(f"not a digest key: {str(key)[:40]!r}")
                if not isinstance(files, list) or not all(isinstance(f, str) and "/" not in f for f in files):
                    raise ValueError("'files' is not a list of file names")
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring a damaged digest record %s: %s", path, e)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(cls(path, key, tuple(files)))
        return found

    def forget(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def _record(repo: Repo, result: Result, now: float, pending: int | None) -> None:
    data = {"at": now, "ok": result.ok, "answer": result.answer, "events": list(result.events)}
    if pending is not None:
        data["pending"] = pending
    try:
        path = repo.delivery_path(result.notifier_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as e:
        log.warning("cannot record the delivery result of notifier %s: %s", result.notifier_id[:8], e)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
