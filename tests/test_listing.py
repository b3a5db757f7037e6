"""Repo().runs() shown as a table: text in a terminal, HTML in a notebook, each run as it is now."""

from __future__ import annotations

import time
from xml.etree import ElementTree

from nbmonitor.listing import Runs
from nbmonitor.record import ErrorInfo
from nbmonitor.repo import Repo

from .records import sample


def test_runs_show_as_a_table_with_each_runs_state_now_and_user_text_as_text(repo: Repo) -> None:
    now = time.time()
    repo.write_run(sample(id="1" * 32, name="<b>bold</b>", status="failed", started_at=now - 130,
                          ended_at=now - 5, error=ErrorInfo("ValueError", "x")))  # fmt: skip
    # Its file says running, but it was last refreshed 5 min ago with a 10 s heartbeat: lost.
    repo.write_run(sample(id="2" * 32, name="silent", started_at=now - 400, updated_at=now - 300,
                          last_progress_at=now - 300, heartbeat=10.0))  # fmt: skip
    # Refreshed just now, no progress for 100 s with a 3 s ETA: stalled.
    repo.write_run(sample(id="3" * 32, name="stuck", started_at=now - 200, updated_at=now,
                          last_progress_at=now - 100, heartbeat=10.0))  # fmt: skip
    runs = repo.runs()
    assert isinstance(runs, Runs)
    assert [r.name for r in runs] == ["<b>bold</b>", "stuck", "silent"]  # a list of records, newest first
    assert all(r.status == "running" for r in runs[1:])
    lines = repr(runs).splitlines()
    assert lines[0].split() == ["name", "status", "steps", "started", "took", "origin", "id"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["<b>bold</b>", "failed", "10/100"],
        ["stuck", "stalled", "10/100"],
        ["silent", "lost", "10/100"],
    ]
    assert "2 min 5 s" in lines[1]
    table = ElementTree.fromstring(runs._repr_html_())
    cells = [["".join(td.itertext()) for td in tr.iter("td")] for tr in table.iter("tr")][1:]
    assert [row[:2] for row in cells] == [["<b>bold</b>", "failed"], ["stuck", "stalled"], ["silent", "lost"]]
    assert table.find(".//b") is None  # the name is text, not markup
    first = runs[:1]
    assert isinstance(first, Runs)
    assert len(first) == 1
    assert repr(Runs()) == "no runs"
