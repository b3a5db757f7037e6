"""The live display of a run in a notebook, and its final static snapshot.

``render_html`` and ``render_text`` are pure: a View in, a string out. All
user text (names, errors) is escaped. ``RunDisplay`` shows the HTML in one
stock ``ipywidgets.HTML`` (so one refresh is one comm message), refreshed at
most ``MAX_RATE`` times a second and only when it changed, and replaces it
with a plain HTML + text snapshot when the run ends, so a saved notebook
shows the result without a kernel and never "Loading widget...".
``UsagePlot`` is the usage plot under it, an output of its own: a plain SVG
picture, which a saved notebook shows anywhere, with its columns beside it
(``USAGE_MIME``), from which JupyterLab adds a legend and a read-out.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _format
from ._format import COLOURS
from .usage import History, human_bytes

if TYPE_CHECKING:
    from . import history as _history

__all__ = [
    "COLOURS",
    "USAGE_MIME",
    "MemberView",
    "RunDisplay",
    "UsagePlot",
    "View",
    "render_html",
    "render_text",
]

#: The empty part of a bar: grey seen through, on light and dark themes alike.
_TRACK = "rgba(128,128,128,0.25)"
MAX_RATE = 4.0  # refreshes a second for progress, well under the 10 allowed
HARD_RATE = 10.0  # refreshes a second at most, even when the state changes
#: The usage plot's own output type, its columns and peak lines: JupyterLab draws the bundle's
#: image/svg+xml with them, a legend and a read-out (labextension/src/output.ts); other front
#: ends show the image/svg+xml alone.
USAGE_MIME = "application/vnd.nbmonitor.usage+json"


@dataclass(frozen=True)
class MemberView:
    """One worker (or rank) of the run, as a small bar under the run's."""

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
    watcher: str | None = None  # "pid 123" when a standalone watcher runs
    note: str | None = None  # the latest warning, if any
    ended: bool = False
    members: tuple[MemberView, ...] = ()  # the run's multiprocessing workers
    peaks: str = ""  # "Peak memory 3.2 GB (most: DataLoader worker 2, 1.9 GB); ...", once known
    stuck: str | None = None  # "wait_for_batch (data.py:42) ← train (train.py:88)" while late or stalled
    attempt: str = ""  # "attempt 2 · resumed from the checkpoint at step 1200, saved 4 min ago"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def remaining(self) -> float | None:
        """Seconds to completion at the recent rate."""
        if self.total is None or not self.rate or self.step >= self.total:
            return None
        return (self.total - self.step) / self.rate


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _badge(state: str) -> str:
    colour = COLOURS.get(state, "#616161")
    return (
        f'<span class="nbm-badge" data-state="{_esc(state)}" style="background:{colour};color:#fff;'
        f'border-radius:9px;padding:1px 8px;font-weight:600;font-size:0.85em">{_esc(state)}</span>'
    )


def _bar(view: View) -> str:
    if view.total is None or view.total <= 0:
        return ""
    share = max(0.0, min(1.0, view.step / view.total))
    colour = COLOURS.get(view.state, "#616161")
    return (
        f'<div style="background:{_TRACK};border-radius:4px;height:8px;margin:4px 0;max-width:480px">'
        f'<div style="background:{colour};width:{share * 100:.1f}%;height:8px;border-radius:4px"></div></div>'
    )


_MEMBERS_SHOWN = 16
_MEMBER_COLOURS = {"running": COLOURS["running"], "ended": COLOURS["finished"]}


def _members_html(view: View) -> str:
    """A small bar per worker, the straggler marked: how far each got, next to the others."""
    if not view.members:
        return ""
    top = max([view.total or 0, *(m.step for m in view.members)]) or 1
    rows = []
    for member in view.members[:_MEMBERS_SHOWN]:
        colour = (
            COLOURS["stalled"] if member.straggler else _MEMBER_COLOURS.get(member.state, COLOURS["failed"])
        )
        share = max(0.0, min(1.0, member.step / top))
        tail = f"step {member.step}"
        if member.straggler:
            tail += " · slowest"
        if member.state != "running":
            tail += f" · {member.state}" + (f": {member.note}" if member.note else "")
        rows.append(
            f'<div class="nbm-member" data-state="{_esc(member.state)}" '
            f'data-straggler="{int(member.straggler)}" '
            'style="display:flex;align-items:center;gap:8px;font-size:0.85em">'
            '<span style="font-family:monospace;min-width:14em;overflow:hidden;text-overflow:ellipsis;'
            f'white-space:nowrap">{_esc(member.label)}</span>'
            f'<span style="background:{_TRACK};border-radius:2px;height:4px;width:160px;flex:none">'
            f'<span style="display:block;background:{colour};width:{share * 100:.1f}%;height:4px;'
            'border-radius:2px"></span></span>'
            f'<span style="color:{colour if member.straggler or member.state != "running" else "inherit"}">'
            f"{_esc(tail)}</span></div>"
        )
    if len(view.members) > _MEMBERS_SHOWN:
        more = len(view.members) - _MEMBERS_SHOWN
        rows.append(f'<div style="font-size:0.85em;color:#757575">and {more} more workers</div>')
    return f'<div class="nbm-members" style="margin:2px 0 4px">{"".join(rows)}</div>'


def _members_text(view: View) -> list[str]:
    lines = []
    for member in view.members[:_MEMBERS_SHOWN]:
        line = f"  {member.label}: step {member.step}"
        if member.straggler:
            line += ", slowest"
        if member.state != "running":
            line += f", {member.state}" + (f": {member.note}" if member.note else "")
        lines.append(line)
    if len(view.members) > _MEMBERS_SHOWN:
        lines.append(f"  and {len(view.members) - _MEMBERS_SHOWN} more workers")
    return lines


def _progress(view: View) -> str:
    parts = [f"step {_format.steps(view.step, view.total)}"]
    if view.total:
        parts[0] += f" ({min(100.0, view.step / view.total * 100):.0f}%)"
    if view.rate is not None and not view.ended:
        parts.append(f"{view.rate:.3g}/s")
    parts.append(f"elapsed {_format.duration(view.elapsed)}")
    if view.remaining is not None and not view.ended:
        parts.append(f"about {_format.duration(view.remaining)} left")
    return " · ".join(parts)


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
        peak_gpu = human_bytes(history.peak_gpu_memory) if history.peak_gpu_memory else last.gpu_error or "-"
        peaks = f"peak CPU {history.peak_cpu:.0f}% · peak memory {human_bytes(history.peak_rss)}"
        return [f"{peaks} · peak GPU memory {peak_gpu}"]
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
    if not last.gpus:
        lines.append(last.gpu_error or "no GPU")
    return lines


def _watcher_line(view: View) -> str:
    if view.ended:
        return ""
    if view.watcher:
        return f"watcher running ({view.watcher}): you will hear of this run even if the kernel dies"
    return (
        "no standalone watcher: notifications stop if this kernel dies "
        "(run 'nbmonitor-watcher start --detach' to keep watching)"
    )


def render_html(view: View) -> str:
    """The display as HTML: a badge, the name, a bar, progress, the promise, usage, the watcher."""
    parts = [f'<div>{_badge(view.state)} <b class="nbm-name">{_esc(view.name)}</b></div>', _bar(view)]
    parts.append(f"<div>{_esc(_progress(view))}</div>")
    if view.attempt:
        parts.append(f'<div class="nbm-attempt">{_esc(view.attempt)}</div>')
    parts.append(_members_html(view))
    if view.error:
        parts.append(f'<div style="color:{COLOURS["failed"]}">{_esc(view.error)}</div>')
    if view.stuck:
        colour = COLOURS.get(view.state, COLOURS["stalled"])
        parts.append(f'<div class="nbm-stuck" style="color:{colour}">stuck in {_esc(view.stuck)}</div>')
    for line in (_promise(view), *_usage_lines(view)):
        if line:
            parts.append(f'<div style="font-family:monospace">{_esc(line)}</div>')
    for note in (_watcher_line(view), view.note):
        if note:
            parts.append(f'<div style="color:#757575;font-size:0.85em">{_esc(note)}</div>')
    return (
        f'<div class="nbmonitor-run" data-state="{_esc(view.state)}" style="line-height:1.5">'
        f"{''.join(parts)}</div>"
    )


def render_text(view: View) -> str:
    """The display as plain text, for terminals, viewers and logs."""
    lines = [f"nbmonitor · {view.name} · {view.state} · {_progress(view)}"]
    if view.attempt:
        lines.append(view.attempt)
    lines += _members_text(view)
    if view.error:
        lines.append(view.error)
    if view.stuck:
        lines.append(f"stuck in {view.stuck}")
    lines += [line for line in (_promise(view), *_usage_lines(view)) if line]
    return "\n".join(lines)


class RunDisplay:
    """One run's output in a cell, then a snapshot when it ends.

    ``mode``: "widget" (a live ipywidgets.HTML), "live" (the output itself is
    updated, for kernels without ipywidgets) or "static" (shown at the start
    and the end only, e.g. in a terminal IPython).
    """

    def __init__(self, view: View, *, mode: str) -> None:
        from IPython.display import display

        self.mode = mode
        self._lock = threading.Lock()
        self._last_html = render_html(view)
        self._last_state = view.state
        self._last_at = float("-inf")
        self.updates = 0
        self.widget: Any = None
        bundle: dict[str, Any] = {"text/plain": render_text(view), "text/html": self._last_html}
        if mode == "widget":
            import ipywidgets

            self.widget = ipywidgets.HTML(value=self._last_html)
            bundle["application/vnd.jupyter.widget-view+json"] = {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.widget.model_id,
            }
        self.handle = display(bundle, raw=True, display_id=True)  # type: ignore[no-untyped-call]  # IPython
        self.finished = False

    def refresh(self, view: View, now: float) -> bool:
        """Show ``view`` if it changed and the last refresh is old enough; True if it sent one."""
        if self.mode == "static":
            return False
        content = render_html(view)
        with self._lock:
            if self.finished or content == self._last_html:
                return False
            # A new state (stalled!) is shown at once; progress alone waits for its turn.
            wait = 1 / HARD_RATE if view.state != self._last_state else 1 / MAX_RATE
            if now - self._last_at < wait:
                return False
            self._last_html, self._last_at, self._last_state = content, now, view.state
            if self.widget is not None:
                self.widget.value = content
            else:
                self.handle.update({"text/plain": render_text(view), "text/html": content}, raw=True)
            self.updates += 1
            return True

    def finish(self, view: View) -> None:
        """Replace the live display by a static snapshot of the final state."""
        with self._lock:
            self.finished = True
            snapshot = {"text/plain": render_text(view), "text/html": render_html(view)}
            self.handle.update(snapshot, raw=True)
            if self.widget is not None:
                self.widget.close()
                self.widget = None


class UsagePlot:
    """The run's usage plot, an output of its own under the display: redrawn at most once a
    second while the run runs (from the writer thread, by display id), and the whole run when
    it ends. One bundle of three types: image/svg+xml (the plot as a picture: a saved notebook
    shows it on GitHub and nbviewer with no kernel and no widget), ``USAGE_MIME`` (the plot's
    columns and the peak lines: the lab extension draws the bundle's picture with a legend that
    hides processes and a read-out under the pointer) and text/plain (the peak lines). The
    picture is carried once: its columns come beside it, not in a second copy of it."""

    EVERY = 1.0  # seconds between redraws

    def __init__(self, name: str, *, live: bool, width: int = 640) -> None:
        from IPython.display import display

        self.name = name
        self.live = live
        self.width = width
        self._lock = threading.Lock()
        self._last_at = float("-inf")
        self.updates = 0
        # Made here, in the cell's own output; the writer thread only updates it.
        self.handle = display({"text/plain": "usage: measuring..."}, raw=True, display_id=True)  # type: ignore[no-untyped-call]  # IPython

    def refresh(self, history: _history.History, now: float) -> bool:
        """Redraw with ``history`` if the last redraw is a second old; True if it did."""
        if not self.live or not history.rows:
            return False
        with self._lock:
            if now - self._last_at < self.EVERY:
                return False
            self._last_at = now
            self._show(history)
            return True

    def finish(self, history: _history.History | None) -> None:
        """The run ended: its whole plot, for good (nothing when it recorded nothing)."""
        with self._lock:
            self.live = False
            if history is not None and history.rows:
                self._show(history)
            else:
                self.handle.update({"text/plain": ""}, raw=True)

    def _show(self, history: _history.History) -> None:
        from . import plot

        picture, columns = plot.svg_and_columns(history, self.width, title=self.name)
        peaks = plot.peak_lines(history)
        bundle = {
            # The server's usage answer (GET .../runs/<id>/usage) less its SVG: the lab extension
            # draws the bundle's picture with these columns. They stay JSON text, as the SVG embeds
            # them: a saved notebook writes each number of a JSON array on a line of its own.
            USAGE_MIME: {"peaks": peaks, "skipped": history.skipped, "columns": columns},
            "image/svg+xml": picture,
            "text/plain": "\n".join(peaks) or "usage",
        }
        self.handle.update(bundle, raw=True)
        self.updates += 1
