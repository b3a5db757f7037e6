"""A watched cell's display: one line while it runs, its story on demand, and what happened once it ends.

``render_html``, ``render_text`` and ``payload`` are pure: a View in, a string or JSON out;
all user text (names, errors) is escaped or left as data. ``RunDisplay`` shows one output of
three types, updated by its display id (one message per refresh, at most ``MAX_RATE`` a
second, and only when it changed): ``RUN_MIME``, the View as JSON, which the lab extension
draws as a line like tqdm's with the story under it on a click (and marks crashed when its
kernel died); text/html, the same line as a ``<details>`` whose summary it is, for front ends
without the extension (VS Code, nbviewer, GitHub); and text/plain. When the run ends the
output becomes its final snapshot, so a saved notebook tells what happened without a kernel.
``UsagePlot`` is the usage plot shown under it at the end, an output of its own: a plain SVG
picture, which a saved notebook shows anywhere, with its columns beside it (``USAGE_MIME``),
from which JupyterLab adds a legend and a read-out.
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _format
from ._format import COLOURS
from .usage import History, human_bytes

if TYPE_CHECKING:
    from . import history as _history

__all__ = [
    "COLOURS",
    "RUN_MIME",
    "USAGE_MIME",
    "MemberView",
    "RunDisplay",
    "UsagePlot",
    "View",
    "payload",
    "render_html",
    "render_text",
]

#: The empty part of a bar: grey seen through, on light and dark themes alike.
_TRACK = "rgba(128,128,128,0.25)"
_QUIET = "#757575"  # secondary text, readable on light and dark themes
MAX_RATE = 4.0  # refreshes a second for progress, well under the 10 allowed
HARD_RATE = 10.0  # refreshes a second at most, even when the state changes
#: A live display is sent again after this many seconds even when nothing changed, so that the
#: lab extension knows its kernel still speaks (and says so when it stops).
ALIVE_EVERY = 5.0
#: The display's own output type: the View as JSON (``payload``), drawn by the lab extension
#: (labextension/src/run.ts); other front ends show the bundle's text/html or text/plain.
RUN_MIME = "application/vnd.nbmonitor.run+json"
#: The usage plot's own output type, its columns and peak lines: JupyterLab draws the bundle's
#: image/svg+xml with them, a legend and a read-out (labextension/src/output.ts); other front
#: ends show the image/svg+xml alone.
USAGE_MIME = "application/vnd.nbmonitor.usage+json"


@dataclass(frozen=True)
class MemberView:
    """One worker (or rank) of the run, as a small bar beside the run's."""

    label: str  # "ForkPoolWorker-2, pid 812", "rank 3, pid 812"
    step: int
    state: str  # running, ended, failed, crashed
    straggler: bool = False  # the one the others wait for: highlighted
    note: str | None = None  # how it ended, if it did


@dataclass(frozen=True)
class View:
    """What the display shows at one moment."""

    name: str
    state: str
    step: int
    total: int | None
    elapsed: float
    since_progress: float
    eta: float | None = None  # promised seconds between progress reports
    grace: float | None = None
    rate: float | None = None  # steps a second, recently
    error: str | None = None
    usage: History | None = None  # None: --no-usage
    watcher: str | None = None  # "pid 123" when a standalone watcher runs; a URL: a far host's server
    note: str | None = None  # the latest warning, if any
    ended: bool = False
    members: tuple[MemberView, ...] = ()  # the run's multiprocessing workers
    peaks: str = ""  # "Peak memory 3.2 GB (most: DataLoader worker 2, 1.9 GB); ...", once known
    stuck: str | None = None  # "wait_for_batch (data.py:42) ← train (train.py:88)" while late or stalled
    attempt: str = ""  # "attempt 2 · resumed from the checkpoint at step 1200, saved 4 min ago"
    incidents: tuple[str, ...] = ()  # "stalled 12 s at step 1, recovered", oldest first
    run_id: str = ""  # for the lab extension: the story and the truth after a kernel dies
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def remaining(self) -> float | None:
        """Seconds to completion at the recent rate."""
        if self.total is None or not self.rate or self.step >= self.total:
            return None
        return (self.total - self.step) / self.rate

    @property
    def share(self) -> float | None:
        """How much of the total is done, 0 to 1; None without a total."""
        if self.total is None or self.total <= 0:
            return None
        return max(0.0, min(1.0, self.step / self.total))


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


# -- the line ------------------------------------------------------------------------------


def _stuck(view: View) -> bool:
    """Late or stalled: its recent rate and the time left it gives are no longer true."""
    return view.state in ("late", "stalled") and not view.ended


def progress_text(view: View) -> str:
    """``40/100`` with the share done, or the count alone."""
    text = _format.steps(view.step, view.total)
    if view.share is not None:
        text += f" ({view.share * 100:.0f}%)"
    return text


def rate_text(view: View) -> str:
    """``2.6k it/s`` or ``3.2 s/it`` while it runs; nothing before the rate is known, while it
    is late or stalled, or once ended."""
    if view.ended or view.rate is None or (view.rate == 0 and view.step == 0) or _stuck(view):
        return ""
    return _format.rate(view.rate)


def time_text(view: View) -> str:
    """``1 min 5 s, 4.8 s left`` while it runs (no time left while late or stalled); ``in 1 min
    5 s`` once ended."""
    elapsed = _format.duration(view.elapsed)
    if view.ended:
        return f"in {elapsed}"
    if view.remaining is not None and not _stuck(view):
        return f"{elapsed}, {_format.duration(view.remaining)} left"
    return elapsed


def late_text(view: View) -> str:
    """``no progress for 12 s, promised 3.0 s`` while late or stalled."""
    if view.ended or view.state not in ("late", "stalled"):
        return ""
    promised = f", promised {_format.duration(view.eta)}" if view.eta is not None else ""
    return f"no progress for {_format.duration(view.since_progress)}{promised}"


def chips(view: View) -> list[tuple[str, str]]:
    """Small usage readings for the line: CPU, memory, and GPU when there is one; the peaks once ended."""
    history = view.usage
    last = history.last if history is not None else None
    if history is None or last is None:
        return []
    if view.ended:
        found = [("CPU", f"{history.peak_cpu:.0f}% peak"), ("mem", f"{human_bytes(history.peak_rss)} peak")]
        if history.peak_gpu_memory:
            found.append(("GPU mem", f"{human_bytes(history.peak_gpu_memory)} peak"))
        return found
    found = [("CPU", f"{last.cpu_percent:.0f}%"), ("mem", human_bytes(last.rss))]
    if last.gpus:
        busy = max(card.utilization for card in last.gpus)
        found.append(("GPU", f"{busy:.0f}%"))
    return found


def line_note(view: View) -> str:
    """What the line ends with: what is late, else the member the others wait for."""
    slowest = straggler(view)
    return late_text(view) or (f"slowest: {slowest}" if slowest else "")


def straggler(view: View) -> str:
    """The label of the member the others wait for (``rank 1``), or nothing."""
    found = next((m for m in view.members if m.straggler), None)
    return "" if found is None else found.label.split(",")[0]


# -- the story -----------------------------------------------------------------------------


def _promise(view: View) -> str:
    if view.ended:
        return ""
    since = f"last progress {_format.duration(view.since_progress)} ago"
    if view.eta is None:
        return since + " (no ETA promised, so it cannot stall)"
    grace = f" + {_format.duration(view.grace)} grace" if view.grace is not None else ""
    return since + f", promised within {_format.duration(view.eta)}{grace}"


def _usage_lines(view: View) -> list[str]:
    history = view.usage
    if history is None:
        return []
    last = history.last
    if last is None:
        return [] if view.ended else ["usage: measuring..."]
    if view.ended and view.peaks:
        return [view.peaks]
    if view.ended:
        peaks = f"peak CPU {history.peak_cpu:.0f}% · peak memory {human_bytes(history.peak_rss)}"
        if history.peak_gpu_memory:
            peaks += f" · peak GPU memory {human_bytes(history.peak_gpu_memory)}"
        return [peaks]
    memory = f"memory {human_bytes(last.rss)} RSS"
    if last.pss is not None:
        memory += f" ({human_bytes(last.pss)} PSS)"
    lines = [
        f"CPU {last.cpu_percent:.0f}% · {memory}"
        + (f" · {last.processes} processes" if last.processes > 1 else "")
    ]
    for card in last.gpus:
        mine = f", this run {human_bytes(card.process_memory)}" if card.process_memory is not None else ""
        memory = f"{human_bytes(card.memory_used)} of {human_bytes(card.memory_total)}{mine}"
        lines.append(f"GPU{card.index} {card.name}: {card.utilization:.0f}% busy · {memory}")
    return lines


def _watcher_line(view: View) -> str:
    if view.ended:
        return ""
    if view.watcher and view.watcher.startswith(("http://", "https://")):
        return f"reports to {view.watcher}: the watcher there tells of this run, also if this kernel dies"
    if view.watcher:
        return f"watcher running ({view.watcher}): you will hear of this run even if the kernel dies"
    return (
        "no standalone watcher: notifications stop if this kernel dies "
        "(run 'nbmonitor-watcher start --detach' to keep watching)"
    )


_MEMBERS_SHOWN = 16
_STRIP_SHOWN = 64
_MEMBER_COLOURS = {"running": COLOURS["running"], "ended": COLOURS["finished"]}


def _member_colour(member: MemberView) -> str:
    return COLOURS["stalled"] if member.straggler else _MEMBER_COLOURS.get(member.state, COLOURS["failed"])


def _member_tail(member: MemberView) -> str:
    tail = f"step {member.step}"
    if member.straggler:
        tail += " · slowest"
    if member.state != "running":
        tail += f" · {member.state}" + (f": {member.note}" if member.note else "")
    return tail


def _share(member: MemberView, top: int) -> float:
    return max(0.0, min(1.0, member.step / top))


def _top(view: View) -> int:
    return max([view.total or 0, *(m.step for m in view.members)]) or 1


def story(view: View) -> dict[str, Any]:
    """What the details hold, as text: the attempt, the error, where it is stuck, the incidents,
    the members, the promise, the usage and the watcher."""
    return {
        "attempt": view.attempt,
        "error": view.error or "",
        "stuck": view.stuck or "",
        "incidents": list(view.incidents),
        "members": [f"{m.label}: {_member_tail(m)}" for m in view.members[:_MEMBERS_SHOWN]]
        + (
            [f"and {len(view.members) - _MEMBERS_SHOWN} more workers"]
            if len(view.members) > _MEMBERS_SHOWN
            else []
        ),
        "promise": _promise(view),
        "usage": _usage_lines(view),
        "watcher": _watcher_line(view),
        "note": view.note or "",
    }


def payload(view: View) -> dict[str, Any]:
    """The View as the lab extension draws it (``RUN_MIME``): every text already worded, so that
    the cell, the CLI and the panel say the same; the state's colour; each member's share."""
    top = _top(view)
    return {
        "version": 1,
        "id": view.run_id,
        "name": view.name,
        "state": view.state,
        "colour": COLOURS.get(view.state, COLOURS["interrupted"]),
        "ended": view.ended,
        "step": view.step,
        "total": view.total,
        "share": view.share,
        "progress": progress_text(view),
        "rate": rate_text(view),
        "time": time_text(view),
        "late": late_text(view),
        "chips": [[label, value] for label, value in chips(view)],
        "members": [
            {
                "label": m.label,
                "share": _share(m, top),
                "state": m.state,
                "colour": _member_colour(m),
                "straggler": m.straggler,
                "text": _member_tail(m),
            }
            for m in view.members[:_STRIP_SHOWN]
        ],
        "straggler": straggler(view),
        "note": line_note(view),
        "story": story(view),
    }


# -- HTML, for front ends without the lab extension ------------------------------------------------


def _badge(state: str) -> str:
    colour = COLOURS.get(state, "#616161")
    return (
        f'<span class="nbm-badge" data-state="{_esc(state)}" style="background:{colour};color:#fff;'
        f'border-radius:9px;padding:0 8px;font-weight:600;font-size:0.85em;flex:none">{_esc(state)}</span>'
    )


def _bar(view: View) -> str:
    if view.share is None:
        return ""
    colour = COLOURS.get(view.state, "#616161")
    return (
        f'<span class="nbm-bar" style="display:inline-block;background:{_TRACK};border-radius:4px;'
        'height:8px;flex:0 1 12em;min-width:4em">'
        f'<span style="display:block;background:{colour};width:{view.share * 100:.1f}%;height:8px;'
        'border-radius:4px"></span></span>'
    )


def _strip(view: View) -> str:
    """A small upright bar per member, side by side, the straggler in the stall colour."""
    if not view.members:
        return ""
    top = _top(view)
    bars = "".join(
        f'<span class="nbm-member" data-state="{_esc(m.state)}" data-straggler="{int(m.straggler)}" '
        f'title="{_esc(m.label)}: {_esc(_member_tail(m))}" style="display:inline-block;position:relative;'
        f'width:5px;height:14px;background:{_TRACK};border-radius:1px">'
        f'<span style="position:absolute;left:0;right:0;bottom:0;height:{_share(m, top) * 100:.0f}%;'
        f'background:{_member_colour(m)};border-radius:1px"></span></span>'
        for m in view.members[:_STRIP_SHOWN]
    )
    style = "display:inline-flex;gap:1px;align-items:flex-end;flex:none"
    return f'<span class="nbm-strip" style="{style}">{bars}</span>'


def _quiet(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<span{attr} style="color:{_QUIET};flex:none">{_esc(text)}</span>'


def _chips_html(view: View) -> str:
    return "".join(
        '<span class="nbm-chip" style="flex:none;font-size:0.8em;border:1px solid rgba(128,128,128,0.4);'
        f'border-radius:8px;padding:0 6px;color:{_QUIET}">{_esc(label)} {_esc(value)}</span>'
        for label, value in chips(view)
    )


def _line_html(view: View) -> str:
    parts = [
        _badge(view.state),
        '<b class="nbm-name" style="overflow:hidden;text-overflow:ellipsis;flex:0 0 auto;max-width:16em">'
        f"{_esc(view.name)}</b>",
        _bar(view),
        _strip(view),
        f'<span class="nbm-progress" style="flex:none">{_esc(progress_text(view))}</span>',
    ]
    for text, cls in ((rate_text(view), "nbm-rate"), (time_text(view), "nbm-time")):
        if text:
            parts.append(_quiet(text, cls))
    parts.append(_chips_html(view))
    note = line_note(view)
    if note:
        colour = COLOURS[view.state] if late_text(view) else COLOURS["stalled"]  # else the straggler's
        parts.append(f'<span class="nbm-late" style="color:{colour};flex:none">{_esc(note)}</span>')
    return "".join(parts)


def _story_html(view: View) -> str:
    told = story(view)
    rows = []
    if told["attempt"]:
        rows.append(f'<div class="nbm-attempt">{_esc(told["attempt"])}</div>')
    if told["error"]:
        rows.append(f'<div class="nbm-error" style="color:{COLOURS["failed"]}">{_esc(told["error"])}</div>')
    if told["stuck"]:
        colour = COLOURS.get(view.state, COLOURS["stalled"])
        rows.append(f'<div class="nbm-stuck" style="color:{colour}">stuck in {_esc(told["stuck"])}</div>')
    rows += [f'<div class="nbm-member-line">{_esc(line)}</div>' for line in told["members"]]
    for line in (told["promise"], *told["usage"]):
        if line:
            rows.append(f"<div>{_esc(line)}</div>")
    for note in (told["watcher"], told["note"]):
        if note:
            rows.append(f'<div style="color:{_QUIET}">{_esc(note)}</div>')
    return "".join(rows)


def _incidents_html(view: View) -> str:
    if not view.incidents:
        return ""
    shown = " · ".join(view.incidents)
    return (
        f'<div class="nbm-incidents" style="color:{COLOURS["stalled"]};font-size:0.9em;padding-left:2px">'
        f"{_esc(shown)}</div>"
    )


def render_html(view: View) -> str:
    """The display as HTML: one line (the summary of a ``<details>``), the incidents once ended,
    and the story on a click."""
    line = (
        '<summary class="nbm-line" style="display:flex;align-items:center;gap:0.6em;white-space:nowrap;'
        'overflow:hidden;cursor:pointer;list-style:none;font-variant-numeric:tabular-nums">'
        f"{_line_html(view)}</summary>"
    )
    body = _story_html(view)
    details = (
        f'<details class="nbm-story" style="margin:0">{line}'
        f'<div style="font-size:0.9em;padding:2px 0 2px 1em;border-left:2px solid {_TRACK}">{body}</div>'
        "</details>"
    )
    return (
        f'<div class="nbmonitor-run" data-state="{_esc(view.state)}" style="line-height:1.6">'
        f"{details}{_incidents_html(view) if view.ended else ''}</div>"
    )


def render_text(view: View) -> str:
    """The display as plain text, for terminals, viewers and logs: one line while it runs, and
    what happened once it ended."""
    parts = [view.name, view.state, progress_text(view)]
    parts += [text for text in (rate_text(view), time_text(view)) if text]
    parts += [f"{label} {value}" for label, value in chips(view)]
    late = late_text(view)
    if late:
        parts.append(late)
    lines = ["nbmonitor · " + " · ".join(parts)]
    if not view.ended:
        return "\n".join([*lines, f"stuck in {view.stuck}"] if view.stuck else lines)
    told = story(view)
    lines += [line for line in (told["attempt"], told["error"]) if line]
    lines += [f"  {line}" for line in told["members"]]
    lines += list(view.incidents)
    lines += told["usage"]
    return "\n".join(lines)


class RunDisplay:
    """One run's output in a cell, then its final snapshot when it ends.

    ``mode``: "live" (the output is updated by its display id while the run runs) or
    "static" (shown at the start and the end only, e.g. in a terminal IPython).
    """

    def __init__(self, view: View, *, mode: str, clock: Any = time.time) -> None:
        from IPython.display import display

        self.mode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self._last = payload(view)
        self._last_state = view.state
        self._last_at = float("-inf")
        self.updates = 0
        self.handle = display(self._bundle(view, self._last), raw=True, display_id=True)  # type: ignore[no-untyped-call]  # IPython
        self.finished = False

    def _bundle(self, view: View, data: dict[str, Any]) -> dict[str, Any]:
        return {
            RUN_MIME: data | {"sent_at": self._clock()},
            "text/html": render_html(view),
            "text/plain": render_text(view),
        }

    def refresh(self, view: View, now: float) -> bool:
        """Show ``view`` if it changed (or ``ALIVE_EVERY`` passed) and the last refresh is old
        enough; True if it sent one."""
        if self.mode == "static":
            return False
        data = payload(view)
        with self._lock:
            if self.finished or view.ended:  # its end is finish()'s to show, once
                return False
            if data == self._last and now - self._last_at < ALIVE_EVERY:
                return False
            # A new state (stalled!) is shown at once; progress alone waits for its turn.
            wait = 1 / HARD_RATE if view.state != self._last_state else 1 / MAX_RATE
            if now - self._last_at < wait:
                return False
            self._last, self._last_at, self._last_state = data, now, view.state
            self.handle.update(self._bundle(view, data), raw=True)
            self.updates += 1
            return True

    def finish(self, view: View) -> None:
        """Replace the live display by a snapshot of the final state."""
        with self._lock:
            self.finished = True
            self.handle.update(self._bundle(view, payload(view)), raw=True)


class UsagePlot:
    """A run's usage plot, shown under its display when it ends (in the cell's own output: on
    the main thread): one bundle of three types. image/svg+xml, the plot as a picture, which a
    saved notebook shows on GitHub and nbviewer with no kernel and no extension; ``USAGE_MIME``,
    the plot's columns and the peak lines, from which the lab extension draws the bundle's
    picture with a legend that hides processes and a read-out under the pointer; and text/plain,
    the peak lines. The picture is carried once: its columns come beside it, not in a second
    copy of it. While the run runs, its plot is in the display's details (the lab extension
    asks the Jupyter server for it), so a cell is one line tall."""

    def __init__(self, name: str, *, width: int = 640) -> None:
        self.name = name
        self.width = width

    def bundle(self, history: _history.History) -> dict[str, Any]:
        """The output: the picture, its columns and its peak lines."""
        from . import plot

        picture, columns = plot.svg_and_columns(history, self.width, title=self.name)
        peaks = plot.peak_lines(history)
        return {
            # The server's usage answer (GET .../runs/<id>/usage) less its SVG: the lab extension
            # draws the bundle's picture with these columns. They stay JSON text, as the SVG embeds
            # them: a saved notebook writes each number of a JSON array on a line of its own.
            USAGE_MIME: {"peaks": peaks, "skipped": history.skipped, "columns": columns},
            "image/svg+xml": picture,
            "text/plain": "\n".join(peaks) or "usage",
        }

    def show(self, history: _history.History | None) -> bool:
        """Show the whole run's plot; nothing (False) when it recorded no usage."""
        from IPython.display import display

        if history is None or not history.rows:
            return False
        display(self.bundle(history), raw=True)  # type: ignore[no-untyped-call]  # IPython
        return True
