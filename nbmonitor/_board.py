"""The worker board: how multiprocessing workers report progress to the run that started them.

A process that opens a ``watch()`` block or a ``%%watch`` cell keeps one
board: a small file in shared memory (``/dev/shm``, else the runtime or temp
directory) named by its pid and start ticks. A worker, a multiprocessing
child (fork, spawn or forkserver) or a child of one, finds its parent's board
by its parent's pid, claims a slot under an flock once, and from then on its
``report_progress()`` is a store into shared memory: no I/O, no system call.
The board's owner (the leader) reads the slots on its writer thread.

A worker marks its slot when it ends by itself (multiprocessing's exit
function runs, with the exception it dies of, if any), and a process that
kills one of its job's workers (``Pool.terminate()``, ProcessPoolExecutor and
``torch.multiprocessing.spawn`` tearing down) marks the victim's slot first,
through an audit hook on ``os.kill``. A worker found gone with neither mark
died of something else: a crash, the OOM killer, a ``kill -9``.

Layout (native int64 words; docs/repo-format.md has the table): a header of
16 words, then ``SLOTS`` slots of 16 words, each with its worker's pid, start
ticks, progress, step, end, rank and promise, the run it reports for and its
name.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import mmap
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _process

__all__ = ["SLOTS", "Board", "SlotView", "Worker", "beat", "directory", "leader_board", "worker"]

log = logging.getLogger("nbmonitor")

SLOTS = 256
_MAGIC = 0x4E424D424F415244  # "NBMBOARD"
_VERSION = 1
_WORDS = 16  # per header and per slot
_WORD = 8
_SIZE = (_WORDS + SLOTS * _WORDS) * _WORD
_RUN_ID = 16  # bytes of a run id (32 hex digits)
_NAME = 48  # bytes of a name, utf-8

# Header words.
_H_MAGIC, _H_VERSION, _H_SLOTS, _H_USED, _H_OPEN, _H_PID = range(6)
_H_RUN_AT = 8 * _WORD  # bytes: the newest open block's run id, then its name
# Slot words.
_PID, _TICKS, _PROGRESS, _STEP, _END, _SIGNAL, _RANK, _ETA = range(8)
_S_RUN_AT = 8 * _WORD  # bytes within a slot: the run it reports for, then the worker's name
# What a slot's _END holds.
RUNNING, ENDED, FAILED, TERMINATED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class SlotView:
    """One worker's slot, as the leader reads it."""

    index: int
    pid: int
    ticks: int
    progress: int
    step: int | None
    end: int  # RUNNING, ENDED, FAILED or TERMINATED
    signal: int  # TERMINATED: the signal its own job sent
    rank: int | None
    eta: float | None
    run_id: str | None
    name: str

    @property
    def key(self) -> tuple[int, int, int]:
        """Names the worker, not the slot (a slot is reused)."""
        return (self.index, self.pid, self.ticks)


def directory() -> Path:
    """Where boards live: shared memory if there is some, for this user alone."""
    import tempfile  # here: only a block's first board needs it

    for base in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()):
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return Path(base) / f"nbmonitor-{os.getuid()}"
    return Path(tempfile.gettempdir()) / f"nbmonitor-{os.getuid()}"


def _name_of(pid: int, ticks: int | None) -> str:
    return f"{pid}-{ticks if ticks is not None else 0}.board"


class Board:
    """A board mapped into this process: the leader's own, or the one a worker reports to."""

    def __init__(self, path: Path, fd: int, mapped: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapped
        self.words = memoryview(mapped).cast("q")

    @classmethod
    def create(cls, where: Path) -> Board:
        """A new, empty board for this process in ``where`` (made 0700); boards of processes
        that are gone are removed first."""
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        _sweep(where)
        path = where / _name_of(os.getpid(), _process.start_ticks())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            board = cls(path, fd, mmap.mmap(fd, _SIZE))
        except BaseException:
            os.close(fd)
            raise
        words = board.words
        words[_H_SLOTS], words[_H_PID], words[_H_VERSION] = SLOTS, os.getpid(), _VERSION
        words[_H_MAGIC] = _MAGIC  # last: a reader trusts a board only once this is there
        return board

    @classmethod
    def open(cls, path: Path) -> Board | None:
        """The board at ``path`` (a link is followed), or None if there is none or it is not one."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != _SIZE:
                raise ValueError("not a board")
            board = cls(Path(os.path.realpath(path)), fd, mmap.mmap(fd, _SIZE))
            if board.words[_H_MAGIC] != _MAGIC or board.words[_H_VERSION] != _VERSION:
                board.close()
                return None
            return board
        except (OSError, ValueError):
            os.close(fd)
            return None

    # -- the leader ----------------------------------------------------------------

    def blocks(self, open_count: int, run_id: str | None, name: str) -> None:
        """The leader's open blocks changed: how many, and the newest one's run."""
        self._map[_H_RUN_AT : _H_RUN_AT + _RUN_ID] = _id_bytes(run_id)
        self._map[_H_RUN_AT + _RUN_ID : _H_RUN_AT + _RUN_ID + _NAME] = _name_bytes(name)
        self.words[_H_OPEN] = open_count

    def slots(self) -> Iterator[SlotView]:
        """The slots in use."""
        words, raw = self.words, self._map
        for index in range(min(words[_H_USED], SLOTS)):
            base = _WORDS * (index + 1)
            pid = words[base + _PID]
            if pid <= 0:
                continue
            at = base * _WORD + _S_RUN_AT
            step, rank, eta = words[base + _STEP], words[base + _RANK], words[base + _ETA]
            yield SlotView(
                index=index,
                pid=pid,
                ticks=words[base + _TICKS],
                progress=words[base + _PROGRESS],
                step=step - 1 if step > 0 else None,
                end=words[base + _END],
                signal=words[base + _SIGNAL],
                rank=rank - 1 if rank > 0 else None,
                eta=eta / 1e6 if eta > 0 else None,
                run_id=_id_text(raw[at : at + _RUN_ID]),
                name=raw[at + _RUN_ID : at + _RUN_ID + _NAME].rstrip(b"\0").decode("utf-8", "replace"),
            )

    def free(self, index: int, pid: int) -> None:
        """Give a gone worker's slot back (if ``pid`` still holds it)."""
        with self._locked():
            base = _WORDS * (index + 1)
            if self.words[base + _PID] == pid:
                self.words[base : base + _WORDS] = memoryview(bytes(_WORDS * _WORD)).cast("q")

    def remove(self) -> None:
        """The leader is done with its board: no worker finds it any more."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        _unlink_links_to(self.path)

    # -- a worker ------------------------------------------------------------------

    def is_open(self) -> bool:
        """The leader has an open block that workers' progress counts for."""
        return self.words[_H_OPEN] > 0

    def current(self) -> tuple[str | None, str]:
        """The leader's newest open block: its run id and name."""
        raw = self._map[_H_RUN_AT : _H_RUN_AT + _RUN_ID + _NAME]
        return _id_text(raw[:_RUN_ID]), raw[_RUN_ID:].rstrip(b"\0").decode("utf-8", "replace")

    def claim(self, run_id: str | None, name: str, rank: int | None) -> int | None:
        """A free slot for this process (its index), or None when all are taken."""
        pid, ticks = os.getpid(), _process.start_ticks() or 0
        with self._locked():
            words = self.words
            for index in range(SLOTS):
                base = _WORDS * (index + 1)
                if words[base + _PID] not in (0, pid):
                    continue
                words[base : base + _WORDS] = memoryview(bytes(_WORDS * _WORD)).cast("q")
                at = base * _WORD + _S_RUN_AT
                self._map[at : at + _RUN_ID] = _id_bytes(run_id)
                self._map[at + _RUN_ID : at + _RUN_ID + _NAME] = _name_bytes(name)
                words[base + _RANK] = rank + 1 if rank is not None else 0
                words[base + _TICKS] = ticks
                words[base + _PID] = pid
                words[_H_USED] = max(words[_H_USED], index + 1)
                return index
        return None

    def mark_killed(self, pid: int, signal: int) -> None:
        """A process of this job is about to send ``signal`` to ``pid``: if that is a running
        worker, its end is its job's doing, no crash."""
        words = self.words
        for index in range(min(words[_H_USED], SLOTS)):
            base = _WORDS * (index + 1)
            if words[base + _PID] == pid and words[base + _END] == RUNNING:
                words[base + _SIGNAL] = signal
                words[base + _END] = TERMINATED

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.words.release()
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class Worker:
    """This process's slot on its leader's board: what its progress reports write to."""

    __slots__ = ("at", "base", "board", "index", "words")

    def __init__(self, board: Board, index: int) -> None:
        self.board, self.index = board, index
        self.base = _WORDS * (index + 1)
        self.at = self.base + _PROGRESS
        self.words = board.words

    def beat(self) -> None:
        """One progress report: memory only, one store into the shared slot."""
        self.words[self.at] += 1

    def report(self, expect_next_in: float | None = None, step: int | None = None) -> None:
        """A progress report with a step or a promise: one store per value."""
        words, base = self.words, self.base
        words[base + _PROGRESS] += 1
        if step is not None:
            words[base + _STEP] = step + 1
        if expect_next_in is not None:
            words[base + _ETA] = max(1, int(expect_next_in * 1e6))

    def advance(self, count: int) -> None:
        """``count`` more items done (a loop counted by ``track()``)."""
        self.words[self.base + _PROGRESS] += count

    def end(self, failed: bool) -> None:
        """This worker ends by itself: it finished its work, or ``failed`` by an exception."""
        words, base = self.words, self.base
        if words[base + _PID] == os.getpid() and words[base + _END] == RUNNING:
            words[base + _END] = FAILED if failed else ENDED


# -- per process ---------------------------------------------------------------------

_lock = threading.Lock()
_leader: Board | None = None
_parent: Board | bool | None = False  # False: not looked for yet
_worker: Worker | bool | None = False  # False: not claimed yet; None: cannot be
_hooked = False


def leader_board() -> Board | None:
    """This process's own board, made on first use; None if it cannot be made (said once)."""
    global _leader
    if _leader is None:
        with _lock:
            if _leader is None:
                try:
                    _leader = Board.create(directory())
                except OSError as e:
                    log.warning(
                        "nbmonitor: workers cannot report progress (no board in %s: %s)", directory(), e
                    )
                    return None
                _hook()
                atexit.register(_leader.remove)
    return _leader


def parent_board() -> Board | None:
    """The board this process's parent (or its parent's leader) keeps, if this process is a
    multiprocessing worker of one; looked for once."""
    global _parent
    if _parent is False:
        with _lock:
            if _parent is False:
                _parent = _find_parent_board()
    return _parent if isinstance(_parent, Board) else None


def worker(run_id: str | None = None, name: str | None = None) -> Worker | None:
    """This process's slot on its parent's board, claimed on first use, when the parent has an
    open block (else None, and asked again next time: a pool made before a block is used in one)."""
    global _worker
    found = _worker
    if found.__class__ is Worker or found is None:
        return found  # a Worker or None: the hot path
    board = parent_board()
    if board is None:
        _worker = None
        return None
    if not board.is_open():
        return None
    with _lock:
        if _worker is False:
            _worker = _claim(board, run_id, name)
    return _worker if isinstance(_worker, Worker) else None


def beat(run_id: str | None = None) -> bool:
    """One progress report of this worker (claiming its slot first, if need be); False when it is
    no worker of an open block. The hot path is one store into shared memory."""
    found = _worker
    if found.__class__ is Worker:
        found.words[found.at] += 1
        return True
    slot = worker(run_id)
    if slot is None:
        return False
    slot.beat()
    return True


def _claim(board: Board, run_id: str | None, name: str | None) -> Worker | None:
    mp = sys.modules.get("multiprocessing")
    own = name or _loader_worker() or (mp.current_process().name if mp is not None else f"pid {os.getpid()}")
    index = board.claim(run_id if run_id is not None else board.current()[0], own, _env_rank())
    if index is None:
        log.warning("nbmonitor: the board has no free slot; this worker's progress is not counted")
        return None
    slot = Worker(board, index)
    _hook()
    with contextlib.suppress(OSError):  # this worker's own workers report to the same board
        link = board.path.parent / _name_of(os.getpid(), _process.start_ticks())
        link.unlink(missing_ok=True)
        link.symlink_to(board.path.name)
    if mp is not None:
        from multiprocessing import util

        util.Finalize(None, _worker_exit, exitpriority=90)
    return slot


def _worker_exit() -> None:
    # In the finally of the worker's bootstrap: an exception on its way out means it failed.
    exc = sys.exc_info()[1]
    failed = exc is not None and not (isinstance(exc, SystemExit) and exc.code in (None, 0))
    if isinstance(_worker, Worker):
        _worker.end(failed)
        with contextlib.suppress(OSError):
            (_worker.board.path.parent / _name_of(os.getpid(), _process.start_ticks())).unlink()


def _find_parent_board() -> Board | None:
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return None  # a multiprocessing child has it imported before any code of ours runs
    parent = mp.parent_process()
    if parent is None or parent.pid is None:
        return None
    return Board.open(directory() / _name_of(parent.pid, _process.start_ticks(parent.pid)))


def _env_rank() -> int | None:
    """This worker's rank: torch.distributed's once it is set up, else its launcher's."""
    dist = sys.modules.get("torch.distributed")
    with contextlib.suppress(Exception):  # whatever torch's state, a rank is no reason to fail
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    for var in ("RANK", "LOCAL_RANK"):
        text = os.environ.get(var, "")
        if text.isdigit():
            return int(text)
    return None


def _hook() -> None:
    """Note this process's kills of its job's workers on the board (once per process)."""
    global _hooked
    if not _hooked:
        _hooked = True
        sys.addaudithook(_audit)


_ENDING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "os.kill":
        return
    pid, sent = args
    if not isinstance(pid, int) or pid <= 0 or sent not in _ENDING_SIGNALS:
        return
    for board in (_leader, _parent):
        if isinstance(board, Board):
            board.mark_killed(pid, sent)


def _sweep(where: Path) -> None:
    """Remove the boards (and links) of processes that are gone."""
    try:
        entries = list(os.scandir(where))
    except OSError:
        return
    for entry in entries:
        stem = entry.name.removesuffix(".board")
        pid_text, _, ticks_text = stem.partition("-")
        if stem == entry.name or not (pid_text.isdigit() and ticks_text.isdigit()):
            continue
        dangling = entry.is_symlink() and not os.path.exists(entry.path)
        if dangling or not _process.is_alive(int(pid_text), None, int(ticks_text) or None):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _unlink_links_to(path: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if entry.is_symlink() and os.readlink(entry.path) == path.name:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _id_bytes(run_id: str | None) -> bytes:
    try:
        return bytes.fromhex(run_id) if run_id and len(run_id) == 2 * _RUN_ID else bytes(_RUN_ID)
    except ValueError:
        return bytes(_RUN_ID)


def _id_text(raw: bytes) -> str | None:
    return raw.hex() if any(raw) else None


def _loader_worker() -> str | None:
    """``DataLoader worker 2`` in a worker of a torch DataLoader (torch tells its number)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return f"DataLoader worker {info.id}" if info is not None else None


def _name_bytes(name: str) -> bytes:
    data = name.encode("utf-8")[:_NAME]
    return data.decode("utf-8", "ignore").encode("utf-8").ljust(_NAME, b"\0")


def _forget_in_child() -> None:
    # A forked child is not the leader of its parent's board, but may become a worker of it,
    # through a descriptor of its own (an inherited one would share the parent's flock).
    global _leader, _parent, _worker
    inherited = [b for b in (_leader, _parent) if isinstance(b, Board)]
    _leader, _parent, _worker = None, False, False
    for board in inherited:
        board.close()


os.register_at_fork(after_in_child=_forget_in_child)
