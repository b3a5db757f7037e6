"""``Repo().runs()`` as people read it: a table in a notebook, aligned columns in a terminal.

``Runs`` is a plain list of RunRecords (everything a list does still works) that shows itself
as a table: each run's name, its state now as its file tells it when shown (the run rules on
the wall clock: a run past its deadline reads *stalled*, one whose file stopped being
refreshed reads *lost*, not the *running* it still says; a watcher, which also sees the
process table, says *crashed* for a process of its own host that died), steps, start,
duration, origin and id. Names and origins are data: escaped in HTML, one line each in text.
"""

from __future__ import annotations

import html
import time
from typing import Any, SupportsIndex, overload

from . import _format, rules
from .record import RunRecord

__all__ = ["Runs"]

_HEADER = ("name", "status", "steps", "started", "took", "origin", "id")
_SLACK = 2.0  # seconds a file's refresh may take beyond its heartbeat


class Runs(list[RunRecord]):
    """Runs of a repo, newest first, shown as a table."""

    @overload
    def __getitem__(self, index: SupportsIndex) -> RunRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Runs: ...

    def __getitem__(self, index: SupportsIndex | slice) -> RunRecord | Runs:
        if isinstance(index, slice):  # runs()[:5] is a table too
            return Runs(super().__getitem__(index))
        return super().__getitem__(index)

    def rows(self, now: float | None = None) -> list[tuple[str, ...]]:
        """One row of text per run, as the table shows it."""
        now = time.time() if now is None else now
        states = self._states(now)
        rows: list[tuple[str, ...]] = []
        for run in self:
            end = run.ended_at if run.ended_at is not None else now
            rows.append(
                (
                    _format.clip(_format.one_line(run.name), 40),
                    states.get(run.id, run.status),
                    _format.steps(run.step, run.total),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at)),
                    _format.duration(end - run.started_at),
                    _format.clip(_format.one_line(run.origin.describe()), 48),
                    run.id[:8],
                )
            )
        return rows

    def _states(self, now: float) -> dict[str, str]:
        """Each run's state at ``now`` as its file tells it."""
        states = {}
        for run in self:
            silent = (
                run.heartbeat is not None
                and not run.ended
                and now - run.updated_at > rules.HEARTBEATS_MISSED * run.heartbeat + _SLACK
            )
            judged = rules.state(
                run.status,
                alive=None,
                since_progress=max(0.0, now - run.last_progress_at),
                eta=run.eta,
                grace=rules.grace_for(run.eta, run.grace) if run.eta is not None else 0.0,
                lag=rules.write_lag(run.write_lag),
                silent=silent,
            )
            states[run.id] = judged.value
        return states

    def __repr__(self) -> str:
        return self.text()

    def text(self) -> str:
        """The table as aligned text."""
        if not self:
            return "no runs"
        return _format.table([_HEADER, *self.rows()])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Runs(...)" if cycle else self.text())

    def _repr_html_(self) -> str:
        if not self:
            return "<p>no runs</p>"
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in _HEADER)
        body = []
        for row in self.rows():
            cells = [html.escape(cell) for cell in row]
            colour = _format.COLOURS.get(row[1], _format.COLOURS["interrupted"])
            cells[1] = (
                f'<span style="background:{colour};color:#fff;border-radius:9px;padding:0 8px;'
                f'font-size:0.85em;font-weight:600">{cells[1]}</span>'
            )
            cells[6] = f"<code>{cells[6]}</code>"
            body.append("<tr>" + "".join(f'<td style="text-align:left">{c}</td>' for c in cells) + "</tr>")
        return (
            '<table class="nbmonitor-runs" style="font-variant-numeric:tabular-nums">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
