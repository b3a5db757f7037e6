"""The usage plot: a run's history as plain SVG, and as a self-contained HTML page.

Why plain SVG from one pure function: the same picture serves four places
(the live notebook display, the static output a saved notebook keeps for
GitHub and nbviewer, the JupyterLab panel, and ``nbmonitor-watcher usage
--html``), needs no network and no JavaScript to be seen, adds nothing to
``import nbmonitor`` (this module is imported when a plot is drawn), and
costs a few milliseconds: the history is cut into at most one column per two
pixels before anything is drawn, so a week of 16 processes draws as fast as
a minute of one. Each area and line carries a ``<title>`` (a tooltip where
SVG is inline) and ``data-proc``; with its columns (each column's values),
the HTML page's few lines of script and the lab extension (a cell's output,
the panel) add a hover read-out and a legend that hides and shows processes.
``svg`` embeds the columns in the drawing (``data``); ``svg_and_columns``
gives the drawing and its columns' JSON apart from one drawing, for a cell's
output, which carries the drawing once, as a picture, and the JSON beside it.

All text from runs (process names, marks) is escaped and clipped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _format
from .history import History, Reading, Row, peaks

__all__ = ["PALETTE", "ProcessSummary", "peak_lines", "report_html", "summary", "svg", "svg_and_columns"]

#: Ten colours told apart on light and dark backgrounds (Tableau 10).
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_TEXT = "#8a8a8a"  # readable on white and on a dark theme alike: an <img> inherits no colour
_GRID = "rgba(128,128,128,0.3)"
_MARK = "rgba(128,128,128,0.85)"
_LEFT, _RIGHT, _TOP, _PANEL, _GAP = 64, 12, 30, 84, 22
_LABEL_ROWS = 2  # rows of mark labels above the plot; a label that fits in neither is left to its tooltip
_CHAR = 5.8  # width of a character of a mark label, in pixels, near enough
MARK_LABEL = 24  # characters of a mark shown on the plot (all of it in its tooltip)


@dataclass(frozen=True, slots=True)
class ProcessSummary:
    """One process over the whole history: averages (over its lifetime) and peaks."""

    number: int
    name: str
    pid: int
    cpu_mean: float
    cpu_peak: float
    memory_mean: float
    memory_peak: float
    gpu_mean: float | None
    gpu_peak: float | None


def summary(history: History) -> list[ProcessSummary]:
    """Per process, in order of first sight: one pass over the rows (a week of 16 processes is
    some 130,000 readings)."""
    sums: dict[int, list[float]] = {}  # weight, cpu, peak cpu, memory, peak memory, GPU weight, GPU, peak GPU
    for row in history.rows:
        w = row.span
        for number, r in row.processes.items():
            acc = sums.get(number)
            if acc is None:
                acc = sums[number] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            held = r.rss if r.pss is None else r.pss
            acc[0] += w
            acc[1] += w * r.cpu
            acc[2] = max(acc[2], r.cpu if r.cpu_peak is None else r.cpu_peak)
            acc[3] += w * held
            acc[4] = max(acc[4], held if r.memory_peak is None else r.memory_peak)
            if r.gpu is not None:
                acc[5] += w
                acc[6] += w * r.gpu
                acc[7] = max(acc[7], r.gpu if r.gpu_peak is None else r.gpu_peak)
    out = []
    for number in sorted(sums):
        weight, cpu, cpu_peak, memory, memory_peak, gpu_weight, gpu, gpu_peak = sums[number]
        info = history.processes.get(number)
        out.append(
            ProcessSummary(
                number,
                info.name if info else f"process {number}",
                info.pid if info else 0,
                cpu / (weight or 1.0),
                cpu_peak,
                memory / (weight or 1.0),
                memory_peak,
                gpu / gpu_weight if gpu_weight else None,
                gpu_peak if gpu_weight else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class _Column:
    t: float
    values: dict[int, Reading]
    gpus: dict[int, float]  # utilisation by GPU index


def _columns(rows: Sequence[Row], count: int) -> list[_Column]:
    """Rows averaged into at most ``count`` columns of equal time."""
    if not rows:
        return []
    if len(rows) <= count:
        return [_Column(r.t, r.processes, {g.index: g.utilization for g in r.gpus}) for r in rows]
    start, end = rows[0].t, rows[-1].t
    width = (end - start) / count or 1.0
    buckets: list[list[Row]] = [[] for _ in range(count)]
    for row in rows:
        buckets[min(count - 1, int((row.t - start) / width))].append(row)
    out = []
    for bucket in buckets:
        if not bucket:
            continue
        total = sum(r.span for r in bucket) or 1.0
        values: dict[int, Reading] = {}
        for number in {n for r in bucket for n in r.processes}:
            have = [(r.span, r.processes[number]) for r in bucket if number in r.processes]
            share = sum(w for w, _ in have) / total  # present for part of the column: its share
            weight = sum(w for w, _ in have) or 1.0
            values[number] = Reading(
                sum(w * x.cpu for w, x in have) / weight * share,
                round(sum(w * x.rss for w, x in have) / weight * share),
                round(sum(w * x.memory for w, x in have) / weight * share),
                round(sum(w * (x.gpu or 0) for w, x in have) / weight * share),
            )
        gpus: dict[int, float] = {}
        for index in {g.index for r in bucket for g in r.gpus}:
            util = [(r.span, g.utilization) for r in bucket for g in r.gpus if g.index == index]
            gpus[index] = sum(w * u for w, u in util) / (sum(w for w, _ in util) or 1.0)
        out.append(_Column(bucket[-1].t, values, gpus))
    return out


def _nice(top: float) -> float:
    """A round number at or above ``top`` for an axis: 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= top))


def _nice_bytes(top: float) -> float:
    if top <= 0:
        return float(2**20)
    unit = 1024 ** max(0, min(4, math.floor(math.log(top, 1024))))
    return float(_nice(top / unit) * unit)


def _colour(number: int, order: dict[int, int]) -> str:
    return PALETTE[order[number] % len(PALETTE)]


def _esc(text: str) -> str:
    return html.escape(_format.one_line(text), quote=True)


def svg(history: History, width: int = 720, *, title: str | None = None, data: bool = False) -> str:
    """The plot: stacked areas per process for CPU, memory (PSS where known) and GPU memory, a
    line per GPU for its utilisation, marks as labelled vertical lines, a legend. ``data``
    embeds each column's values (for a hover read-out: the HTML page's, the panel's)."""
    drawn, columns = _draw(history, width, title)
    if data and columns is not None:
        return f'{drawn}<metadata class="nbm-data">{html.escape(columns, quote=False)}</metadata></svg>'
    return f"{drawn}</svg>"


def svg_and_columns(
    history: History, width: int = 720, *, title: str | None = None
) -> tuple[str, str | None]:
    """From one drawing, the plot without its columns (a picture: a saved notebook on GitHub)
    and the JSON text ``svg`` embeds as its columns (None when nothing is drawn):
    ``{"x": [..], "t": [..], "cpu"|"memory"|"gpu": {"<process>": [value or null, ..]}}``."""
    drawn, columns = _draw(history, width, title)
    return f"{drawn}</svg>", columns


def _draw(history: History, width: int, title: str | None) -> tuple[str, str | None]:
    """The SVG without its closing tag, and its columns' JSON (None when there are none)."""
    width = max(320, int(width))
    inner = width - _LEFT - _RIGHT
    columns = _columns(history.rows, max(2, inner // 2))
    numbers = sorted({n for c in columns for n in c.values})
    order = {n: i for i, n in enumerate(numbers)}
    names = _names(history, numbers)
    has_gpu_memory = any(r.gpu for c in columns for r in c.values.values())
    gpu_indexes = sorted({i for c in columns for i in c.gpus})
    panels: list[tuple[str, Callable[[Reading], float], Callable[[float], str], bool]] = [
        ("CPU", lambda r: r.cpu, lambda v: f"{v:.0f}%", False),
        ("memory", lambda r: float(r.memory), _format_bytes, True),
    ]
    if has_gpu_memory:
        panels.append(("GPU memory", lambda r: float(r.gpu or 0), _format_bytes, True))
    count = len(panels) + (1 if gpu_indexes else 0)
    legend_rows = math.ceil(len(numbers) / max(1, inner // 170)) if numbers else 0
    height = _TOP + count * (_PANEL + _GAP) + 16 + legend_rows * 18 + 8
    moments = [m.t for m in history.marks]
    t0 = min([columns[0].t, *moments]) if columns else 0.0
    t1 = max([columns[-1].t, *moments]) if columns else 1.0
    span = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * inner if len(columns) > 1 else _LEFT + inner / 2

    label = title or history.name or "usage"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="nbmonitor-usage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">',
        f"<title>{_esc(label)}: usage of {len(numbers)} process{'es' if len(numbers) != 1 else ''}</title>",
    ]
    if not columns:
        out.append(f'<text x="{_LEFT}" y="{_TOP + 20}" fill="{_TEXT}">no usage recorded yet</text>')
        return "".join(out), None
    top_y = _TOP
    for name, value, fmt, is_bytes in panels:
        totals = [sum(value(r) for r in c.values.values()) for c in columns]
        high = (_nice_bytes if is_bytes else _nice)(max(totals) if totals else 0.0)
        if name == "CPU":
            high = max(high, 100.0)
        out.append(_axes(name, top_y, inner, fmt(high)))
        below = [0.0] * len(columns)
        for number in numbers:
            upper = [
                b + (value(c.values[number]) if number in c.values else 0.0)
                for b, c in zip(below, columns, strict=True)
            ]
            own = [value(c.values[number]) for c in columns if number in c.values]
            points = [
                (x(c.t), top_y + _PANEL - u / high * _PANEL) for c, u in zip(columns, upper, strict=True)
            ]
            base = [(x(c.t), top_y + _PANEL - b / high * _PANEL) for c, b in zip(columns, below, strict=True)]
            path = _area(points, base)
            mean = sum(own) / max(1, len(own))
            tip = f"{names[number]} · {name}: peak {fmt(max(own, default=0.0))}, mean {fmt(mean)}"
            out.append(
                f'<path class="nbm-series" data-proc="{number}" d="{path}" fill="{_colour(number, order)}" '
                f'fill-opacity="0.8" stroke="none"><title>{_esc(tip)}</title></path>'
            )
            below = upper
        top_y += _PANEL + _GAP
    if gpu_indexes:
        out.append(_axes("GPU busy", top_y, inner, "100%"))
        for i, index in enumerate(gpu_indexes):
            pts = [
                (x(c.t), top_y + _PANEL - c.gpus[index] / 100 * _PANEL) for c in columns if index in c.gpus
            ]
            name = history.gpu_names.get(index, "")
            tip = f"GPU{index} {name}: peak {max(c.gpus.get(index, 0.0) for c in columns):.0f}% busy"
            out.append(
                f'<polyline class="nbm-gpu" data-gpu="{index}" points="{_points(pts)}" fill="none" '
                f'stroke="{PALETTE[(i + 4) % len(PALETTE)]}" stroke-width="1.5">'
                f"<title>{_esc(tip)}</title></polyline>"
            )
        top_y += _PANEL + _GAP
    bottom = top_y - _GAP
    out.append(
        f'<text x="{_LEFT}" y="{bottom + 13}" fill="{_TEXT}">{_esc(_format.duration(t0))}</text>'
        f'<text x="{_LEFT + inner}" y="{bottom + 13}" fill="{_TEXT}" text-anchor="end">'
        f"{_esc(_format.duration(t1))}</text>"
    )
    placed: list[list[tuple[float, float]]] = [[] for _ in range(_LABEL_ROWS)]
    # The user's marks claim label room first; nbmonitor's own (start, end, stalls) take what is left.
    for mark in sorted(history.marks, key=lambda m: (m.by != "user", m.t)):
        mx = x(mark.t)
        text = mark.text
        short = _format.clip(_format.one_line(text), MARK_LABEL)
        anchor = "end" if mx > _LEFT + inner * 0.8 else "start"
        room = len(short) * _CHAR + 4
        left = mx - 2 - room if anchor == "end" else mx + 2
        row = next(
            (i for i, taken in enumerate(placed) if all(left + room < a or left > b for a, b in taken)), None
        )
        label = ""
        if row is not None:
            placed[row].append((left - 3, left + room + 3))
            label = (
                f'<text x="{mx + (-2 if anchor == "end" else 2):.1f}" y="{_TOP - 18 + 12 * row}" '
                f'fill="{_TEXT}" font-size="10" text-anchor="{anchor}">{_esc(short)}</text>'
            )
        out.append(
            f'<g class="nbm-mark" data-t="{mark.t:.2f}">'
            f"<title>{_esc(f'{text} at {_format.duration(mark.t)}')}</title>"
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{_TOP - 28 + 12 * (row or 0) + 12}" y2="{bottom}" '
            f'stroke="{_MARK}" stroke-dasharray="{"2,2" if mark.by == "nbmonitor" else "4,2"}"/>{label}</g>'
        )
    out.append(_legend(numbers, names, order, bottom + 30, inner))
    return "".join(out), _column_json(columns, numbers, x)


def _names(history: History, numbers: Sequence[int]) -> dict[int, str]:
    """Each process's name, with its pid where two share a name ("python -c (812)")."""
    plain = {n: history.processes[n].name if n in history.processes else f"process {n}" for n in numbers}
    twice = {name for name in plain.values() if list(plain.values()).count(name) > 1}
    return {
        n: f"{name} ({history.processes[n].pid})" if name in twice and n in history.processes else name
        for n, name in plain.items()
    }


def _axes(name: str, top: float, inner: int, high: str) -> str:
    bottom = top + _PANEL
    # A name of two words takes two lines: "GPU memory" on one is wider than the margin.
    words = name.split(" ", 1)
    label = "".join(
        f'<tspan x="{_LEFT - 6}" dy="{12 if i else 0}">{_esc(word)}</tspan>' for i, word in enumerate(words)
    )
    return (
        f'<g class="nbm-axes">'
        f'<line x1="{_LEFT}" x2="{_LEFT + inner}" y1="{top}" y2="{top}" stroke="{_GRID}"/>'
        f'<line x1="{_LEFT}" x2="{_LEFT + inner}" y1="{bottom}" y2="{bottom}" stroke="{_GRID}"/>'
        f'<text x="{_LEFT - 6}" y="{top + 10}" fill="{_TEXT}" text-anchor="end">{_esc(high)}</text>'
        f'<text x="{_LEFT - 6}" y="{bottom}" fill="{_TEXT}" text-anchor="end">0</text>'
        f'<text x="{_LEFT - 6}" y="{top + _PANEL / 2 + 4 - 6 * (len(words) - 1)}" fill="{_TEXT}" '
        f'text-anchor="end" font-weight="bold">{label}</text></g>'
    )


def _legend(numbers: list[int], names: dict[int, str], order: dict[int, int], y: float, inner: int) -> str:
    per_row = max(1, inner // 170)
    parts = ['<g class="nbm-legend">']
    for i, number in enumerate(numbers):
        lx = _LEFT + (i % per_row) * 170
        ly = y + (i // per_row) * 18
        name = _format.clip(_format.one_line(names[number]), 24)
        parts.append(
            f'<g class="nbm-key" data-proc="{number}" style="cursor:pointer">'
            f"<title>{_esc(names[number])}</title>"
            f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{_colour(number, order)}"/>'
            f'<text x="{lx + 14}" y="{ly}" fill="{_TEXT}">{_esc(name)}</text></g>'
        )
    parts.append("</g>")
    return "".join(parts)


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)


def _area(upper: Sequence[tuple[float, float]], lower: Sequence[tuple[float, float]]) -> str:
    forward = " L".join(f"{px:.1f},{py:.1f}" for px, py in upper)
    back = " L".join(f"{px:.1f},{py:.1f}" for px, py in reversed(lower))
    return f"M{forward} L{back} Z"


def _format_bytes(n: float) -> str:
    return _format.human_bytes(n)


def _column_json(columns: list[_Column], numbers: list[int], x: Callable[[float], float]) -> str:
    return json.dumps(
        {
            "x": [round(x(c.t), 1) for c in columns],
            "t": [round(c.t, 1) for c in columns],
            "cpu": {
                str(n): [round(c.values[n].cpu, 1) if n in c.values else None for c in columns]
                for n in numbers
            },
            "memory": {
                str(n): [c.values[n].memory if n in c.values else None for c in columns] for n in numbers
            },
            "gpu": {str(n): [c.values[n].gpu if n in c.values else None for c in columns] for n in numbers},
        },
        separators=(",", ":"),
    )


def peak_lines(history: History) -> list[str]:
    """``peak memory 3.2 GB (most: DataLoader worker 2, 1.9 GB)`` per resource seen."""
    found = peaks(history)
    out = []
    for resource, what, fmt in (
        ("cpu", "peak CPU", lambda v: f"{v:.0f}%"),
        ("memory", "peak memory", _format_bytes),
        ("gpu_memory", "peak GPU memory", _format_bytes),
    ):
        peak = found.get(resource)
        if peak is not None:
            out.append(f"{what} {fmt(peak.value)} (most: {peak.process}, {fmt(peak.process_value)})")
    return out


_PAGE_SCRIPT = """
(() => {
  const svg = document.querySelector('svg.nbmonitor-usage');
  const meta = svg && svg.querySelector('metadata.nbm-data');
  if (!svg || !meta) return;
  const data = JSON.parse(meta.textContent);
  const names = {};
  svg.querySelectorAll('.nbm-key').forEach(key => {
    names[key.dataset.proc] = key.querySelector('title').textContent;
    key.addEventListener('click', () => {
      const off = key.classList.toggle('off');
      key.style.opacity = off ? 0.35 : 1;
      svg.querySelectorAll('.nbm-series[data-proc="' + key.dataset.proc + '"]')
        .forEach(el => { el.style.display = off ? 'none' : ''; });
    });
  });
  const tip = document.getElementById('tip');
  const fmtBytes = n => { const u = ['B', 'KB', 'MB', 'GB', 'TB']; let i = 0;
    while (Math.abs(n) >= 1024 && i < 4) { n /= 1024; i++; } return n.toFixed(i ? 1 : 0) + ' ' + u[i]; };
  svg.addEventListener('mousemove', ev => {
    const box = svg.getBoundingClientRect();
    const px = (ev.clientX - box.left) * svg.viewBox.baseVal.width / box.width;
    let best = 0;
    data.x.forEach((x, i) => { if (Math.abs(x - px) < Math.abs(data.x[best] - px)) best = i; });
    const rows = Object.keys(data.cpu).filter(p => data.cpu[p][best] !== null).map(p => {
      const tr = document.createElement('tr');
      [names[p] || p, data.cpu[p][best].toFixed(0) + '%', fmtBytes(data.memory[p][best]),
       data.gpu[p][best] ? fmtBytes(data.gpu[p][best]) : ''].forEach(text => {
        const td = document.createElement('td'); td.textContent = text; tr.appendChild(td); });
      return tr;
    });
    const head = document.createElement('div');
    head.textContent = 'at ' + data.t[best].toFixed(0) + ' s';
    tip.replaceChildren(head, Object.assign(document.createElement('table'), {}));
    tip.lastChild.append(...rows);
    tip.style.display = 'block';
    tip.style.left = (ev.pageX + 14) + 'px';
    tip.style.top = (ev.pageY + 14) + 'px';
  });
  svg.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
})();
"""


def report_html(history: History, title: str | None = None, width: int = 960) -> str:
    """One self-contained page: the interactive plot, peaks, and a table per process. Opens
    offline; all text from the run is escaped."""
    name = title or history.name or history.run_id
    rows = [["process", "pid", "mean CPU", "peak CPU", "mean memory", "peak memory", "peak GPU memory"]]
    for p in summary(history):
        rows.append(
            [
                p.name,
                str(p.pid),
                f"{p.cpu_mean:.0f}%",
                f"{p.cpu_peak:.0f}%",
                _format_bytes(p.memory_mean),
                _format_bytes(p.memory_peak),
                _format_bytes(p.gpu_peak) if p.gpu_peak else "-",
            ]
        )
    table = "".join(
        "<tr>"
        + "".join(f"<{'th' if i == 0 else 'td'}>{_esc(cell)}</{'th' if i == 0 else 'td'}>" for cell in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    marks = "".join(
        f"<li>{_esc(_format.duration(m.t))}: {_esc(m.text)}</li>" for m in history.marks if m.by == "user"
    )
    lost = (
        f"<p class='warn'>{history.skipped} damaged line(s) of the history were left out.</p>"
        if history.skipped
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{_esc(name)} · nbmonitor usage</title><style>"
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}"
        "@media (prefers-color-scheme:dark){body{color:#ddd;background:#1e1e1e}}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left}"
        "th{border-bottom:1px solid #8886}"
        "#tip{position:absolute;display:none;background:#333e;color:#fff;padding:6px 8px;"
        "border-radius:4px;font-size:12px;pointer-events:none}#tip td{padding:0 6px}"
        ".warn{color:#c62828}"
        "</style></head><body>"
        f"<h2>{_esc(name)}</h2>"
        + "".join(f"<div>{_esc(line)}</div>" for line in peak_lines(history))
        + lost
        + f"<p>{svg(history, width, title=name, data=True)}</p>"
        + f"<table>{table}</table>"
        + (f"<h3>Marks</h3><ul>{marks}</ul>" if marks else "")
        + f"<div id='tip'></div><script>{_PAGE_SCRIPT}</script></body></html>"
    )
