"""Usage history: its file format, coarsening, the plot, and real process trees recorded."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import psutil
import pytest

from nbmonitor import history, plot
from nbmonitor._recorder import COMPACT_EVERY, PENDING_MAX, RunHistory
from nbmonitor.cli import main
from nbmonitor.errors import CorruptRecordError
from nbmonitor.history import GpuReading, Mark, ProcessInfo, Reading, Row
from nbmonitor.repo import Repo
from nbmonitor.usage import GpuUsage, ProcessUsage, Usage

from . import records
from .helpers import child_env, wait_until

SVG = "{http://www.w3.org/2000/svg}"
RUN = "0123456789abcdef0123456789abcdef"


def lines_of(*rows: Row, marks: tuple[Mark, ...] = ()) -> list[str]:
    out = [history.encode_header(RUN, 1000.0, "node-a", "train")]
    out += [history.encode_process(ProcessInfo(n, 100 + n, f"proc {n}", 0.0)) for n in (0, 1)]
    out += [history.encode_row(r) for r in rows]
    out += [history.encode_mark(m) for m in marks]
    return out


def row(t: float, cpu0: float, mem0: int, cpu1: float = 0.0, mem1: int = 0, span: float = 1.0) -> Row:
    return Row(t, span, {0: Reading(cpu0, mem0, mem0, None), 1: Reading(cpu1, mem1, mem1, None)})


def test_rows_marks_and_processes_survive_the_file_format() -> None:
    gpu = GpuReading(0, 87.0, 3 * 2**30, 80 * 2**30)
    first = Row(1.0, 1.0, {0: Reading(50.0, 2**20, None, 2**30), 1: Reading(0.0, 2**21, 2**20, None)}, (gpu,))
    read = history.parse(lines_of(first, marks=(Mark(0.5, "eval", 3), Mark(1.0, "stalled", by="nbmonitor"))))
    assert read.rows == [first]
    assert read.processes[1] == ProcessInfo(1, 101, "proc 1", 0.0)
    assert [(m.text, m.by) for m in read.marks] == [("eval 3", "user"), ("stalled", "nbmonitor")]
    assert (read.host, read.name, read.start, read.skipped) == ("node-a", "train", 1000.0, 0)


def test_a_torn_last_line_and_garbage_lines_are_left_out_and_counted() -> None:
    good = lines_of(row(1.0, 10.0, 100), row(2.0, 20.0, 200))
    broken = [*good[:4], "not json at all", '{"t": "soon", "p": {}}', '{"mystery": 1}', good[4], good[4][:25]]
    read = history.parse(broken)
    assert [r.t for r in read.rows] == [1.0, 2.0]
    assert read.skipped == 4
    assert read.first_bad == 5


@pytest.mark.parametrize(
    ("first", "problem"),
    [("", "empty"), ("{}", "no header"), ('{"kind":"nbmonitor-usage","format":99,"start":1}', "format 99")],
)
def test_a_file_that_is_no_history_is_refused_naming_why(first: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        history.parse([first] if first else [])


def test_coarsening_keeps_averages_and_peaks_and_the_recent_past_whole() -> None:
    rows = [row(float(t), 100.0 if t % 30 == 5 else 0.0, 1000 + t) for t in range(1, 7201)]
    kept = history.coarsen(rows, now=7200.0)
    old = [r for r in kept if r.t <= 3600]
    recent = [r for r in kept if r.t > 3600]
    assert all(r.span == 30.0 for r in old)
    assert len(old) == 120
    assert all(r.span == 1.0 for r in recent[1:])  # the last hour at full resolution
    first = old[0].processes[0]
    assert first.cpu == pytest.approx(100 / 30)  # one busy second in thirty
    assert first.peak_cpu == 100.0
    assert first.peak_memory == 1030
    assert history.coarsen(kept, now=7200.0) == kept  # coarse enough stays as it is


def test_a_process_present_for_part_of_a_span_counts_for_its_share() -> None:
    merged = history.merge(
        [row(1.0, 50.0, 100, 40.0, 10), Row(2.0, 1.0, {0: Reading(50.0, 100, 100, None)})], 10.0
    )
    assert merged.processes[1].cpu == pytest.approx(20.0)  # 40 % for one of the two seconds
    assert merged.processes[1].peak_cpu == 40.0
    assert merged.processes[0].cpu == pytest.approx(50.0)
    assert merged.span == 2.0  # the seconds the rows cover, not the bucket's ten


def test_only_whole_buckets_are_merged_so_no_two_rows_share_one() -> None:
    rows = [row(float(t), 1.0, 1) for t in range(1, 3700)]
    for now in (3601.0, 3605.0, 3611.0, 3700.0, 4300.0):  # compactions at odd moments
        rows = history.coarsen(rows, now)
    buckets = [math.floor((r.t - 1e-9) / r.span) for r in rows if r.span > 1]
    assert len(buckets) == len(set(buckets))
    assert sum(r.span for r in rows) == pytest.approx(3699.0)  # every second counted once


def test_peaks_name_the_process_that_held_the_most() -> None:
    read = history.parse(lines_of(row(1.0, 10.0, 100, 150.0, 900), row(2.0, 90.0, 800, 5.0, 50)))
    found = history.peaks(read)
    assert found["cpu"].value == 160.0
    assert found["cpu"].process == "proc 1"
    assert found["memory"] == history.Peak(1000, 1.0, "proc 1", 900)
    assert "gpu_memory" not in found


def test_marks_with_huge_labels_control_characters_or_html_are_clipped_and_escaped() -> None:
    label = "<script>alert(1)</script>\n\x1b[31m" + "x" * 5000
    encoded = history.encode_mark(Mark(1.0, label, "<b>" * 100))
    assert "\n" not in encoded.rstrip("\n")
    (read,) = history.parse([lines_of()[0], encoded]).marks
    assert len(read.label) <= history.LABEL_MAX
    assert "\x1b" not in read.label
    picture = plot.svg(history.parse([*lines_of(row(0.0, 1.0, 1), row(2.0, 1.0, 1)), encoded]))
    tree = ElementTree.fromstring(picture)  # well-formed: nothing from the label became markup
    assert not list(tree.iter(f"{SVG}script"))
    (mark,) = (g for g in tree.iter(f"{SVG}g") if g.get("class") == "nbm-mark")
    assert len(mark.findtext(f"{SVG}text", "")) <= plot.MARK_LABEL
    assert "<script>" in mark.findtext(f"{SVG}title", "")  # shown as text, in full up to the clip


def test_the_plot_has_one_series_per_process_per_panel_and_the_marks_where_they_were_made() -> None:
    rows = [row(float(t), 10.0 * t, 2**20 * t, 5.0, 2**20) for t in range(0, 101)]
    read = history.parse(lines_of(*rows, marks=(Mark(25.0, "eval"), Mark(75.0, "save"))))
    tree = ElementTree.fromstring(plot.svg(read, width=720))
    series = [p for p in tree.iter(f"{SVG}path") if p.get("class") == "nbm-series"]
    assert sorted(p.get("data-proc", "") for p in series) == ["0", "0", "1", "1"]  # CPU and memory
    marks = {
        g.findtext(f"{SVG}text", ""): float(line.get("x1", "nan"))
        for g in tree.iter(f"{SVG}g")
        if g.get("class") == "nbm-mark"
        for line in g.iter(f"{SVG}line")
    }
    left, inner = 64, 720 - 64 - 12
    assert marks["eval"] == pytest.approx(left + inner * 0.25, abs=1)
    assert marks["save"] == pytest.approx(left + inner * 0.75, abs=1)


def test_a_week_of_sixteen_processes_draws_at_most_one_column_per_two_pixels() -> None:
    rows = [
        Row(float(t), 600.0, {n: Reading(50.0, 2**30, None, None) for n in range(16)})
        for t in range(600, 7 * 86400, 600)
    ]
    read = history.History(RUN, 0.0, rows=rows)
    tree = ElementTree.fromstring(plot.svg(read, width=720))
    (first, *_) = (p for p in tree.iter(f"{SVG}path") if p.get("class") == "nbm-series")
    assert first.get("d", "").count("L") <= 2 * (720 - 76) // 2 + 2


def test_an_empty_history_draws_a_plot_that_says_so() -> None:
    assert "no usage recorded yet" in plot.svg(history.History(RUN, 0.0))


def test_a_group_combines_its_members_named_by_rank() -> None:
    a = history.parse(lines_of(row(1.0, 10.0, 100)))
    b = history.parse(lines_of(row(1.5, 20.0, 200)))
    b.start = 1000.3  # its row at 1.8 s on a's clock
    both = history.combine([("rank 0", a), ("rank 1", b)])
    names = sorted(p.name for p in both.processes.values())
    assert names == ["rank 0 proc 0", "rank 0 proc 1", "rank 1 proc 0", "rank 1 proc 1"]
    assert len(both.rows) == 1  # sampled within a second of each other: one moment
    assert sum(r.cpu for r in both.rows[0].processes.values()) == 30.0


# -- the recorder, on an injected clock ---------------------------------------------------


def sample(cpu: float, rss: int, pid: int = 4242) -> Usage:
    each = (ProcessUsage(pid, 1.0, cpu, rss, rss, None),)
    return Usage(cpu, rss, rss, 1, (GpuUsage(0, "H100", 50.0, 2**30, 2**34, None),), None, each)


def test_the_recorder_flushes_every_few_seconds_and_compacts_after_an_hour(repo: Repo) -> None:
    kept = RunHistory(repo, RUN, "long", "node-a", 1000.0, 0.0)
    kept.mark("start", None, 0.0, by="nbmonitor")
    now = 0.0
    for second in range(1, 3601 + int(COMPACT_EVERY) + 10):
        now = float(second)
        kept.add(sample(float(second % 100), 2**20 + second), now, 4242, "main", lambda *_: "?")
        kept.flush(now)
        if second == 3:
            assert repo.read_usage(RUN).rows[-1].t == 1.0  # written at the first flush, then every 5 s
    read = repo.read_usage(RUN)
    assert read.processes[0].name == "main"
    assert read.gpu_names == {0: "H100"}
    assert [m.label for m in read.marks] == ["start"]
    coarse = [r for r in read.rows if r.span > 1]
    assert coarse, "an hour in, the oldest rows were merged"
    assert all(r.span == 30.0 for r in coarse)
    assert max(r.processes[0].peak_cpu for r in coarse) == 99.0  # the peaks survive merging
    assert read.rows[-1].t >= now - 5


def test_a_history_that_cannot_be_written_keeps_its_rows_for_the_next_try(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the repo should be")
    kept = RunHistory(Repo(blocked / "repo"), RUN, "x", "h", 0.0, 0.0)
    kept.add(sample(1.0, 100), 1.0, 4242, "main", lambda *_: "?")
    with caplog.at_level(logging.WARNING, logger="nbmonitor"):
        kept.flush(1.0, force=True)
        kept.flush(1.5, force=True)  # the same cause: said once
    assert kept.trouble.cause
    (said,) = [r.getMessage() for r in caplog.records if "usage history" in r.getMessage()]
    assert f"cannot write the usage history of run {RUN[:8]}" in said
    later = Repo(tmp_path / "repo")
    kept.repo = later
    kept.flush(2.0, force=True)
    assert kept.trouble.cause is None
    assert len(later.read_usage(RUN).rows) == 1


def test_rows_waiting_for_an_unwritable_repo_grow_coarser_with_age_not_without_bound(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the repo should be")
    kept = RunHistory(Repo(blocked / "repo"), RUN, "x", "h", 0.0, 0.0)
    hours = 3
    for second in range(1, hours * 3600 + 1):
        kept.add(sample(float(second % 97), 100 + second), float(second), 4242, "main", lambda *_: "?")
        if second % 60 == 0:
            kept.flush(float(second), force=True)  # fails: the rows wait
    assert kept.trouble.cause
    # Merged whenever more than PENDING_MAX wait: the older hours in 30-second rows.
    waiting = kept._pending  # what waits in memory
    assert len(waiting) <= PENDING_MAX
    assert sum('"d":30.0' in line for line in waiting) >= 2 * 110
    later = Repo(tmp_path / "repo")
    kept.repo = later
    kept.flush(hours * 3600 + 1.0, force=True)
    read = later.read_usage(RUN)
    assert read.skipped == 0
    assert read.rows[0].span == 30.0
    assert read.rows[-1].span == 1.0
    assert sum(r.span for r in read.rows) == pytest.approx(hours * 3600, abs=60)
    assert max(r.processes[0].memory for r in read.rows) >= 100 + hours * 3600 - 3600  # peaks kept


def test_reading_a_damaged_history_warns_once_naming_it(repo: Repo, caplog: pytest.LogCaptureFixture) -> None:
    repo.ensure()
    repo.usage_dir.mkdir()
    path = repo.usage_path(RUN)
    path.write_text("".join(lines_of(row(1.0, 1.0, 1))) + '{"t": 2, "p": {"0": [1, 2, 3, 4')
    with caplog.at_level(logging.WARNING, logger="nbmonitor.repo"):
        read = repo.read_usage(RUN)
    assert len(read.rows) == 1
    assert str(path) in caplog.text
    assert "1 bad line" in caplog.text
    path.write_text("garbage\n")
    with pytest.raises(CorruptRecordError, match=str(path)):
        repo.read_usage(RUN)


# -- real process trees -------------------------------------------------------------------

TREE = """
import os, subprocess, sys, time
import nbmonitor

burn = "import time\\nwhile True: pass"
grow = (
    "import time\\nx = []\\nfor i in range(60):\\n    x.append(bytearray(2**20)); time.sleep(0.02)\\n"
    "time.sleep(600)"
)
with nbmonitor.watch(eta=30, name="tree") as run:
    children = [
        subprocess.Popen([sys.executable, "-c", burn]),
        subprocess.Popen([sys.executable, "-c", grow]),
    ]
    print("pids", os.getpid(), children[0].pid, children[1].pid, flush=True)
    run.mark("children started", 2)
    while True:
        time.sleep(0.2)
        run.report_progress()
"""


def test_a_tree_is_recorded_per_process_and_a_kill_loses_only_the_last_seconds(
    tmp_path: Path, repo: Repo
) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    env = child_env(repo.path) | {"NBMONITOR_USAGE_FLUSH": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        assert proc.stdout is not None
        _, *pids = proc.stdout.readline().split()
        main_pid, burner, grower = map(int, pids)
        children = [burner, grower]

        def steady() -> history.History | None:
            runs = repo.runs()
            if not runs or not repo.usage_path(runs[0].id).exists():
                return None
            read = repo.read_usage(runs[0].id)
            last = read.rows[-1] if read.rows else None
            grown = last is not None and any(r.rss > 60 * 2**20 for r in last.processes.values())
            return read if grown and len(read.rows) >= 4 else None

        read = wait_until(steady, 30, "a few seconds of history with the grower grown")
        # psutil's own readings of the same processes, now: the memory is steady by then.
        truth = {pid: psutil.Process(pid).memory_info().rss for pid in (main_pid, burner, grower)}
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(10)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    run = repo.runs()[0]
    read = repo.read_usage(run.id)
    by_pid = {info.pid: info for info in read.processes.values()}
    assert by_pid[main_pid].name == "main"
    assert by_pid[burner].name == "python -c"
    last = read.rows[-1]
    grow = last.processes[by_pid[grower].number]
    each = {p.pid: p for p in plot.summary(read)}
    # A core's worth where it can get one; the grower mostly sleeps. (Machines are shared: a
    # busy neighbour takes its share of the burner's core, so no fixed figure.)
    assert each[burner].cpu_peak > 25
    assert each[burner].cpu_mean > 5 * each[grower].cpu_mean
    assert grow.rss == pytest.approx(truth[grower], rel=0.1)
    stacked = sum(r.rss for r in last.processes.values())
    assert stacked == pytest.approx(sum(truth.values()), rel=0.1)
    assert [m.text for m in read.marks if m.by == "user"] == ["children started 2"]
    # Killed: nothing ran at exit, yet the history reaches within seconds of the kill.
    elapsed = killed_at - (run.started_at - time.time() + time.monotonic())
    assert read.rows[-1].t >= elapsed - 3
    tree = ElementTree.fromstring(plot.svg(read))
    procs = {p.get("data-proc") for p in tree.iter(f"{SVG}path") if p.get("class") == "nbm-series"}
    assert len(procs) == 3


def test_the_command_line_tables_a_run_and_writes_a_page_that_opens_offline(
    tmp_path: Path, repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.ensure()
    repo.usage_dir.mkdir()
    run_id = "fedcba9876543210fedcba9876543210"
    repo.write_run(records.sample(id=run_id, name="cli <b>run</b>", status="finished", ended_at=2020.0))
    body = lines_of(row(1.0, 10.0, 2**20, 90.0, 2**30), row(2.0, 30.0, 2**21, 80.0, 2**29))
    repo.usage_path(run_id).write_text("".join(body).replace(RUN, run_id))
    assert main(["--repo", str(repo.path), "usage", run_id[:8]]) == 0
    out = capsys.readouterr().out
    assert "peak CPU 110% (most: proc 1, 90%)" in out
    assert "proc 1" in out
    assert "1.0 GB" in out
    page = tmp_path / "usage.html"
    assert main(["--repo", str(repo.path), "usage", "cli <b>run</b>", "--html", str(page)]) == 0
    text = page.read_text()
    assert "http" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "cli &lt;b&gt;run&lt;/b&gt;" in text
    assert "<b>run</b>" not in text
    assert main(["--repo", str(repo.path), "usage", "nothing-like-it"]) == 1
    assert "no run or group 'nothing-like-it'" in capsys.readouterr().err


def test_a_run_made_with_usage_off_records_marks_only(repo: Repo) -> None:
    import nbmonitor

    with nbmonitor.watch(name="quiet", repo=repo, usage=False) as run:
        nbmonitor.mark("here")
        assert run.usage_history is None
    read = repo.read_usage(run.id)
    assert read.rows == []
    assert [m.label for m in read.marks] == ["start", "here", "finished"]
    with pytest.raises(TypeError, match="label must be a string"):
        nbmonitor.mark(3)  # type: ignore[arg-type]  # what the test is about
    with pytest.raises(TypeError, match="value must be a number"):
        run.mark("x", [1])  # type: ignore[arg-type]  # what the test is about
    json.dumps([m.text for m in read.marks])


def test_coarsening_the_file_parses_only_what_it_merges_and_agrees_with_coarsening_rows() -> None:
    rows = [row(float(t), float(t % 7), 1000 + t, 3.0, 2000) for t in range(1, 7300)]
    lines = lines_of(*rows, marks=(Mark(5.0, "eval"),))
    lines.insert(3, "torn line without its end")  # dropped: no reader could use it
    text = history.coarsen_lines(lines, 7300.0)
    read = history.parse(text)
    as_written = [history.encode_row(r) for r in history.coarsen(rows, 7300.0)]  # CPU kept to 0.1 %
    assert [history.encode_row(r) for r in read.rows] == as_written
    assert read.skipped == 0
    assert [m.label for m in read.marks] == ["eval"]
    assert sorted(read.processes) == [0, 1]
    assert history.coarsen_lines(text, 7300.0) == text  # nothing more to merge
