"""Retention: a repo forgets runs that ended long ago, with everything kept for them.

A run that ended more than the repo's retention period ago (30 days unless ``settings.json``
says otherwise) is removed with its claims (``events/<id>/``), usage history and log tail; a
group goes whole, once all its members are due. Never removed: a run still running (its file
says so and no end was claimed), one with a delivery still waiting in the outbox (its own or
its group's), one inside the period. Checkpoint records follow their files: a record whose
directory is gone is removed; the checkpoint files themselves are the user's and never touched.

A prune that is killed halfway leaves a consistent repo: each run's file is first moved to
``pruning/`` in one rename, so no reader sees a run with half its parts, and the next prune
(or watcher) finishes what is there before anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CorruptRecordError, NbmonitorError
from .membership import group_of, subject
from .record import RunRecord, is_run_id
from .repo import Repo, Scanner, read_record, write_atomic
from .rules import END_KEY

__all__ = [
    "DEFAULT_PERIOD",
    "Pruned",
    "RetentionError",
    "describe",
    "parse_period",
    "period",
    "prune",
    "set_period",
]

log = logging.getLogger("nbmonitor.retention")

DEFAULT_PERIOD = 30 * 86400.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


class RetentionError(NbmonitorError, ValueError):
    """A retention period that is not one (the message says what was given and what is meant)."""


def parse_period(text: str) -> float | None:
    """``"30d"``, ``"12h"``, ``"2w"``, ``"90m"``, ``"45s"`` in seconds; ``"never"``: None."""
    value = text.strip().lower()
    if value == "never":
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw])", value)
    if match is None:
        raise RetentionError(
            f"not a period: {text[:40]!r}; say a number and a unit, as 30d, 12h, 2w, 90m or 45s, or never"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise RetentionError(f"a period must be longer than nothing, got {text[:40]!r}")
    return seconds


def period(repo: Repo) -> float | None:
    """The repo's retention in seconds (None: kept for ever); the default when it sets none, and
    when its settings cannot be read (said in the log)."""
    try:
        data = json.loads(repo.settings_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DEFAULT_PERIOD
    except (OSError, ValueError) as e:
        log.warning("nbmonitor: cannot read %s (%s); keeping ended runs 30 days", repo.settings_file, e)
        return DEFAULT_PERIOD
    value = data.get("retention", DEFAULT_PERIOD) if isinstance(data, dict) else DEFAULT_PERIOD
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        log.warning("nbmonitor: %s: 'retention' is not a period; using 30 days", repo.settings_file)
        return DEFAULT_PERIOD
    return float(value)


def set_period(repo: Repo, seconds: float | None) -> None:
    """Keep ended runs ``seconds`` (None: for ever) in this repo."""
    repo.ensure()
    try:
        data = json.loads(repo.settings_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    write_atomic(repo.settings_file, data | {"format": 1, "retention": seconds})


def describe(seconds: float | None) -> str:
    """``30 days``, ``12 hours``, ``for ever``."""
    if seconds is None:
        return "for ever"
    for unit, size in (("week", 7 * 86400.0), ("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            count = int(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} s"


@dataclass
class Pruned:
    """What a prune removed (or, dry, would remove), and what it kept that was due."""

    runs: list[RunRecord] = field(default_factory=list)
    bytes: int = 0  # on disk, of everything removed
    waiting: list[str] = field(default_factory=list)  # due, kept: a delivery still waits
    finished: int = 0  # runs a killed prune had begun to remove, now removed whole
    orphans: int = 0  # parts of runs no longer there (removed by hand), older than the period
    checkpoint_records: int = 0  # records whose checkpoint files are gone


def prune(
    repo: Repo,
    older_than: float,
    *,
    dry_run: bool = False,
    wall: Callable[[], float] = time.time,
    records: Iterable[RunRecord] | None = None,
) -> Pruned:
    """Remove (``dry_run``: only count) every run that ended more than ``older_than`` seconds ago
    and is not waiting for a delivery, with its parts. ``records``: the repo's runs as the caller
    last read them (a watcher's), else read now."""
    if older_than < 0 or not math.isfinite(older_than):
        raise RetentionError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
    from filelock import FileLock

    done = Pruned()
    if not repo.path.is_dir():
        return done
    with FileLock(str(repo.prune_lock), mode=0o600):
        if not dry_run:
            done.finished = _finish(repo)
        cutoff = wall() - older_than
        runs = list(Scanner(repo).scan() if records is None else records)
        waiting = _waiting(repo) | _unsent(repo, runs)
        due: dict[str, list[RunRecord]] = {}  # by group (or the run's own id)
        held: set[str] = set()
        for run in runs:
            key = subject(run)
            ended = _ended_at(repo, run)
            if ended is None or ended > cutoff:
                held.add(key)  # a group goes whole, or not at all
            elif run.id in waiting or key in waiting:
                held.add(key)
                done.waiting.append(run.id)
            else:
                due.setdefault(key, []).append(run)
        for key, members in due.items():
            if key in held:
                continue
            done.bytes += sum(_size(repo, run.id) for run in members)
            done.bytes += _size_events(repo, key) if key != members[0].id else 0  # a group's claims
            for run in members:
                if not dry_run:
                    _remove(repo, run, key)
                done.runs.append(run)
        present = {r.id for r in runs} - {r.id for r in done.runs}
        groups = {g for g in (group_of(r) for r in runs if r.id in present) if g is not None}
        done.orphans = _orphans(repo, present | groups, cutoff, dry_run)
        done.checkpoint_records = _checkpoint_records(repo, dry_run)
    return done


def _ended_at(repo: Repo, run: RunRecord) -> float | None:
    """When the run ended: by its file, else by the end claimed for it (a crashed or lost run
    never wrote its end); None while neither says it ended."""
    if run.ended:
        return run.ended_at if run.ended_at is not None else run.updated_at
    try:
        return os.stat(repo.claim_path(run.id, END_KEY)).st_mtime
    except OSError:
        return None


def _waiting(repo: Repo) -> set[str]:
    """The runs and groups with a delivery still waiting (``outbox/*/<id>.<key>.<nonce>.json``)."""
    found: set[str] = set()
    try:
        folders = list(os.scandir(repo.outbox_dir))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for folder in folders:
        with contextlib.suppress(OSError):
            for name in os.listdir(folder.path):
                if name.endswith(".json") and not name.startswith("."):
                    found.add(name.partition(".")[0])
    return found


def _unsent(repo: Repo, runs: list[RunRecord]) -> set[str]:
    """In a spool (nbmonitor.remote): the runs whose end has not reached their server yet."""
    if not repo.spool_file.exists():
        return set()
    return {run.id for run in runs if not repo.sent_path(run.id).exists()}


def _remove(repo: Repo, run: RunRecord, key: str) -> None:
    """The run's file first, in one rename (no reader sees half a run), then its parts, then
    the note of the removal."""
    tombstone = repo.pruning_dir / f"{run.id}.json"
    repo.pruning_dir.mkdir(mode=0o700, exist_ok=True)
    try:
        os.replace(repo.run_path(run.id), tombstone)
    except FileNotFoundError:
        return  # removed meanwhile (by another prune, or by hand)
    _remove_parts(repo, run.id, key)
    tombstone.unlink()


def _remove_parts(repo: Repo, run_id: str, key: str) -> None:
    for path in (repo.usage_path(run_id), repo.owner_path(run_id), repo.sent_path(run_id)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for path in [repo.log_path(run_id), *repo.logs_dir.glob(f"{run_id}.*.jsonl")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    shutil.rmtree(repo.events_dir / run_id, ignore_errors=True)
    if key != run_id:
        shutil.rmtree(repo.events_dir / key, ignore_errors=True)  # the group's claims


def _finish(repo: Repo) -> int:
    """Finish the removals a killed prune began."""
    try:
        names = [n for n in os.listdir(repo.pruning_dir) if n.endswith(".json") and is_run_id(n[:-5])]
    except FileNotFoundError:
        return 0
    for name in names:
        path = repo.pruning_dir / name
        try:
            run = read_record(path)
            key = subject(run)
        except (OSError, CorruptRecordError):
            key = name[:-5]
        _remove_parts(repo, name[:-5], key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return len(names)


def _orphans(repo: Repo, present: set[str], cutoff: float, dry_run: bool) -> int:
    """Parts of runs (and groups) no longer in the repo, last written before ``cutoff``."""
    count = 0
    for folder in (repo.usage_dir, repo.logs_dir, repo.events_dir, repo.sent_dir):
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            owner = entry.name.partition(".")[0]  # <id>.jsonl, <id>.<pid>.jsonl, <id>/
            if not is_run_id(owner) or owner in present:
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
                count += 1
                if not dry_run:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
    return count


def _checkpoint_records(repo: Repo, dry_run: bool) -> int:
    """Remove the checkpoint records whose directory is gone, and folders left empty."""
    count = 0
    try:
        jobs = [e for e in os.scandir(repo.checkpoints_dir) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for job in jobs:
        names = [n for n in os.listdir(job.path) if n.endswith(".json") and not n.startswith(".")]
        for name in names:
            path = Path(job.path, name)
            try:
                where = json.loads(path.read_text(encoding="utf-8")).get("path")
            except (OSError, ValueError, AttributeError):
                continue  # damaged: not ours to judge
            if isinstance(where, str) and where and not os.path.isdir(where):
                count += 1
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        if not dry_run:
            with contextlib.suppress(OSError):
                os.rmdir(job.path)  # only when it is empty
    return count


def _size(repo: Repo, run_id: str) -> int:
    paths = [repo.run_path(run_id), repo.usage_path(run_id), repo.log_path(run_id)]
    paths += repo.logs_dir.glob(f"{run_id}.*.jsonl")
    return sum(_disk(p) for p in paths) + _size_events(repo, run_id)


def _size_events(repo: Repo, subject: str) -> int:
    folder = repo.events_dir / subject
    try:
        return _disk(folder) + sum(_disk(p) for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _disk(path: Path) -> int:
    """Bytes ``path`` takes on disk (its blocks), 0 when it is not there."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
