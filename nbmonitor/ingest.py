"""Ingest: the records of runs on hosts that share no filesystem, written into this repo.

A run whose repo is a Jupyter server's URL (nbmonitor.remote) keeps a local
copy of its files and sends what changed, once a second, as a batch of
operations; the server extension hands each batch here::

    {"client": "<its secret>", "ops": [
        {"op": "run", "record": {...}},                          the run file, whole
        {"op": "append", "file": "usage" | "log", "run": id, "part": pid | null,
         "at": <bytes the client sent before>, "text": "<whole lines>"},
        {"op": "replace", "file": "usage" | "log", "run": id, "part": pid | null, "text": "..."},
        {"op": "checkpoint", "job": key, "name": name, "record": {...}},
        {"op": "uncheckpoint", "job": key, "name": name}]}

Every operation is checked, as a reader checks a file, before any is applied:
a bad batch writes nothing. Each one can be applied twice with the effect of
once (a batch whose answer was lost is sent again): a run file or a record is
whole, and an append says where it starts, so what the server already has is
skipped. An append that starts past the end of what the server has (its copy
was removed meanwhile) is answered with ``resend``: the client then sends
the whole file.

A client owns the runs (and jobs) it wrote first: the server keeps the hash of
its secret in ``owners/<id>``, and refuses another client's writes to them, and
any write to a run that this host's own processes write. The records it
writes say ``via`` (the client's address): readers judge such runs by their
heartbeat, never by a pid of this host.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from . import history, logtail, rules
from .checkpoints import Checkpoint
from .errors import NbmonitorError
from .record import RunRecord, is_run_id
from .repo import Repo

__all__ = ["MAX_BODY", "Ingest", "IngestError", "Refused", "client_key", "token", "token_matches"]

#: Bytes of one request's body; a client sends less (nbmonitor.remote cuts its batches).
MAX_BODY = 4 << 20
MAX_OPS = 2000
#: Bytes of one run file, or of one text (a whole usage history or log tail is far less).
MAX_RECORD = 256 << 10
MAX_TEXT = 2 << 20
#: A client sends at most once a second (nbmonitor.remote), and a batch may take as long again.
SEND_EVERY = 1.0
SEND_LAG = 1.0
_CLIENT = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_NAME = re.compile(r"[0-9]{15}-[0-9a-f]{12}")
_FILES = ("usage", "log")


class IngestError(NbmonitorError, ValueError):
    """A batch that cannot be applied (HTTP 400): the message says which operation and why."""


class Refused(NbmonitorError):
    """A batch that writes what its client does not own (HTTP 403)."""


def token(repo: Repo, new: bool = False) -> str:
    """The repo's ingest token (made on first use, 0600; ``new``: replaced): it lets a far host
    send runs' records to this repo's Jupyter server, and nothing else, unlike the server's
    own token, which can run code there."""
    repo.ensure()
    path = repo.ingest_token_file
    if not new:
        with contextlib.suppress(FileNotFoundError):
            found = path.read_text(encoding="ascii").strip()
            if found:
                return found
    made = "nbm-" + secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=repo.path)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(made + "\n")
    os.replace(tmp, path)
    return made


def token_matches(repo: Repo, given: str) -> bool:
    """Whether ``given`` is the repo's ingest token (compared in constant time)."""
    try:
        expected = repo.ingest_token_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def client_key(secret: str) -> str:
    """What the server keeps of a client's secret: enough to know it again, not to be it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Op:
    kind: str  # run, append, replace, checkpoint, uncheckpoint
    owned: str  # the run id or job key it writes
    file: str = ""  # usage or log
    part: int | None = None
    at: int = 0
    data: bytes = b""
    record: RunRecord | None = None
    raw: dict[str, Any] | None = None  # the run file as received
    name: str = ""
    checkpoint: dict[str, Any] | None = None


class Ingest:
    """Applies clients' batches to one repo, one batch at a time."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}  # run ids and job keys: their client, as read or written

    def apply(self, body: bytes, address: str) -> dict[str, Any]:
        """Check and apply one batch from ``address``; returns ``{"applied": n, "resend": [i,
        ...]}``. IngestError for a malformed batch, Refused for another's runs: nothing written."""
        if len(body) > MAX_BODY:
            raise IngestError(f"a batch is at most {MAX_BODY} bytes, got {len(body)}")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise IngestError(f"a batch must be JSON: {e}") from None
        if not isinstance(data, dict):
            raise IngestError(f"a batch must be a JSON object, got {type(data).__name__}")
        secret, ops = data.get("client"), data.get("ops")
        if not isinstance(secret, str) or not _CLIENT.fullmatch(secret):
            raise IngestError("field 'client' must be the client's secret (64 hex digits)")
        if not isinstance(ops, list) or len(ops) > MAX_OPS:
            raise IngestError(f"field 'ops' must be a list of at most {MAX_OPS} operations")
        parsed = []
        for i, op in enumerate(ops):
            try:
                parsed.append(_parse(op))
            except ValueError as e:
                raise IngestError(f"operation {i}: {e}") from None
        client = client_key(secret)
        via = address[:200] or "http"
        with self._lock:
            new = {op.owned: None for i, op in enumerate(parsed) if not self._owned(i, op, client)}
            if new:  # only once every operation may be applied
                self.repo.ensure()
                self.repo.owners_dir.mkdir(mode=0o700, exist_ok=True)
                for key in new:
                    self._own(key, client)
            resend = [i for i, op in enumerate(parsed) if not self._apply(op, via)]
        return {"applied": len(parsed) - len(resend), "resend": resend}

    def _owned(self, i: int, op: _Op, client: str) -> bool:
        """Whether ``client`` owns what ``op`` writes already (False: no client does yet);
        Refused when another does, or this host's own processes write it."""
        owner = self._owners.get(op.owned)
        try:
            if owner is None:
                owner = self._owners[op.owned] = self.repo.owner_path(op.owned).read_text("ascii").strip()
        except FileNotFoundError:
            if _local(self.repo, op):
                raise Refused(f"operation {i}: {op.owned} is written on this host, not sent") from None
            return False
        except OSError as e:
            raise Refused(f"operation {i}: cannot read who owns {op.owned}: {e.strerror}") from None
        if owner != client:
            raise Refused(f"operation {i}: {op.owned} belongs to another client")
        return True

    def _own(self, key: str, client: str) -> None:
        """``client`` owns ``key`` from now on: the first to write it, also with another server
        on this repo (the file is linked into place whole, and only if none is there)."""
        path = self.repo.owner_path(key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.repo.owners_dir)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(client)
            os.link(tmp, path)
        except FileExistsError:
            if path.read_text("ascii").strip() != client:
                raise Refused(f"{key} belongs to another client") from None
        finally:
            os.unlink(tmp)
        self._owners[key] = client

    def _apply(self, op: _Op, via: str) -> bool:
        """Apply one checked operation; False when an append starts past what this repo has."""
        repo = self.repo
        if op.kind == "run":
            run, data = op.record, op.raw
            assert run is not None
            assert data is not None
            # Its file here trails the process by the client's batching too, and is refreshed
            # no oftener than the client sends: deadlines and heartbeats allow for both.
            lag, heartbeat = rules.write_lag(run.write_lag) + SEND_LAG, run.heartbeat
            heartbeat = None if heartbeat is None else max(heartbeat, SEND_EVERY + SEND_LAG)
            # Not synced to the disk: the far host has it, and sends a newer one within a second.
            repo.write_run_data(
                run.id, data | {"via": via, "write_lag": lag, "heartbeat": heartbeat}, sync=False
            )
        elif op.kind == "checkpoint":
            assert op.checkpoint is not None
            repo.write_checkpoint(op.owned, op.name, op.checkpoint)
        elif op.kind == "uncheckpoint":
            with contextlib.suppress(FileNotFoundError):
                repo.remove_checkpoint(op.owned, op.name)
        elif op.kind == "replace":
            text = op.data.decode()
            if op.file == "usage":
                repo.replace_usage(op.owned, text)
            else:
                repo.replace_log(op.owned, text, op.part)
        else:
            path = repo.usage_path(op.owned) if op.file == "usage" else repo.log_path(op.owned, op.part)
            try:
                have = os.stat(path).st_size
            except FileNotFoundError:
                have = 0
            if have < op.at:
                return False
            new = op.data[have - op.at :]
            if new:
                if op.file == "usage":
                    repo.append_usage(op.owned, new.decode())
                else:
                    repo.append_log(op.owned, new.decode(), op.part)
        return True


def _local(repo: Repo, op: _Op) -> bool:
    """Whether what ``op`` writes, owned by no client, is there already: this host's own."""
    if op.kind in ("checkpoint", "uncheckpoint"):
        return (repo.checkpoints_dir / op.owned).is_dir()
    found = (repo.run_path(op.owned), repo.usage_path(op.owned), repo.log_path(op.owned))
    return any(p.exists() for p in found)


def _parse(op: object) -> _Op:
    if not isinstance(op, dict):
        raise ValueError(f"must be an object, got {type(op).__name__}")
    kind = op.get("op")
    if kind == "run":
        record = op.get("record")
        if len(json.dumps(record)) > MAX_RECORD:
            raise ValueError(f"a run file is at most {MAX_RECORD} bytes")
        run = RunRecord.from_dict(record)
        assert isinstance(record, dict)
        return _Op("run", run.id, record=run, raw=record)
    if kind in ("checkpoint", "uncheckpoint"):
        job, name = op.get("job"), op.get("name")
        if not isinstance(job, str) or not is_run_id(job):
            raise ValueError("field 'job' must be a job key (32 hex digits)")
        if not isinstance(name, str) or not _CHECKPOINT_NAME.fullmatch(name):
            raise ValueError("field 'name' must be a checkpoint record's name")
        if kind == "uncheckpoint":
            return _Op(kind, job, name=name)
        record = op.get("record")
        if len(json.dumps(record)) > MAX_RECORD:
            raise ValueError(f"a checkpoint record is at most {MAX_RECORD} bytes")
        Checkpoint.from_dict(record, name)
        assert isinstance(record, dict)
        return _Op(kind, job, name=name, checkpoint=record)
    if kind not in ("append", "replace"):
        raise ValueError(f"field 'op' must be run, append, replace, checkpoint or uncheckpoint, got {kind!r}")
    file, run_id, part, text = op.get("file"), op.get("run"), op.get("part"), op.get("text")
    if file not in _FILES:
        raise ValueError(f"field 'file' must be usage or log, got {str(file)[:40]!r}")
    if not isinstance(run_id, str) or not is_run_id(run_id):
        raise ValueError(f"field 'run' is not a run id: {str(run_id)[:40]!r}")
    if part is not None and (type(part) is not int or part <= 0 or file != "log"):
        raise ValueError("field 'part' must be a worker's pid, of a log only")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError(f"field 'text' must be text of at most {MAX_TEXT} characters")
    if text and not text.endswith("\n"):
        raise ValueError("field 'text' must be whole lines")
    at = op.get("at", 0)
    if kind == "append" and (type(at) is not int or at < 0):
        raise ValueError("field 'at' must be a whole number of bytes")
    _check_lines(file, run_id, text, whole=kind == "replace" or at == 0)
    return _Op(kind, run_id, file=file, part=part, at=at, data=text.encode())


def _check_lines(file: str, run_id: str, text: str, whole: bool) -> None:
    """The lines as a reader of the file would take them: none of them bad."""
    if not text:
        return
    if file == "log":
        _, bad = logtail.parse(text, run_id)
        if bad:
            raise ValueError(f"{bad} line(s) of the log are not log lines")
        return
    lines = text.splitlines()
    if not whole:  # a later part of the file: read it after a header, as the reader would
        lines.insert(0, history.encode_header(run_id, 0.0, "-", "-"))
    try:
        found = history.parse(lines, run_id)
    except ValueError as e:
        raise ValueError(f"the usage history: {e}") from None
    if found.run_id != run_id:
        raise ValueError(f"the usage history is of another run ({found.run_id[:40]!r})")
    if found.skipped:
        raise ValueError(f"line {found.first_bad} of the usage history is not a usage line")
