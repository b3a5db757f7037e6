"""A run's log tail: the last lines its process logged and printed, and their file format.

Pure: text in, lines out, and back. The file (``logs/<run id>.jsonl``,
docs/repo-format.md) is JSON Lines, a header and then one line per line of
output, appended by the run's own writer thread at most once a second, and
rewritten to its last ``KEEP`` lines when it holds twice that. A reader cuts
it at any bad line, as it does a usage history.

What a process writes is turned into lines by ``Lines``: text is cut at
newlines, a carriage return keeps what a terminal keeps (the text after it,
as a progress bar redraws itself), a line longer than ``CLIP`` characters is
clipped (saying how much), and text that is no valid Unicode (lone
surrogates from undecodable bytes) is kept escaped. Control characters and
ANSI escapes stay as they were in the file; whatever shows a line (an alarm,
the command line, the panel) shows them escaped, so a line is always data.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _format

__all__ = ["CLIP", "FORMAT", "KEEP", "Lines", "LogLine", "encode", "encode_header", "parse", "shown", "text"]

FORMAT = 1
#: Lines a run's tail keeps (the file holds up to twice this between rewrites).
KEEP = 1000
#: Characters of one line kept; the rest is counted, not kept.
CLIP = 2000
#: Characters of a line an alarm shows.
ALARM_WIDTH = 300
STREAMS = ("log", "stdout", "stderr", "traceback")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a run's output: when, how bad (a logging level, or "" for printed text),
    which stream (log, stdout, stderr, traceback), its text, and who said it (a group member's
    rank; None for the run's own process)."""

    t: float
    level: str
    stream: str
    text: str
    who: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"t": round(self.t, 3), "level": self.level, "stream": self.stream}
        data["text"] = self.text
        if self.who is not None:
            data["who"] = self.who
        return data

    @classmethod
    def from_dict(cls, data: Any) -> LogLine:
        """One line of a tail; ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a log line must be an object, got {type(data).__name__}")
        t, level, stream, text, who = (data.get(k) for k in ("t", "level", "stream", "text", "who"))
        if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
            raise ValueError("field 't' must be a finite number")
        if not isinstance(level, str) or len(level) > 20:
            raise ValueError("field 'level' must be a short string")
        if stream not in STREAMS:
            raise ValueError(f"field 'stream' must be one of {', '.join(STREAMS)}")
        if not isinstance(text, str):
            raise ValueError("field 'text' must be a string")
        if who is not None and not isinstance(who, str):
            raise ValueError("field 'who' must be a string")
        # A clipped line is longer than CLIP by its note of how much was clipped.
        return cls(float(t), level, stream, clip(text, CLIP + 40), None if who is None else who[:60])

    def shown(self, width: int = ALARM_WIDTH) -> str:
        """``14:02:11 INFO   epoch 3 loss 0.41``: one line, escaped, clipped to ``width``."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.t))
        tag = (self.level or self.stream).ljust(6)
        who = f"[{_format.one_line(self.who)}] " if self.who else ""
        return _format.clip(f"{stamp} {tag} {who}{_format.one_line(self.text)}", width)


def clip(text: str, width: int = CLIP) -> str:
    """``text`` at most ``width`` characters (and a note of how many more there were), as valid
    Unicode: a lone surrogate (an undecodable byte) is kept as its escape, ``\\udcff``."""
    if len(text) > width:
        text = f"{text[:width]}… ({len(text) - width} more characters)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class Lines:
    """Text written in pieces (as ``print`` and ``write`` do) turned into whole lines.

    ``feed`` takes a piece and returns the lines it completed. A line without its newline yet
    waits (at most ``CLIP`` characters of it; the rest is counted) until a later piece or
    ``flush``. A carriage return keeps what a terminal shows: the text after it. Empty lines
    are left out: a tail is for what was said.
    """

    __slots__ = ("_dropped", "_partial")

    def __init__(self) -> None:
        self._partial = ""
        self._dropped = 0  # characters of the waiting line past CLIP, counted, not kept

    def feed(self, piece: str) -> list[str]:
        """The whole lines ``piece`` completes, oldest first."""
        parts = piece.split("\n")
        self._extend(parts[0])
        if len(parts) == 1:
            return []
        done = [self._take()]
        done += [_finish(line, 0) for line in parts[1:-1]]
        self._extend(parts[-1])
        return [line for line in done if line]

    def skip(self, count: int, *, newline: bool) -> list[str]:
        """``count`` characters were written but not kept (the middle of a huge piece): the
        waiting line is longer by that much, or, when they held a newline, it ends clipped and
        the next text starts a line whose beginning is lost."""
        if not newline:
            self._dropped += count
            return []
        line = self._take(clipped=True)
        self._partial = "…"
        return [line, f"… ({count} characters not kept)"]

    def flush(self) -> list[str]:
        """The waiting line, if any, as a whole line (the stream ended or the run did)."""
        line = self._take()
        return [line] if line else []

    def drop_partial(self) -> None:
        """Forget the waiting line (the text before it was lost, so it is no line of its own)."""
        self._partial, self._dropped = "", 0

    def _extend(self, text: str) -> None:
        if self._dropped:
            self._dropped += len(text)
            return
        text = self._partial + text
        if "\r" in text:
            text = _after_return(text)
        if len(text) > CLIP:
            self._dropped = len(text) - CLIP
            text = text[:CLIP]
        self._partial = text

    def _take(self, clipped: bool = False) -> str:
        line = _finish(self._partial, self._dropped)
        if clipped and not self._dropped:
            line += "… (clipped)"
        self._partial, self._dropped = "", 0
        return line


def _finish(line: str, dropped: int) -> str:
    if "\r" in line:
        line = _after_return(line)
    if dropped:
        return clip(line[:CLIP]) + f"… ({dropped} more characters)"
    return clip(line)


def _after_return(text: str) -> str:
    """What a terminal shows of ``text`` with carriage returns: the last non-empty part."""
    parts = [p for p in text.split("\r") if p]
    return parts[-1] if parts else ""


def encode_header(run_id: str) -> str:
    return json.dumps({"nbmonitor": "log", "format": FORMAT, "run": run_id}) + "\n"


def encode(lines: Iterable[LogLine]) -> str:
    """Lines of the file, each ending in a newline."""
    return "".join(json.dumps(line.to_dict(), ensure_ascii=False) + "\n" for line in lines)


def parse(text: str, run_id: str | None = None) -> tuple[list[LogLine], int]:
    """The lines of a tail file and how many of its lines were bad (skipped). ValueError when
    its header is of another run or a newer format."""
    lines: list[LogLine] = []
    bad = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if isinstance(data, dict) and data.get("nbmonitor") == "log":
            fmt = data.get("format")
            if type(fmt) is int and fmt > FORMAT:
                raise ValueError(f"log format {fmt} is newer than this nbmonitor understands ({FORMAT})")
            if run_id is not None and data.get("run") not in (None, run_id):
                raise ValueError(f"it is the log of another run ({str(data.get('run'))[:40]!r})")
            continue
        try:
            lines.append(LogLine.from_dict(data))
        except ValueError:
            bad += 1
    return lines, bad


def shown(lines: Sequence[LogLine], count: int, width: int = ALARM_WIDTH) -> list[str]:
    """The last ``count`` lines as an alarm or a terminal shows them, one line each."""
    return [line.shown(width) for line in lines[-count:]] if count > 0 else []


def text(lines: Sequence[LogLine], count: int) -> str:
    """The ``{log_tail}`` of an alarm: ``Last lines:`` and the last ``count`` lines, indented,
    on lines of their own (nothing when there are none or ``count`` is 0)."""
    chosen = shown(lines, count)
    if not chosen:
        return ""
    return "\nLast lines:\n" + "\n".join(f"  {line}" for line in chosen)
