"""The sender of a spool: what the host's runs wrote, sent on to their Jupyter server.

Every process that writes a RemoteRepo (nbmonitor.remote) starts a sender
thread, and the threads of one spool take turns: the one that holds the
spool's ``sender.lock`` sends for every process of the host, so a host makes
at most one request a second however many ranks and workers it runs; the
others wait on the lock, and the next one takes over when its holder ends. A
sender looks at the spool's files once a second (or sooner, when its own
process wrote one), and sends in one batch each changed file's news: new lines
of a usage history or log tail from where the server's copy ends, a file
replaced whole (coarsened, cut) whole, a run file or checkpoint record whole,
the run files last. What the server took is kept in ``sender.json``, so the
next holder goes on from there; a spool without it is sent whole once, which
the server takes as once. A process that ends while it holds the lock gives
its sender a few seconds (``flush_all``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import _process, logtail, retention
from ._once import Trouble
from .ingest import SEND_EVERY
from .record import is_run_id
from .remote import Key, Rejected, RemoteRepo, Server, Unreachable, post
from .repo import write_atomic

__all__ = ["FLUSH_AT_EXIT", "SPOOL_KEEP", "Sender", "attach", "flush_all", "sender"]

log = logging.getLogger("nbmonitor.remote")

#: Seconds a process that ends gives its sender to deliver what is left.
FLUSH_AT_EXIT = 5.0
#: Seconds a spool keeps a run once its end reached the server (the server's repo keeps it).
SPOOL_KEEP = 86400.0
_PRUNE_EVERY = 3600.0
_BATCH = 3 << 20  # bytes of text in one batch (the server takes 4 MiB)
_BACKOFF = (1.0, 2.0, 4.0, 8.0, 10.0)  # between tries while the server does not answer

#: Sends one batch to a server, returning its answer (``remote.post``; tests give their own).
Post = Callable[[Server, bytes], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _File:
    """A file of the spool as the server has it: which file (inode), how many of its bytes, and
    its modification time then."""

    inode: int
    size: int
    mtime: int


class Sender:
    """One per process and spool; the one holding the spool's lock sends for the whole host."""

    EVERY = SEND_EVERY  # seconds between batches

    def __init__(self, repo: RemoteRepo, *, send: Post = post, mono: Callable[[], float] = time.monotonic):
        self.repo = repo
        self.send = send
        self.mono = mono
        self._state: dict[str, _File] = {}  # by path in the spool: what the server has
        self._cond = threading.Condition()
        self._leading = False
        self.lock_fd: int | None = None  # held while this process sends for the spool
        self.sent_files = 0  # files sent and taken, in all
        self._pending = 0  # files changed and not sent, at the last look
        self._begun = 0  # looks at the spool begun so far
        self._looked = 0  # and ended
        self._flush_asked = -1.0  # when a flush last asked for a look at once
        self._flushing = 0
        self._trouble = Trouble(log)
        self._thread: threading.Thread | None = None
        self._secret: str | None = None
        self._pruned = -_PRUNE_EVERY
        self._cut: set[str] = set()  # files replaced (cut, coarsened) while the server was away
        self._inodes: dict[str, int] = {}  # each usage history's and log tail's, at the last look
        self.batches = 0  # sent and answered

    def changed(self, key: Key | None = None) -> None:
        """A file of the spool changed: this process's sender starts (the first time)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbmonitor-sender", daemon=True)
                self._thread.start()

    @property
    def leading(self) -> bool:
        """Whether this process sends for the spool (it holds the lock)."""
        return self._leading

    def waiting(self) -> int:
        """Files of the spool changed and not sent, at the last look."""
        return self._pending

    def flush(self, timeout: float) -> bool:
        """Send what the spool holds now, waiting up to ``timeout`` seconds: whether it all went.
        A process that does not hold the lock leaves it to the one that does (True)."""
        self.changed()
        deadline = self.mono() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: self._leading, min(timeout, 0.5)):
                return True  # another process of this host sends
            self._flushing += 1
            self._flush_asked = self.mono()
            self._cond.notify_all()
            try:
                after = self._begun + 1  # a look that begins after this call ...
                while self._looked < after or self._pending:  # ... has ended with nothing left
                    left = deadline - self.mono()
                    if left <= 0 or self._thread is None or not self._thread.is_alive():
                        return False
                    self._cond.wait(min(left, 0.1))
                return True
            finally:
                self._flushing -= 1

    def _run(self) -> None:
        path = self.repo.path / "sender.lock"
        try:
            self.repo.ensure()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process of this host sends
        except OSError as e:
            log.warning("nbmonitor: cannot send from %s: %s", self.repo.path, e)
            return
        self.lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._load()
        with self._cond:
            self._leading = True
            self._cond.notify_all()
        self._loop()

    def _loop(self) -> None:
        """A look at the spool each second (its other processes' writes are seen so), further
        apart while the server does not answer, but each second for a process that ends."""
        last = -self.EVERY
        failures = 0
        while True:
            with self._cond:
                # A process that ends is looked for at once (its last request), then each second.
                while (left := last + self._pause(failures) - self.mono()) > 0:
                    if self._flushing and self._looked == self._begun and last < self._flush_asked:
                        break
                    self._cond.wait(left)
                self._begun += 1
            last = self.mono()
            try:
                done = self._send()
            except Exception as e:  # noqa: BLE001 - the sender must outlive any one failure
                log.warning("nbmonitor: sending to %s failed: %s", self.repo.server.base, e)
                done = False
            failures = 0 if done else failures + 1
            with self._cond:
                self._looked += 1
                self._cond.notify_all()
            if last - self._pruned >= _PRUNE_EVERY:
                self._pruned = last
                with contextlib.suppress(Exception):  # the spool's own retention: said by prune
                    retention.prune(self.repo, SPOOL_KEEP)

    def _pause(self, failures: int) -> float:
        if not failures or self._flushing:
            return self.EVERY
        return _BACKOFF[min(failures, len(_BACKOFF)) - 1]

    def _send(self) -> bool:
        """One look at the spool, and one batch of what changed; whether it went (or nothing did)."""
        ops: list[dict[str, Any]] = []
        states: list[tuple[str, _File | None]] = []
        size = 0
        left = 0
        for rel, op, state in self._changes():
            if size > _BATCH:
                left += 1
                continue
            ops.append(op)
            states.append((rel, state))
            size += len(op.get("text", "")) + 1000
        self._pending = len(ops) + left
        if not ops:
            return True
        if self._secret is None:
            self._secret = self.repo.client_secret()
        body = json.dumps({"client": self._secret, "ops": ops}, allow_nan=False).encode()
        try:
            answer = self.send(self.repo.server, body)
        except Unreachable as e:
            message = "nbmonitor: %s; the runs go on, and their records wait in %s until it answers"
            self._trouble.happened(str(e), message, e, self.repo.path)
            return False
        except Rejected as e:
            log.warning("nbmonitor: %s; that record is not sent", e)
            if e.index is not None and 0 <= e.index < len(states):
                rel, state = states[e.index]  # never again, until it changes
                self._state[rel] = state or self._stamp(rel) or _File(0, 0, 0)
                self._save()
            return True
        self._trouble.over("nbmonitor: %s answers again; what waited is sent", self.repo.server.base)
        if self._cut:
            log.warning(
                "nbmonitor: while %s did not answer, %d file(s) of %s were cut or coarsened before they "
                "could be sent (a log tail keeps its last %d lines, a usage history grows coarser with "
                "age): the server has them as they are now, with every run's end",
                self.repo.server.base,
                len(self._cut),
                self.repo.path,
                logtail.KEEP,
            )
            self._cut.clear()
        self.batches += 1
        resend = set(answer.get("resend") or ())
        for i, (rel, state) in enumerate(states):
            if i in resend:
                self._state.pop(rel, None)  # the server lost its copy: the whole file next time
            elif state is not None:
                self._state[rel] = state
            record = ops[i].get("record")
            if ops[i]["op"] == "run" and isinstance(record, dict) and i not in resend and _over(record):
                with contextlib.suppress(OSError):
                    self.repo.sent_dir.mkdir(mode=0o700, exist_ok=True)
                    self.repo.sent_path(record["id"]).touch(mode=0o600)
        self._pending -= len(states) - len(resend)
        self.sent_files += len(states) - len(resend)
        self._save()
        return True

    def _changes(self) -> Iterator[tuple[str, dict[str, Any], _File | None]]:
        """Each file of the spool whose server copy is behind: its path, the operation that brings
        it up, and what the server has once it is applied. Run files last, checkpoint records
        first; removed checkpoint records too."""
        repo = self.repo
        seen: set[str] = set()
        runs: list[tuple[str, dict[str, Any], _File | None]] = []
        folders = [(repo.checkpoints_dir / d.name, "checkpoint") for d in _entries(repo.checkpoints_dir)]
        folders += [(repo.usage_dir, "usage"), (repo.logs_dir, "log"), (repo.runs_dir, "run")]
        for folder, kind in folders:
            for entry in _entries(folder):
                if entry.name.startswith(".") or not entry.name.endswith((".json", ".jsonl")):
                    continue
                rel = os.path.relpath(entry.path, repo.path)
                seen.add(rel)
                try:
                    st = entry.stat()
                except OSError:
                    continue
                known = self._state.get(rel)
                if known is not None and (known.inode, known.mtime) == (st.st_ino, st.st_mtime_ns):
                    continue
                found = self._op(kind, entry.path, rel, known)
                if found is not None:
                    if kind == "run":
                        runs.append((rel, *found))
                    else:
                        yield (rel, *found)
        for rel in [r for r in self._state if r.startswith("checkpoints") and r not in seen]:
            _, job, name = rel.split(os.sep)
            yield rel, {"op": "uncheckpoint", "job": job, "name": name.removesuffix(".json")}, None
            self._state.pop(rel, None)
        for rel in [r for r in self._state if not r.startswith("checkpoints") and r not in seen]:
            del self._state[rel]  # pruned here; the server keeps its own
        for rel in [r for r in self._inodes if r not in seen]:
            del self._inodes[rel]
        yield from runs

    def _op(self, kind: str, path: str, rel: str, known: _File | None) -> tuple[dict[str, Any], _File] | None:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                whole = kind in ("run", "checkpoint") or known is None or known.inode != st.st_ino
                whole = whole or st.st_size < known.size  # type: ignore[union-attr]
                if kind in ("usage", "log"):
                    seen, self._inodes[rel] = self._inodes.get(rel), st.st_ino
                    if seen is not None and seen != st.st_ino and self._trouble.cause:
                        self._cut.add(rel)  # replaced while the server was away: what it lacked is gone
                start = 0 if whole else known.size  # type: ignore[union-attr]
                f.seek(start)
                data = f.read(st.st_size - start)
        except OSError:
            return None
        name = os.path.basename(path)
        if kind in ("run", "checkpoint"):
            state = _File(st.st_ino, st.st_size, st.st_mtime_ns)
            try:
                record = json.loads(data)
            except ValueError:
                return None  # half a file cannot be: a damaged one is not sent
            if kind == "run":
                return {"op": "run", "record": record}, state
            job = os.path.basename(os.path.dirname(path))
            return {
                "op": "checkpoint",
                "job": job,
                "name": name.removesuffix(".json"),
                "record": record,
            }, state
        whole_lines = data[: data.rfind(b"\n") + 1]  # the rest next time
        # A torn last line: the file is looked at again, whatever its modification time.
        state = _File(st.st_ino, start + len(whole_lines), st.st_mtime_ns if whole_lines == data else 0)
        data = whole_lines
        stem, _, rest = name.partition(".")
        part = int(rest.split(".")[0]) if kind == "log" and rest.count(".") == 1 else None
        if not is_run_id(stem):
            return None
        op: dict[str, Any] = {"op": "replace" if whole else "append", "file": kind, "run": stem, "part": part}
        op["text"] = data.decode("utf-8", "replace")
        if not whole:
            op["at"] = start
        return op, state

    def _stamp(self, rel: str) -> _File | None:
        with contextlib.suppress(OSError):
            st = os.stat(self.repo.path / rel)
            return _File(st.st_ino, st.st_size, st.st_mtime_ns)
        return None

    def _load(self) -> None:
        """What the server has, as the last holder of the lock left it."""
        try:
            data = json.loads((self.repo.path / "sender.json").read_text(encoding="utf-8"))
            self._state = {
                rel: _File(*map(int, stamp)) for rel, stamp in data["files"].items() if len(stamp) == 3
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._state = {}  # every file whole: the server takes it as once

    def _save(self) -> None:
        files = {rel: [s.inode, s.size, s.mtime] for rel, s in self._state.items()}
        with contextlib.suppress(OSError):
            write_atomic(
                self.repo.path / "sender.json", {"server": self.repo.server.base, "files": files}, sync=False
            )


def _over(record: dict[str, Any]) -> bool:
    """Whether a run file sent is its last: it ended, or its process on this host is gone."""
    if record.get("status") != "running":
        return True
    with contextlib.suppress(OSError, ValueError, TypeError):
        if record.get("host") == _process.host():
            return not _process.is_alive(
                record["pid"], record.get("process_start"), record.get("process_start_ticks")
            )
    return False


def _entries(folder: os.PathLike[str] | str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as found:
            return list(found)
    except (FileNotFoundError, NotADirectoryError):
        return []


_senders: dict[str, Sender] = {}
_senders_lock = threading.Lock()


def sender(repo: RemoteRepo) -> Sender:
    """This process's sender for ``repo``'s spool."""
    key = f"{repo.server.base}\0{repo.path}"
    with _senders_lock:
        found = _senders.get(key)
        if found is None:
            found = _senders[key] = Sender(repo)
        return found


def attach() -> None:
    """Send on what any RemoteRepo of this process writes (a run whose repo is one calls it)."""
    RemoteRepo.on_change = _changed


def _changed(repo: RemoteRepo, key: Key) -> None:
    sender(repo).changed(key)


def flush_all(timeout: float = FLUSH_AT_EXIT) -> None:
    """At the end of a process: send what is left, for up to ``timeout`` seconds in all, and
    say what stays in the spool for the next process."""
    deadline = time.monotonic() + timeout
    with _senders_lock:
        found = list(_senders.values())
    for each in found:
        if not each.flush(max(0.0, deadline - time.monotonic())):
            log.warning(
                "nbmonitor: %d file(s) could not reach %s before this process ended; they wait in "
                "%s, and the next process that reports there sends them (or: nbmonitor-watcher "
                "--repo %s send)",
                each.waiting(),
                each.repo.server.base,
                each.repo.path,
                each.repo.server.base,
            )


def _forget_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own, which waits for the
    lock like any other process's (the copy of its parent's lock it was born with is closed)."""
    global _senders_lock
    for each in _senders.values():
        if each.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(each.lock_fd)
    _senders.clear()
    _senders_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
