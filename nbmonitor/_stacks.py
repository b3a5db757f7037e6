"""Where a thread of this process is now: its stack, innermost frame first, as code locations.

``capture`` is called by the writer thread when a run turns late or stalled,
for the thread that owns the run. It reads that thread's frames
(``sys._current_frames``), skips nbmonitor's own, and keeps the function,
file, line and the source line of each: never a local variable, so no
secret of the running code ends up in an alarm. About a tenth of a
millisecond; the source lines come from linecache.
"""

from __future__ import annotations

import linecache
import os
import sys
import threading
from types import FrameType

from .record import StackFrame, ThreadStack

__all__ = ["DEPTH", "capture", "capture_all", "collective", "frame_of"]

#: Threads kept when all threads' stacks are asked for.
MAX_THREADS = 32

DEPTH = 12  # frames kept, innermost first
_CODE = 160  # characters of a source line kept
_OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep


def frame_of(thread: threading.Thread) -> FrameType | None:
    """The frame ``thread`` runs now (None if it has ended or never ran)."""
    if thread.ident is None:
        return None
    return sys._current_frames().get(thread.ident)  # noqa: SLF001  # the documented way, despite its name


def capture(thread: threading.Thread, depth: int = DEPTH) -> tuple[StackFrame, ...]:
    """The stack of ``thread`` now (empty if it has ended or never ran)."""
    return frames(frame_of(thread), depth)


def capture_all(skip: threading.Thread, depth: int = DEPTH) -> tuple[ThreadStack, ...]:
    """The stack of every other thread of this process now (``skip`` is the run's own, told
    apart; the calling thread, the writer, is left out too), by name, at most ``MAX_THREADS``."""
    names = {t.ident: t for t in threading.enumerate()}
    me = threading.get_ident()
    found = []
    for ident, frame in sorted(sys._current_frames().items()):  # noqa: SLF001  # as in frame_of
        if ident in (me, skip.ident):
            continue
        thread = names.get(ident)
        name = thread.name if thread is not None else f"thread {ident} (not started by threading)"
        native = thread.native_id if thread is not None else None
        found.append(ThreadStack(name[:80], native, frames(frame, depth)))
        if len(found) == MAX_THREADS:
            break
    return tuple(found)


def collective(thread: threading.Thread) -> str | None:
    """The torch.distributed call ``thread`` is in now (all_reduce, barrier, ...), if any: a
    group member in one waits for the others, and is not the one to blame. No source is read:
    this runs every second for a member."""
    frame = frame_of(thread)
    found = None
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if path.endswith("torch/distributed/distributed_c10d.py"):
            found = frame.f_code.co_name  # the outermost: the call the user's code made
        frame = frame.f_back
    return found


def frames(frame: FrameType | None, depth: int = DEPTH) -> tuple[StackFrame, ...]:
    """``frame`` and its callers, innermost first, nbmonitor's own left out."""
    found: list[StackFrame] = []
    while frame is not None and len(found) < depth:
        code = frame.f_code
        path = code.co_filename
        if not path.startswith(_OWN):
            line = frame.f_lineno or code.co_firstlineno
            source = linecache.getline(path, line).strip()
            found.append(StackFrame(code.co_name, path, line, source[:_CODE]))
        frame = frame.f_back
    return tuple(found)
