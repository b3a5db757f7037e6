"""Checkpoints: directories a job saves its state into, complete or not at all, and their records.

``save`` gives a fresh directory (``.partial-<pid>-<nonce>`` in the job's
checkpoint directory); the caller writes its files there. When it is done,
every file and directory in it is flushed to disk (fsync), it is renamed into
place in one step (``step-<step>-<nonce>``), and only then recorded in the
repo (``checkpoints/<job key>/<name>.json``, written whole). A process killed
before that leaves a partial directory and no record: ``latest`` never
returns it, and the next ``save`` or ``latest`` of the job removes it once its
process is gone. Data is never copied: the files are the caller's, where they
were written.

A job is the same work across attempts (docs/repo-format.md): the supervisor's
job id, torchrun's ``TORCHELASTIC_RUN_ID``, SLURM's ``SLURM_JOB_ID``, else the
script or notebook and the run's name, so running the cell again after a
kernel died resumes too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _process
from .errors import NbmonitorError
from .record import Origin, SupervisorField
from .repo import Repo

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "attempt",
    "job_of",
    "latest",
    "save",
    "supervisor",
    "torchrun_restarts",
]

FORMAT = 1
#: Bytes of a checkpoint's metadata (as JSON) kept in its record.
METADATA_MAX = 16_384
_PARTIAL = re.compile(r"^\.partial-(\d+)-[0-9a-f]{12}$")
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


class CheckpointError(NbmonitorError):
    """A checkpoint could not be made, saved or found; the message says why (and what stays)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One complete checkpoint: where its files are, its step, when it was saved, its metadata."""

    path: Path
    step: int | None
    at: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""
    size: int = 0  # bytes of its files
    attempt: int = 0  # the restart it was saved in (0: the first attempt)
    name: str = ""  # its record's name in the repo

    def to_dict(self, job: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "job": job,
            "path": str(self.path),
            "step": self.step,
            "at": self.at,
            "metadata": dict(self.metadata),
            "run": self.run_id,
            "size": self.size,
            "attempt": self.attempt,
        }

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Checkpoint:
        """A record; ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a checkpoint record must be an object, got {type(data).__name__}")
        path, step, at, metadata = data.get("path"), data.get("step"), data.get("at"), data.get("metadata")
        if not isinstance(path, str) or not path:
            raise ValueError("field 'path' must be a path")
        if step is not None and (type(step) is not int or step < 0):
            raise ValueError("field 'step' must be a whole number >= 0 or null")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise ValueError("field 'at' must be a time")
        if not isinstance(metadata, dict):
            raise ValueError("field 'metadata' must be an object")
        size, attempt, run = data.get("size", 0), data.get("attempt", 0), data.get("run", "")
        if type(size) is not int or type(attempt) is not int or not isinstance(run, str):
            raise ValueError("fields 'size', 'attempt' and 'run' must be whole numbers and a run id")
        return cls(Path(path), step, float(at), metadata, run, size, attempt, name)


def job_of(name: str, where: Origin, environ: Mapping[str, str] | None = None) -> str:
    """The job a run of ``name`` from ``where`` works for, the same across its attempts."""
    env = os.environ if environ is None else environ
    for variable, launcher in (
        ("NBMONITOR_JOB_ID", "nbmonitor"),
        ("TORCHELASTIC_RUN_ID", "torchrun"),
        ("SLURM_JOB_ID", "slurm"),
    ):
        if env.get(variable):
            return f"{launcher}:{env[variable]}:{name}"
    return f"{where.kind}:{where.path or os.getcwd()}:{name}"


def job_key(job: str) -> str:
    """The job as a name in the repo: 32 hex digits."""
    return hashlib.sha256(job.encode()).hexdigest()[:32]


def default_dir(name: str, where: Origin, environ: Mapping[str, str] | None = None) -> Path:
    """Where a job's checkpoints go unless told: ``$NBMONITOR_CHECKPOINT_DIR/<run name>``, else
    ``checkpoints/<run name>`` beside the script (or in the notebook's folder, the kernel's
    working directory). Never in the repo, which may sit on a small home volume."""
    env = os.environ if environ is None else environ
    slug = _SLUG.sub("-", name).strip("-.")[:80] or "run"
    chosen = env.get("NBMONITOR_CHECKPOINT_DIR")
    if chosen:
        return Path(chosen).expanduser() / slug
    if where.kind == "script" and where.path and where.path not in ("-c", "-m"):
        return Path(where.path).parent / "checkpoints" / slug
    return Path.cwd() / "checkpoints" / slug


def _metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as JSON-able metadata; CheckpointError naming what is not."""
    try:
        text = json.dumps(dict(values), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint metadata must be JSON numbers, text, lists or objects: {e}"
        ) from None
    if len(text) > METADATA_MAX:
        raise CheckpointError(f"checkpoint metadata is {len(text)} bytes as JSON; at most {METADATA_MAX}")
    result: dict[str, Any] = json.loads(text)
    return result


@contextlib.contextmanager
def save(
    repo: Repo,
    job: str,
    directory: Path,
    *,
    step: int | None,
    metadata: Mapping[str, Any],
    run_id: str,
    keep: int | None = 3,
    best: str | None = None,
) -> Iterator[Path]:
    """A fresh directory to write a checkpoint into; complete, in place and recorded when the
    block ends, or gone if it raises. ``keep``: how many of the job's newest stay (the best by
    the metadata value ``best`` too: ``"loss"`` smallest, ``"max:accuracy"`` largest)."""
    if step is not None and (type(step) is not int or step < 0):
        raise CheckpointError(f"step must be a whole number >= 0, got {step!r}")
    if keep is not None and (type(keep) is not int or keep < 1):
        raise CheckpointError(f"keep must be a whole number >= 1 (or None: keep all), got {keep!r}")
    meta = _metadata(metadata)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _clean_partials(directory)
        nonce = uuid.uuid4().hex[:12]
        partial = directory / f".partial-{os.getpid()}-{nonce}"
        partial.mkdir(mode=0o700)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints in {directory}: {e.strerror or e}") from None
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    final = directory / (f"step-{step:012d}-{nonce}" if step is not None else f"checkpoint-{nonce}")
    try:
        size = _flush_tree(partial)
        os.rename(partial, final)
        _fsync_dir(directory)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(
            f"the checkpoint at step {step} could not be saved in {directory}: {e.strerror or e}; "
            "the previous one stays the latest"
        ) from None
    at = time.time()
    made_in = attempt()
    made = Checkpoint(final, step, at, meta, run_id, size, made_in, f"{int(at * 1000):015d}-{nonce}")
    key = job_key(job)
    try:
        repo.write_checkpoint(key, made.name, made.to_dict(job))
    except OSError as e:
        raise CheckpointError(
            f"the checkpoint at step {step} is saved in {final} but cannot be recorded in {repo.path} "
            f"({e.strerror or e}); the previous one stays the latest"
        ) from None
    if keep is not None:
        _prune(repo, key, keep, best)


def latest(repo: Repo, job: str) -> Checkpoint | None:
    """The newest complete checkpoint of ``job`` whose files are still there, or None."""
    found = _records(repo, job_key(job))
    for checkpoint in reversed(found):
        if checkpoint.path.is_dir():
            with contextlib.suppress(OSError):
                _clean_partials(checkpoint.path.parent)
            return checkpoint
    return None


def _records(repo: Repo, key: str) -> list[Checkpoint]:
    """The job's checkpoint records, oldest first (a damaged one is left out)."""
    folder = repo.checkpoints_dir / key
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
            found.append(Checkpoint.from_dict(data, name.removesuffix(".json")))
        except (OSError, ValueError):
            continue  # a damaged record: that checkpoint is not offered
    return found


def _prune(repo: Repo, key: str, keep: int, best: str | None) -> None:
    """Remove all but the ``keep`` newest (and the best): the record first, then the files."""
    found = _records(repo, key)
    kept = {c.name for c in found[-keep:]}
    if best:
        largest = best.startswith("max:")
        metric = best.removeprefix("max:").removeprefix("min:")
        scored = [c for c in found if isinstance(c.metadata.get(metric), int | float)]
        if scored:
            chosen = (max if largest else min)(scored, key=lambda c: c.metadata[metric])
            kept.add(chosen.name)
    for checkpoint in found:
        if checkpoint.name in kept:
            continue
        with contextlib.suppress(OSError):
            repo.remove_checkpoint(key, checkpoint.name)
        shutil.rmtree(checkpoint.path, ignore_errors=True)


def _clean_partials(directory: Path) -> None:
    """Remove the partial checkpoints of processes that are gone (killed while saving)."""
    for entry in os.scandir(directory):
        found = _PARTIAL.match(entry.name)
        if found and entry.is_dir(follow_symlinks=False) and not _process.is_alive(int(found.group(1)), None):
            shutil.rmtree(entry.path, ignore_errors=True)


def _flush_tree(root: Path) -> int:
    """fsync every file and directory under ``root``; the bytes of its files."""
    size = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                size += os.fstat(fd).st_size
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))
    return size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def attempt(environ: Mapping[str, str] | None = None) -> int:
    """Which attempt of its job this process is: ``NBMONITOR_RESTART_COUNT`` (set by
    ``nbmonitor-watcher run``), else torchrun's ``TORCHELASTIC_RESTART_COUNT``, else SLURM's
    ``SLURM_RESTART_COUNT`` (a requeued job); 0 for the first."""
    env = os.environ if environ is None else environ
    for variable in ("NBMONITOR_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"):
        text = env.get(variable, "")
        if text.isdigit():
            return int(text)
    return 0


def torchrun_restarts(environ: Mapping[str, str] | None = None) -> tuple[int | None, int]:
    """torchrun's restarts: how many it allows in all (``TORCHELASTIC_MAX_RESTARTS``; None outside
    torchrun) and which this is (``TORCHELASTIC_RESTART_COUNT``)."""
    env = os.environ if environ is None else environ
    most, count = env.get("TORCHELASTIC_MAX_RESTARTS", ""), env.get("TORCHELASTIC_RESTART_COUNT", "")
    return (int(most) if most.isdigit() else None), (int(count) if count.isdigit() else 0)


def supervisor(environ: Mapping[str, str] | None = None) -> SupervisorField | None:
    """The ``nbmonitor-watcher run`` that started this process's job (``NBMONITOR_SUPERVISOR``:
    ``<pid>`` or ``<pid>:<start ticks>``), or None."""
    env = os.environ if environ is None else environ
    pid, _, ticks = env.get("NBMONITOR_SUPERVISOR", "").partition(":")
    if not pid.isdigit() or not (ticks == "" or ticks.isdigit()):
        return None
    return SupervisorField(int(pid), int(ticks) if ticks else None)
