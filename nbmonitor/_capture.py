"""What a process logs and prints while a run is open, copied into the run's log tail.

While any run of the process that keeps logs is open, three things are copied
(never swallowed) into one bounded queue:

- ``sys.stdout`` and ``sys.stderr`` (a script's terminal, a kernel's cell
  output) are replaced by a ``_Tee`` that writes to the stream it replaced,
  then keeps the text. Writes keep their order, their bytes and their
  errors: the tee forwards first and keeps only what was written. It is a
  Python call per ``write``, not a pipe under the file descriptor: a pipe
  would reorder stdout against stderr, lose what it holds when the process
  is killed, and make ``isatty()`` lie.
- ``logging``: a record factory keeps each record of the capture level or
  above (``NBMONITOR_LOG_LEVEL``, INFO by default; ``off`` keeps none)
  that the process's logging configuration creates. No logger's level or
  handlers change (a handler on the root logger would make a later
  ``logging.basicConfig()`` do nothing), so a record the configuration
  drops before it exists (INFO under Python's default WARNING) is not kept
  either. A record that a handler also prints to a captured stream is kept
  once, as the record (with its level).
- warnings, as the text Python prints for them on stderr.

The writer thread ``drain()``s the queue every tick into lines (``logtail.Lines``)
and hands them to each attached run's ``RunLog``, which writes its new lines
to the repo at most once a second. The queue holds the last ``QUEUE`` pieces
and clips long ones, so a burst of output costs bounded memory; when it
overflowed between two drains the tail says that lines were skipped.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from . import logtail
from ._once import Trouble
from .logtail import LogLine

log = logging.getLogger("nbmonitor")

#: Pieces of output kept between two drains (a drain comes once a second): a write each from a
#: kernel's cell output, a flush each (a line, or 8 KB) from a script's.
QUEUE = 4096
#: A written piece longer than this is cut to its first and last part in the queue.
PIECE = 2 * logtail.CLIP
#: A flushed chunk longer than this (a script's own buffer flushes 8 KB) is cut the same way.
CHUNK = 1 << 16
#: Lines of a tail written to the repo at most this often (seconds).
WRITE_EVERY = 1.0

_Entry = tuple[float, str, Any]  # (time, stream, text or logging.LogRecord)


class _Cut:
    """A huge piece of output as the queue keeps it: its start and its end, and how much of
    the middle was not kept (and whether that held a newline)."""

    __slots__ = ("head", "newline", "skipped", "tail")

    def __init__(self, piece: str | bytes) -> None:
        size = logtail.CLIP
        self.head, self.tail = piece[:size], piece[-size:]
        self.skipped = len(piece) - 2 * size
        newline = "\n" if isinstance(piece, str) else b"\n"
        self.newline = piece.find(newline, size, len(piece) - size) >= 0  # type: ignore[arg-type]


def _piece(text: object) -> str | _Cut | None:
    """What the queue keeps of a write that is not a short string."""
    if text.__class__ is not str:
        return None  # the stream took something else (a stream of bytes): not text to keep
    assert isinstance(text, str)
    return _Cut(text) if len(text) > PIECE else text


class _Tee:
    """A text stream that is no ``io.TextIOWrapper`` (a kernel's cell output) while runs keep
    logs: every write goes to the stream it replaced, then is kept for the tail (a Python call
    per write, next to the kernel's own, which costs more). Everything else is that stream's.

    No ``__slots__``: IPython sets ``write`` on the standard streams for each cell (to keep
    their output in its history), and puts it back after. For the same reason the stream's
    ``write`` is looked up at each call, never kept: a cell's patch is gone when it ends."""

    def __init__(self, raw: TextIO, name: str, keep: Callable[[_Entry], None]) -> None:
        self._raw = raw
        self._name = name
        self._keep = keep
        self.on = True

    def write(self, text: str, _now: Callable[[], float] = time.time) -> int:
        written = self._raw.write(text)
        if self.on:
            self._keep(
                (_now(), self._name, text if text.__class__ is str and len(text) <= PIECE else _piece(text))
            )
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __repr__(self) -> str:
        return f"<nbmonitor tee of {self._raw!r}>"


class _TeeBuffer:
    """The binary layer of a script's ``sys.stdout`` or ``sys.stderr`` while runs keep logs.

    The stream becomes a new ``io.TextIOWrapper``, set up as the old one was (encoding, errors,
    buffering), over this: what it flushes goes to the old stream's own buffer, then is kept.
    So ``print`` runs at C speed, and Python code runs once per flush (a line on a terminal,
    8 KB into a file or a pipe), not per write. Closing it never closes the real stream."""

    # ``closed`` is a plain attribute: TextIOWrapper reads it on every write, and a property
    # (a Python call) there would cost more than all the rest.
    __slots__ = ("_buffer", "_keep", "_name", "closed", "on")

    def __init__(self, buffer: Any, name: str, keep: Callable[[_Entry], None]) -> None:
        self._buffer = buffer
        self._name = name
        self._keep = keep
        self.on = True
        self.closed = False

    def write(self, data: Any, _now: Callable[[], float] = time.time) -> int:
        written: int = self._buffer.write(data)
        if self.on:
            chunk = bytes(data)
            self._keep((_now(), self._name, chunk if len(chunk) <= CHUNK else _Cut(chunk)))
        return written

    def flush(self) -> None:
        self._buffer.flush()

    def close(self) -> None:
        self._buffer.flush()  # the real stream stays open: it is not ours to close

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)


@dataclass
class _Hooked:
    """One standard stream while runs keep logs: the stream it was, and what replaced it."""

    name: str
    raw: Any  # the stream before
    stream: Any  # sys.<name> now: a TextIOWrapper over a _TeeBuffer, or a _Tee
    tee: _Tee | _TeeBuffer
    decode: Callable[[bytes], str]


class RunLog:
    """One run's tail: the lines it was open for, the last ``logtail.KEEP`` in memory, written
    to the repo by ``flush`` at most once a second (only the run's writer thread writes)."""

    def __init__(
        self, repo: Any, run_id: str, who: str | Callable[[], str] | None = None, part: int | None = None
    ) -> None:
        self.repo = repo
        self.run_id = run_id
        #: What its lines say of who said them: a group member's rank, or (a callable, asked as
        #: lines come) a forked worker's name.
        self.who = who
        #: A forked worker's own file of the run's tail (its pid), or None: the run's process's.
        self.part = part
        self.lines: collections.deque[LogLine] = collections.deque(maxlen=logtail.KEEP)
        self._unwritten: collections.deque[LogLine] = collections.deque(maxlen=logtail.KEEP)
        self._in_file = 0  # lines in the file since it was last written whole
        self._new = 0  # lines added since the last write (more than the unwritten keeps: rewrite)
        self._started = False
        self._last = -float("inf")
        self._lock = threading.Lock()
        self.trouble = Trouble(log)

    def add(self, lines: list[LogLine]) -> None:
        who = self.who() if callable(self.who) else self.who
        if who is not None:
            lines = [LogLine(x.t, x.level, x.stream, x.text, who) for x in lines]
        with self._lock:
            self.lines.extend(lines)
            self._unwritten.extend(lines)
            self._new += len(lines)

    def flush(self, now_mono: float, force: bool = False) -> None:
        """Write the new lines if a second has passed since the last write (or ``force``)."""
        with self._lock:
            if not self._unwritten or (not force and now_mono - self._last < WRITE_EVERY):
                return
            self._last = now_mono
            new = list(self._unwritten)
            try:
                whole_again = self._new > len(new) or self._in_file + len(new) > 2 * logtail.KEEP
                if not self._started or whole_again:
                    whole = list(self.lines)
                    text = logtail.encode_header(self.run_id) + logtail.encode(whole)
                    self.repo.replace_log(self.run_id, text, self.part)
                    self._started, self._in_file = True, len(whole)
                else:
                    self.repo.append_log(self.run_id, logtail.encode(new), self.part)
                    self._in_file += len(new)
            except (OSError, ValueError) as e:
                cause = getattr(e, "strerror", None) or str(e)
                self.trouble.happened(
                    cause,
                    "nbmonitor: cannot write the log tail of run %s (%s); its last lines are kept "
                    "in memory and written when it can",
                    self.run_id[:8],
                    cause,
                )
                self._started = False  # the next write rewrites it whole
                return
            self.trouble.over("nbmonitor: the log tail of run %s is written again", self.run_id[:8])
            self._unwritten.clear()
            self._new = 0


class Capture:
    """This process's copy of its output, while runs that keep logs are open."""

    def __init__(self, level: int | None = logging.INFO) -> None:
        self.level = level
        self._queue: collections.deque[_Entry] = collections.deque(maxlen=QUEUE)
        self._runs: list[RunLog] = []
        self._lock = threading.RLock()
        self._lines = {"stdout": logtail.Lines(), "stderr": logtail.Lines()}
        self._hooked: dict[str, _Hooked] = {}
        self._child_stop = threading.Event()
        self._factory: Callable[..., logging.LogRecord] | None = None
        self._old_factory: Callable[..., logging.LogRecord] | None = None
        #: Recent log messages (time, line of the message, level name): a stream line soon after
        #: that is the line, or ends with it after a prefix naming the level, is a handler's copy.
        self._recent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=64)

    @property
    def runs(self) -> list[RunLog]:
        return list(self._runs)

    def attach(self, run: RunLog) -> None:
        """Copy output into ``run``'s tail from now on (hooking the streams for the first run)."""
        with self._lock:
            if not self._runs:
                self._install()
            self._runs.append(run)

    def detach(self, run: RunLog) -> None:
        """Everything written so far into ``run``'s tail, then no more (unhooking with the last)."""
        with self._lock:
            self.drain()
            if len(self._runs) == 1 and run in self._runs:
                # The last one: a line still without its newline is its last word.
                now = time.time()
                run.add(
                    [
                        LogLine(now, "", name, text)
                        for name, lines in self._lines.items()
                        for text in lines.flush()
                    ]
                )
                self._uninstall()
            if run in self._runs:
                self._runs.remove(run)

    def drain(self) -> None:
        """Turn what was written since the last drain into lines for every attached run. A
        block-buffered stream (a script's output into a file or a pipe) is flushed first: what
        a stuck run printed last is in its tail, and in its file, within a second."""
        with self._lock:
            for hooked in self._hooked.values():
                if isinstance(hooked.tee, _TeeBuffer) and not hooked.stream.line_buffering:
                    with contextlib.suppress(OSError, ValueError):
                        hooked.stream.flush()
            queue = self._queue
            if not queue:
                return
            overflowed = len(queue) >= QUEUE
            entries = []
            while True:
                try:
                    entries.append(queue.popleft())
                except IndexError:
                    break
            newest = _newest(entries)
            if newest:  # only the newest entries can make a tail's lines: the rest costs nothing
                entries, overflowed = entries[newest:], True
            lines = self._lines_of(entries, overflowed)
            if lines:
                for run in self._runs:
                    run.add(lines)

    def _lines_of(self, entries: list[_Entry], overflowed: bool) -> list[LogLine]:
        out: list[LogLine] = []
        if overflowed:
            for lines in self._lines.values():
                lines.drop_partial()
            out.append(
                LogLine(
                    entries[0][0],
                    "",
                    "stderr",
                    "… (nbmonitor: output came faster than it is kept; lines skipped)",
                )
            )
        recent = self._recent
        for t, stream, item in entries:
            if stream == "log":
                line, said = self._record_lines(t, item)
                out += line
                recent.extend((t, part, item.levelname) for part in said)
                continue
            lines = self._lines[stream]
            if isinstance(item, _Cut):
                texts = lines.feed(self._text(stream, item.head)) + lines.skip(
                    item.skipped, newline=item.newline
                )
                texts += lines.feed(self._text(stream, item.tail))
            elif isinstance(item, str | bytes):
                texts = lines.feed(self._text(stream, item))
            else:
                continue
            out += [LogLine(t, "", stream, text) for text in texts if not (recent and _echo(text, t, recent))]
        return out

    def _text(self, stream: str, item: str | bytes) -> str:
        if isinstance(item, str):
            return item
        hooked = self._hooked.get(stream)
        return hooked.decode(item) if hooked is not None else item.decode("utf-8", "backslashreplace")

    @staticmethod
    def _record_lines(t: float, record: logging.LogRecord) -> tuple[list[LogLine], list[str]]:
        """The lines of a record (its message, and the traceback it carries), and the lines of
        its message as a handler prints them."""
        try:
            message = record.getMessage()
        except Exception as e:  # noqa: BLE001  # a bad log call (logging itself says so on stderr)
            message = f"(a log call whose message could not be made: {type(e).__name__}: {e}; "
            message += f"msg={record.msg!r:.200})"
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        said = [part for part in message.split("\n") if part]
        name = "" if record.name == "root" else f"{record.name}: "
        level = record.levelname[:20]
        return [LogLine(t, level, "log", logtail.clip(name + part)) for part in said], said

    # -- hooks -----------------------------------------------------------------

    def _install(self) -> None:
        keep = self._queue.append
        for name in ("stdout", "stderr"):
            raw = getattr(sys, name)
            if raw is None or isinstance(raw, _Tee) or any(h.stream is raw for h in self._hooked.values()):
                continue
            with contextlib.suppress(AttributeError, OSError, ValueError):
                raw.flush()  # what it holds goes out before anything written through the copy
            hooked = _hook(name, raw, keep)
            self._hooked[name] = hooked
            setattr(sys, name, hooked.stream)
            _repoint_handlers(raw, hooked.stream)
        if self.level is not None:
            old = logging.getLogRecordFactory()
            level = self.level

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = old(*args, **kwargs)
                if record.levelno >= level:
                    keep((record.created, "log", record))
                return record

            self._old_factory, self._factory = old, factory
            logging.setLogRecordFactory(factory)

    def _uninstall(self) -> None:
        for name, hooked in self._hooked.items():
            hooked.tee.on = False  # from now on it only forwards, for whoever still holds it
            with contextlib.suppress(OSError, ValueError):
                hooked.stream.flush()
            _repoint_handlers(hooked.stream, hooked.raw)
            if getattr(sys, name) is hooked.stream:
                setattr(sys, name, hooked.raw)
        self._hooked = {}
        if self._factory is not None:
            if logging.getLogRecordFactory() is self._factory:
                assert self._old_factory is not None
                logging.setLogRecordFactory(self._old_factory)
            else:
                # Another factory wraps ours: ours stays in its chain, keeping nothing.
                self.level = None
            self._factory = self._old_factory = None
        self._queue.clear()

    def in_child(self, runs: list[tuple[Any, str]]) -> None:
        """A forked child (a multiprocessing or DataLoader worker) of a process with ``runs``
        open, as (repo, run id): what it logs and prints goes on into those runs' tails, in a
        file of its own per run (one writer per file), its lines saying which worker it is. A
        thread of its own writes them once a second, and once more as the worker ends. With no
        such run it keeps nothing (its tees only forward)."""
        self._lock = threading.RLock()  # another thread may have held it at the fork
        self._queue.clear()
        for lines in self._lines.values():
            lines.drop_partial()
        if not runs or not self._hooked:
            for hooked in self._hooked.values():
                hooked.tee.on = False
            self._runs, self._hooked = [], {}
            return
        pid = os.getpid()
        self._runs = [RunLog(repo, run_id, _worker_name, part=pid) for repo, run_id in runs]
        self._child_stop = threading.Event()
        threading.Thread(target=self._child_loop, name="nbmonitor-worker-logs", daemon=True).start()
        # multiprocessing ends a worker with os._exit(): no atexit, but threading's shutdown runs
        # its exit hooks after the worker's last words (a traceback on stderr, say).
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            with contextlib.suppress(RuntimeError):
                register(self._child_end)

    def _child_loop(self) -> None:
        while not self._child_stop.wait(WRITE_EVERY):
            try:
                self._child_write(force=False)
            except Exception:  # the worker goes on whatever happens here; said, not raised
                log.exception("nbmonitor: a worker's log tail could not be written")

    def _child_write(self, force: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        self.drain()
        now = time.monotonic()
        for run in self._runs:
            run.flush(now, force=force)

    def _child_end(self) -> None:
        self._child_stop.set()
        with self._lock:
            now = time.time()
            texts = [(name, text) for name, lines in self._lines.items() for text in lines.flush()]
        self._child_write(force=False)
        for run in self._runs:
            run.add([LogLine(now, "", name, text) for name, text in texts])
            run.flush(time.monotonic(), force=True)


def _newest(entries: list[_Entry]) -> int:
    """The index of the first entry needed for the last ``logtail.KEEP`` lines (0: all are),
    with room for the lines that turn out to be a handler's copy of a record."""
    count = 0
    for i in range(len(entries) - 1, -1, -1):
        item = entries[i][2]
        if isinstance(item, str):
            count += item.count("\n")
        elif isinstance(item, bytes):
            count += item.count(b"\n")
        else:
            count += 1
        if count > 2 * logtail.KEEP:
            return i + 1
    return 0


def _hook(name: str, raw: Any, keep: Callable[[_Entry], None]) -> _Hooked:
    """The copy that replaces ``raw`` as ``sys.<name>``."""
    buffer = getattr(raw, "buffer", None)
    if type(raw) is not io.TextIOWrapper or buffer is None:
        tee: _Tee | _TeeBuffer = _Tee(raw, name, keep)
        return _Hooked(name, raw, tee, tee, lambda data: data.decode("utf-8", "backslashreplace"))
    tee = _TeeBuffer(buffer, name, keep)
    stream = io.TextIOWrapper(
        tee,  # a binary stream in all that TextIOWrapper uses
        encoding=raw.encoding,
        errors=raw.errors,
        newline=None if os.name == "nt" else "\n",  # as Python opens the standard streams
        line_buffering=raw.line_buffering,
        write_through=raw.write_through,
    )
    decoder = codecs.getincrementaldecoder(raw.encoding)("backslashreplace")
    return _Hooked(name, raw, stream, tee, decoder.decode)


def _repoint_handlers(old: Any, new: Any) -> None:
    """Logging handlers that write to ``old`` write to ``new``: a handler made before a run (by
    ``logging.basicConfig()``) and the prints of the run stay in the order they were made."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


_ECHO_WITHIN = 2.0  # seconds


def _echo(text: str, t: float, recent: collections.deque[tuple[float, str, str]]) -> bool:
    """Whether a printed line is a handler's copy of a recent log record's line."""
    for at, said, level in recent:
        if (
            t - at <= _ECHO_WITHIN
            and text.endswith(said)
            and (len(text) == len(said) or level in text[: -len(said)])
        ):
            return True
    return False


def capture_level() -> int | None:
    """The least logging level kept: ``NBMONITOR_LOG_LEVEL`` (a name or a number; ``off``
    keeps no records), INFO by default. A bad value is said once and INFO is used."""
    chosen = os.environ.get("NBMONITOR_LOG_LEVEL", "").strip()
    if not chosen:
        return logging.INFO
    if chosen.lower() in ("off", "none", "0"):
        return None
    if chosen.isdigit():
        return int(chosen)
    level = logging.getLevelName(chosen.upper())
    if isinstance(level, int):
        return level
    log.warning("nbmonitor: NBMONITOR_LOG_LEVEL=%r is no logging level; keeping INFO and up", chosen[:40])
    return logging.INFO


_capture: Capture | None = None


def get() -> Capture:
    """This process's capture (made on first use; a forked child's is set up by ``in_child``,
    which run.py calls with the runs it inherited)."""
    global _capture
    if _capture is None:
        _capture = Capture(capture_level())
    return _capture


def current() -> Capture | None:
    """This process's capture, if it has made one."""
    return _capture


def _worker_name() -> str:
    """What a forked worker is called in a tail: ``DataLoader worker 2``, ``ForkPoolWorker-3``."""
    torch_data = sys.modules.get("torch.utils.data")
    info = getattr(torch_data, "get_worker_info", lambda: None)() if torch_data is not None else None
    if info is not None:
        return f"DataLoader worker {info.id}"
    import multiprocessing

    return multiprocessing.current_process().name[:60]
