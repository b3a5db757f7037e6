"""Short human texts for durations, steps and run text, shared by event messages, logs and tables."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["COLOURS", "clip", "count", "duration", "one_line", "rate", "steps", "table"]

#: The colour of each run state: the notebook display's badge, the lab panel, the status bar.
COLOURS = {
    "running": "#2e7d32",
    "late": "#f9a825",
    "stalled": "#e65100",
    "failed": "#c62828",
    "crashed": "#8e0000",
    "lost": "#6a1b9a",
    "finished": "#1565c0",
    "interrupted": "#616161",
}

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def count(n: float) -> str:
    """``7``, ``3.4``, ``258``, ``2.6k``, ``26k``, ``1.2M``: a number as people read it."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size * 0.9995:
            n /= size
            return f"{n:.1f}{unit}" if n < 9.95 else f"{n:.0f}{unit}"
    if n == int(n) or n >= 9.95:
        return f"{n:.0f}"
    return f"{n:.1f}"


def rate(per_second: float) -> str:
    """``2.6k it/s``, ``12 it/s``, ``3.2 s/it``, ``2 min 5 s/it``: steps a second, or seconds a
    step when it takes more than one, as tqdm shows them."""
    if per_second >= 1 or per_second <= 0:
        return f"{count(max(0.0, per_second))} it/s"
    return f"{duration(1 / per_second)}/it"


def one_line(text: str) -> str:
    """Text from a run (a name, an error, a log line) as one line of data: newlines and other
    control characters shown escaped (``\\n``, ``\\x1b``), so no run can start a line of
    its own in a log or steer a terminal."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def clip(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, the last one "…" when it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def steps(step: int, total: int | None) -> str:
    """``40/100`` or ``40``."""
    return f"{step}/{total}" if total is not None else str(step)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of text as left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def human_bytes(n: float) -> str:
    """``512 B``, ``3.4 MB``, ``1.2 GB`` (powers of 1024, as top and nvidia-smi show them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
