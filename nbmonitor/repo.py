"""The repo: a directory shared by every run, kernel and watcher of a user.

Layout (docs/repo-format.md is the full contract)::

    runs/<run id>.json          one file per run, written only by its owner
    usage/<run id>.jsonl        the run's usage history and marks (nbmonitor.history)
    events/<run id>/<key>.json  one claim per event, created exclusively
    notifiers.json, .lock       the notifiers (nbmonitor.config)
    outbox/<notifier id>/       pending deliveries, digest records (nbmonitor.outbox)
    deliveries/<notifier>.json  each notifier's last result
    watcher.json                the running watcher: pid, host, start time
    watcher.lock / watcher.log  single-watcher lock, detached watcher's log
    notify.log                  lines of the logger notifier
    settings.json               the repo's settings: how long ended runs are kept
    pruning/<run id>.json       a run being removed (nbmonitor.retention)
    prune.lock                  held by the one prune at work
    owners/<run id or job key>  the client that sends that run's records over HTTP
    sent/<run id>               in a spool: the run's end reached its server
    spool.json                  this repo is a spool: the server it sends to (nbmonitor.remote)
    ingest.token                a token that can send runs' records to this repo's server, only

Every file is written whole (temp file, fsync, rename), so a reader never
sees half of one, on a local disk or a network filesystem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._once import Once
from .errors import CorruptRecordError, RepoError
from .history import History, parse
from .logtail import LogLine
from .logtail import parse as parse_log
from .record import RunRecord, is_run_id
from .rules import is_event_key

if TYPE_CHECKING:
    from .listing import Runs

__all__ = ["Repo", "Scanner", "default_path", "is_url", "make_private", "owned"]

log = logging.getLogger("nbmonitor.repo")

ENV_VAR = "NBMONITOR_REPO"
_ELSEWHERE = f"choose a directory of your own with ${ENV_VAR}, --repo or repo="


def is_url(where: object) -> bool:
    """Whether ``where`` names a Jupyter server (nbmonitor.remote) rather than a repo directory."""
    return isinstance(where, str) and where.startswith(("http://", "https://"))


def default_path() -> Path:
    """``$NBMONITOR_REPO``, else ``~/.nbmonitor``. RepoError for a relative ``$NBMONITOR_REPO``:
    every process would find it in its own working directory, so they would not share it."""
    env = os.environ.get(ENV_VAR)
    if not env:
        return Path.home() / ".nbmonitor"
    path = Path(env).expanduser()
    if not path.is_absolute():
        raise RepoError(
            f"{ENV_VAR} must be an absolute path, got {env[:200]!r}: each process would look for it "
            f"in its own working directory (try {ENV_VAR}={Path(env).absolute()})"
        )
    return path


def owned(st: os.stat_result) -> bool:
    """True for a file or folder of the user running nbmonitor (the only ones it trusts)."""
    getuid = getattr(os, "geteuid", None)
    return getuid is None or st.st_uid == getuid()


_made_private = Once(log)


def make_private(path: Path, st: os.stat_result, mode: int) -> None:
    """Take away what group and others may do with ``path`` (it holds secrets), saying so once."""
    if not st.st_mode & 0o077:
        return
    os.chmod(path, mode)
    message = "nbmonitor: %s was open to other users (mode %o); made it private (%o)"
    _made_private.say(path, message, path, st.st_mode & 0o777, mode)


class Repo:
    """A repo directory; created on first write, with mode 0700 since it holds secrets.
    ``Repo("https://host:8888/?token=...")`` (or such a ``$NBMONITOR_REPO``) is a Jupyter
    server's repo, which this process writes through a spool (nbmonitor.remote.RemoteRepo)."""

    def __new__(cls, path: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any) -> Repo:
        if cls is Repo and is_url(path if path is not None else os.environ.get(ENV_VAR)):
            from .remote import RemoteRepo

            return super().__new__(RemoteRepo)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.path = self.path.absolute()
        # Every path of the layout (docs/repo-format.md) is built here and nowhere else.
        self.runs_dir = self.path / "runs"
        self.usage_dir = self.path / "usage"
        self.logs_dir = self.path / "logs"
        self.checkpoints_dir = self.path / "checkpoints"
        self.events_dir = self.path / "events"
        self.outbox_dir = self.path / "outbox"
        self.deliveries_dir = self.path / "deliveries"
        self.notifiers_file = self.path / "notifiers.json"
        self.notifiers_lock = self.path / "notifiers.lock"
        self.watcher_file = self.path / "watcher.json"
        self.lock_file = self.path / "watcher.lock"
        self.log_file = self.path / "watcher.log"
        self.notify_log = self.path / "notify.log"
        self.settings_file = self.path / "settings.json"
        self.pruning_dir = self.path / "pruning"
        self.prune_lock = self.path / "prune.lock"
        self.owners_dir = self.path / "owners"
        self.sent_dir = self.path / "sent"
        self.spool_file = self.path / "spool.json"
        self.ingest_token_file = self.path / "ingest.token"

    def __repr__(self) -> str:
        return f"Repo({str(self.path)!r})"

    def environ(self) -> dict[str, str]:
        """What a child process needs in its environment to write to this repo."""
        return {ENV_VAR: str(self.path)}

    def check(self) -> None:
        """RepoError, one line, if the repo cannot be one: a file in its place, a folder of
        another user, one that cannot be read. A repo that does not exist yet is fine (empty)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise RepoError(
                f"{self.path} cannot be a repo, part of its path is a file; {_ELSEWHERE}"
            ) from None
        except OSError as e:
            raise RepoError(f"cannot read the repo {self.path}: {e.strerror}; {_ELSEWHERE}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RepoError(f"{self.path} is a file, not a repo directory; {_ELSEWHERE}")
        if not owned(st):
            raise RepoError(
                f"{self.path} belongs to another user (uid {st.st_uid}); nbmonitor trusts only a "
                f"repo of your own; {_ELSEWHERE}"
            )

    def ensure(self) -> None:
        """Create the repo's directories if they are missing, and make it private if it was not."""
        self.check()
        try:
            for d in (self.path, self.runs_dir, self.events_dir):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            make_private(self.path, os.stat(self.path), 0o700)
        except OSError as e:
            raise RepoError(f"cannot create the repo {self.path}: {e.strerror}; {_ELSEWHERE}") from None

    def run_path(self, run_id: str) -> Path:
        """The file of run ``run_id``; the id is checked so no name can point outside the repo."""
        if not is_run_id(run_id):
            raise ValueError(f"not a run id: {run_id[:40]!r}")
        return self.runs_dir / f"{run_id}.json"

    def write_run(self, record: RunRecord) -> None:
        """Replace the run's file atomically; recreates the repo if it was deleted."""
        path = self.run_path(record.id)
        try:
            write_atomic(path, record.to_dict())
        except FileNotFoundError:
            self._again()
            write_atomic(path, record.to_dict())

    def write_run_data(self, run_id: str, data: dict[str, Any], sync: bool = True) -> None:
        """Replace a run's file with ``data``, a run file's fields checked already (RunRecord's
        ``from_dict``): a far host's, as its server received it (nbmonitor.ingest)."""
        path = self.run_path(run_id)
        try:
            write_atomic(path, data, sync=sync)
        except FileNotFoundError:
            self._again()
            write_atomic(path, data, sync=sync)

    def read_run(self, run_id: str) -> RunRecord:
        """Read and validate one run file; CorruptRecordError names it if it is bad."""
        return read_record(self.run_path(run_id))

    def runs(self) -> Runs:
        """Every valid run in the repo, newest first; bad files are skipped with a warning. A
        list that shows itself as a table (nbmonitor.listing)."""
        from .listing import Runs

        return Runs(sorted(Scanner(self).scan(), key=lambda r: r.started_at, reverse=True))

    def usage_path(self, run_id: str) -> Path:
        """The usage history of run ``run_id`` (docs/repo-format.md); the id is checked."""
        if not is_run_id(run_id):
            raise ValueError(f"not a run id: {run_id[:40]!r}")
        return self.usage_dir / f"{run_id}.jsonl"

    def append_usage(self, run_id: str, text: str) -> None:
        """Add whole lines to a run's usage history (only the run's own process does), creating
        it 0600 if it is new. One write() call: a reader sees whole lines, or a torn last one."""
        self._append(self.usage_dir, self.usage_path(run_id), text)

    def replace_usage(self, run_id: str, text: str) -> None:
        """Replace a run's usage history whole (a coarser copy of it): readers see the old file
        or the new one."""
        self._replace(self.usage_dir, self.usage_path(run_id), text)

    def log_path(self, run_id: str, part: int | None = None) -> Path:
        """The log tail of run ``run_id`` (docs/repo-format.md), or the part of it a forked
        worker (pid ``part``) writes; the id is checked."""
        if not is_run_id(run_id):
            raise ValueError(f"not a run id: {run_id[:40]!r}")
        if part is None:
            return self.logs_dir / f"{run_id}.jsonl"
        if type(part) is not int or part <= 0:
            raise ValueError(f"not a pid: {part!r}")
        return self.logs_dir / f"{run_id}.{part}.jsonl"

    def append_log(self, run_id: str, text: str, part: int | None = None) -> None:
        """Add whole lines to a run's log tail (its own process does, at most once a second;
        a forked worker to its own ``part``)."""
        self._append(self.logs_dir, self.log_path(run_id, part), text)

    def replace_log(self, run_id: str, text: str, part: int | None = None) -> None:
        """Write a run's log tail (or a worker's part of it) whole: new, or cut to its last lines."""
        self._replace(self.logs_dir, self.log_path(run_id, part), text)

    def read_log(self, run_id: str) -> tuple[list[LogLine], int]:
        """A run's log tail with its workers' parts, oldest line first, and how many bad lines
        were left out. FileNotFoundError when it has none; CorruptRecordError naming the file
        when the run's own file is not a tail of this run (a bad worker part is left out, said)."""
        path = self.log_path(run_id)
        parts = sorted(self.logs_dir.glob(f"{run_id}.*.jsonl")) if is_run_id(run_id) else []
        if not parts:
            return self._read_log(path, run_id)
        lines: list[LogLine] = []
        bad = 0
        for each in [path, *parts]:
            try:
                found, skipped = self._read_log(each, run_id)
            except FileNotFoundError:
                continue
            except CorruptRecordError as e:
                if each == path:
                    raise
                log.warning("nbmonitor: left out %s", e)
                continue
            lines += found
            bad += skipped
        lines.sort(key=lambda x: x.t)  # stable: each file's own order stays
        return lines, bad

    def read_logs(self, members: list[tuple[str, str]]) -> tuple[list[LogLine], int, list[str]]:
        """The tails of several runs (a group's members) in one, by time, as (tag, run id) for
        each: a line of a member with a tag says it (unless it says who already). Also how many
        lines and files were left out, and a sentence for each file that lost some; the others
        are still worth reading."""
        found: list[LogLine] = []
        skipped = 0
        problems: list[str] = []
        for tag, run_id in members:
            try:
                lines, bad = self.read_log(run_id)
            except FileNotFoundError:
                continue
            except CorruptRecordError as e:
                skipped += 1
                problems.append(str(e))
                continue
            if bad:
                skipped += bad
                problems.append(f"{bad} bad line(s) of {self.log_path(run_id)}")
            found += [x if x.who or not tag else replace(x, who=tag) for x in lines]
        found.sort(key=lambda x: x.t)  # stable: each member's own order stays
        return found, skipped, problems

    @staticmethod
    def _read_log(path: Path, run_id: str) -> tuple[list[LogLine], int]:
        text = _read_text(path)
        try:
            return parse_log(text, run_id)
        except ValueError as e:
            raise CorruptRecordError(str(path), str(e)) from e

    def log_tail(self, run_id: str, count: int) -> tuple[LogLine, ...]:
        """The last ``count`` lines of a run's tail; none when it has none or it cannot be read
        (said in the log: an alarm goes out without them)."""
        try:
            lines, _ = self.read_log(run_id)
        except FileNotFoundError:
            return ()
        except (CorruptRecordError, ValueError) as e:
            log.warning("nbmonitor: no log tail from %s", e)
            return ()
        return tuple(lines[-count:]) if count > 0 else ()

    def checkpoint_path(self, job_key: str, name: str) -> Path:
        """The record of one checkpoint of a job (by its key, 32 hex digits); both are checked."""
        if not is_run_id(job_key):
            raise ValueError(f"not a job key: {job_key[:40]!r}")
        if not re.fullmatch(r"[0-9]{15}-[0-9a-f]{12}", name):
            raise ValueError(f"not a checkpoint record name: {name[:40]!r}")
        folder = self.checkpoints_dir / job_key
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileNotFoundError:
            self._again()
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder / f"{name}.json"

    def owner_path(self, key: str) -> Path:
        """Who writes run (or job) ``key`` over HTTP: the hash of its client's secret
        (nbmonitor.ingest); absent for runs written here."""
        if not is_run_id(key):
            raise ValueError(f"not a run id or job key: {key[:40]!r}")
        return self.owners_dir / key

    def sent_path(self, run_id: str) -> Path:
        """In a spool (nbmonitor.remote): present once the run's end reached its server."""
        if not is_run_id(run_id):
            raise ValueError(f"not a run id: {run_id[:40]!r}")
        return self.sent_dir / run_id

    def write_checkpoint(self, job_key: str, name: str, data: dict[str, Any]) -> None:
        """Record one checkpoint of a job (nbmonitor.checkpoints), whole."""
        write_atomic(self.checkpoint_path(job_key, name), data)

    def remove_checkpoint(self, job_key: str, name: str) -> None:
        """Remove one checkpoint's record (its files go after it); FileNotFoundError if none."""
        self.checkpoint_path(job_key, name).unlink()

    def _again(self, folder: Path | None = None) -> None:
        """A write found no directory: create the repo (and ``folder``) again, saying so if the
        repo itself was gone."""
        gone = not self.path.is_dir()
        self.ensure()
        if gone:
            log.warning("nbmonitor: the repo %s was gone (deleted?); created it again", self.path)
        if folder is not None:
            folder.mkdir(mode=0o700, exist_ok=True)

    def _append(self, folder: Path, path: Path, text: str) -> None:
        data = text.encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except FileNotFoundError:
            self._again(folder)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, data)
            while written < len(data):  # a full disk or a signal: the rest, or an OSError
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)

    def _replace(self, folder: Path, path: Path, text: str) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=folder)
        except FileNotFoundError:
            self._again(folder)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read_usage(self, run_id: str) -> History:
        """A run's usage history. FileNotFoundError when it has none; CorruptRecordError naming
        the file when it is no history at all. Bad lines are left out with one warning."""
        path = self.usage_path(run_id)
        text = _read_text(path)
        try:
            history = parse(text.splitlines(), run_id)
        except ValueError as e:
            raise CorruptRecordError(str(path), str(e)) from e
        if history.skipped:
            log.warning(
                "nbmonitor: left out %d bad line(s) of %s (the first: line %d); the rest is shown",
                history.skipped,
                path,
                history.first_bad,
            )
        return history

    def read_usages(self, members: list[tuple[str, str]]) -> list[tuple[str, History]]:
        """The usage histories of several runs (a group's members), as (label, history) for
        each ``(label, run id)`` that has one; one that cannot be read is left out with a
        warning naming it: the others are still worth a plot."""
        found = []
        for label, run_id in members:
            try:
                found.append((label, self.read_usage(run_id)))
            except FileNotFoundError:
                continue
            except CorruptRecordError as e:
                log.warning("nbmonitor: left out %s", e)
        return found

    def claim_path(self, run_id: str, key: str) -> Path:
        """The claim file of one event of a run; ids and keys are checked, so none points elsewhere."""
        _event(run_id, key)
        return self.events_dir / run_id / f"{key}.json"

    def outbox(self, notifier_id: str) -> Path:
        """The folder of the deliveries waiting for one notifier."""
        return self.outbox_dir / _notifier_id(notifier_id)

    def pending_path(self, notifier_id: str, run_id: str, key: str, nonce: str) -> Path:
        """A delivery of one event to one notifier: ``outbox/<notifier>/<run>.<key>.<nonce>.json``."""
        if not _NONCE.fullmatch(nonce):
            raise ValueError(f"not a nonce: {nonce[:40]!r}")
        return self.outbox(notifier_id) / f"{_event(run_id, key)}.{nonce}.json"

    def pending_of(self, run_id: str, key: str) -> list[Path]:
        """The deliveries of one event still waiting, for any notifier."""
        return sorted(self.outbox_dir.glob(f"*/{_event(run_id, key)}.*.json"))

    def pending(self, notifier_id: str) -> list[Path]:
        """The deliveries waiting for one notifier, by name."""
        folder = self.outbox(notifier_id)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [folder / name for name in names]

    @staticmethod
    def set_aside_path(pending: Path) -> Path:
        """Where a damaged pending delivery is put aside: ``.bad-<name>``, beside it, never sent."""
        return pending.with_name(f".bad-{pending.name}")

    def digest_path(self, notifier_id: str, key: str) -> Path:
        """The record of a digest whose sending began (its key and pending files)."""
        if not _DIGEST.fullmatch(key):
            raise ValueError(f"not a digest key: {key[:40]!r}")
        return self.outbox(notifier_id) / f".digest-{key}.json"

    def digest_paths(self, notifier_id: str) -> list[Path]:
        return sorted(self.outbox(notifier_id).glob(".digest-*.json"))

    def delivery_path(self, notifier_id: str) -> Path:
        """A notifier's last delivery result."""
        return self.deliveries_dir / f"{_notifier_id(notifier_id)}.json"

    def claims(self, run_id: str) -> set[str]:
        """Keys of the events already claimed for a run."""
        try:
            names = os.listdir(self.events_dir / run_id)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")}

    def claim(self, run_id: str, key: str, payload: dict[str, Any]) -> bool:
        """Claim an event for everyone watching this repo: True for the one caller that wins.

        The claim is written to a temp file and hard-linked into place; link()
        fails if the name exists, so exactly one claimer wins and every claim
        file is complete (an O_EXCL create that also works on NFS).
        """
        path = self.claim_path(run_id, key)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = _write_temp(path.parent, payload)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def read_claim(self, run_id: str, key: str) -> dict[str, Any]:
        """The payload of a claimed event."""
        path = self.claim_path(run_id, key)
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise CorruptRecordError(str(path), "not a JSON object")
        return data


_NOTIFIER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_DIGEST = re.compile(r"digest-[0-9a-f]{32}")


def _event(run_id: str, key: str) -> str:
    """``<run id>.<key>``, checked: nothing from a file names a path elsewhere."""
    if not is_run_id(run_id) or not is_event_key(key):
        raise ValueError(f"bad claim: run {run_id[:40]!r}, key {str(key)[:40]!r}")
    return f"{run_id}.{key}"


def _notifier_id(notifier_id: str) -> str:
    if not _NOTIFIER_ID.fullmatch(notifier_id):
        raise ValueError(f"not a notifier id: {notifier_id[:40]!r}")
    return notifier_id


@dataclass(slots=True)
class _Cached:
    stamp: tuple[int, int, int]
    record: RunRecord | None


class Scanner:
    """Lists a repo's runs again and again, re-reading only files whose stat changed.

    A bad file is reported once (a warning naming it) until it changes.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._cache: dict[str, _Cached] = {}

    def scan(self) -> list[RunRecord]:
        """The valid runs now in the repo."""
        found: list[RunRecord] = []
        cache: dict[str, _Cached] = {}
        for entry in self._entries():
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            old = self._cache.get(entry.name)
            if old is None or old.stamp != stamp:
                old = self._cached(entry.path, entry.name, st, stamp)
            cache[entry.name] = old
            if old.record is not None:
                found.append(old.record)
        self._cache = cache
        return found

    def update(self, names: Iterable[str]) -> tuple[list[RunRecord], list[str]]:
        """Read again only the named files of ``runs/`` (a change notice named them): the valid
        runs among them, and the ids of those now gone (or no longer valid)."""
        changed: list[RunRecord] = []
        gone: list[str] = []
        for name in names:
            if not name.endswith(".json") or name.startswith(".") or not is_run_id(name[:-5]):
                continue
            path = os.path.join(self.repo.runs_dir, name)
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                if self._cache.pop(name, None) is not None:
                    gone.append(name[:-5])
                continue
            old = self._cache.get(name)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if old is None or old.stamp != stamp:
                old = self._cache[name] = self._cached(path, name, st, stamp)
            if old.record is not None:
                changed.append(old.record)
            else:
                gone.append(name[:-5])
        return changed, gone

    def records(self) -> Iterator[RunRecord]:
        """Every valid run as of the last scan or update."""
        return (c.record for c in self._cache.values() if c.record is not None)

    def get(self, run_id: str) -> RunRecord | None:
        """The run as of the last scan or update, or None."""
        cached = self._cache.get(f"{run_id}.json")
        return cached.record if cached is not None else None

    def modified(self, run_id: str) -> float | None:
        """When the run's file was last written (epoch seconds), as of the last scan."""
        cached = self._cache.get(f"{run_id}.json")
        return cached.stamp[0] / 1e9 if cached is not None else None

    def _cached(self, path: str, name: str, st: os.stat_result, stamp: tuple[int, int, int]) -> _Cached:
        if owned(st):
            return _Cached(stamp, self._read(path, name[:-5]))
        log.warning("skipping run file %s: it belongs to another user, uid %d", path, st.st_uid)
        return _Cached(stamp, None)

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(self.repo.runs_dir) as it:
                for entry in it:
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        yield entry
        except (FileNotFoundError, NotADirectoryError):
            return

    @staticmethod
    def _read(path: str, stem: str) -> RunRecord | None:
        try:
            record = read_record(Path(path))
        except FileNotFoundError:
            return None
        except CorruptRecordError as e:
            log.warning("skipping run file %s: %s", e.path, e.reason)
            return None
        if record.id != stem:
            log.warning("skipping run file %s: it holds run %s", path, record.id)
            return None
        return record


def _read_text(path: Path) -> str:
    """A file of lines as text (bytes that are no UTF-8 replaced). FileNotFoundError when it is
    not there; CorruptRecordError naming it when it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptRecordError(str(path), f"unreadable ({e.strerror})") from e


def read_record(path: Path) -> RunRecord:
    """Parse one run file; CorruptRecordError (naming the file) for anything but a valid record."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptRecordError(str(path), f"unreadable ({e.strerror})") from e
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecordError(str(path), f"not valid JSON ({e})") from e
    try:
        return RunRecord.from_dict(data)
    except ValueError as e:
        raise CorruptRecordError(str(path), str(e)) from e


def write_atomic(path: Path, data: dict[str, Any], mode: int = 0o600, sync: bool = True) -> None:
    """Write JSON to ``path`` so readers see the old file or the new one, never a mix; ``sync``:
    on the disk before it replaces the old one (a crash of the machine leaves one or the other)."""
    tmp = _write_temp(path.parent, data, mode, sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_temp(folder: Path, data: dict[str, Any], mode: int = 0o600, sync: bool = True) -> str:
    body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
    # mkstemp creates the file 0600 from the first instant.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        if mode != 0o600:
            os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp
