"""What the run display shows: pure rendering, escaping, and the refresh rate limit."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree

import pytest

from nbmonitor.usage import GpuUsage, History, Usage
from nbmonitor.widget import COLOURS, MAX_RATE, RUN_MIME, MemberView, View, payload, render_html, render_text

from .helpers import ipython_shell

SVG = "{http://www.w3.org/2000/svg}"


def view(**changes: Any) -> View:
    base: dict[str, Any] = {
        "name": "train",
        "state": "running",
        "step": 40,
        "total": 100,
        "elapsed": 65.0,
        "since_progress": 0.5,
        "eta": 3.0,
        "grace": 2.0,
        "rate": 12.5,
    }
    return View(**(base | changes))


@pytest.mark.parametrize("state", sorted(COLOURS))
def test_the_badge_names_the_state_in_its_colour(state: str) -> None:
    html = render_html(view(state=state))
    assert f'data-state="{state}"' in html
    assert f"background:{COLOURS[state]}" in html


def test_user_text_is_shown_as_text_never_as_html() -> None:
    evil = '<img src=x onerror="alert(1)">'
    html = render_html(view(name=evil, error=f"ValueError: {evil}", note=evil))
    assert "<img" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_one_line_while_it_runs_with_a_human_rate_elapsed_and_time_left() -> None:
    text = render_text(view(rate=2580.0, total=100_000, step=40_000))
    assert text == "nbmonitor · train · running · 40000/100000 (40%) · 2.6k it/s · 1 min 5 s, 23 s left"
    assert "\n" not in text
    assert "3.2 s/it" in render_text(view(rate=1 / 3.2))
    assert "width:40.0%" in render_html(view())
    shown = payload(view())
    assert (shown["progress"], shown["rate"], shown["time"], shown["share"]) == (
        "40/100 (40%)",
        "12 it/s",
        "1 min 5 s, 4.8 s left",
        0.4,
    )


def test_the_html_is_one_line_a_details_summary_with_the_story_under_it() -> None:
    html = render_html(view(note="disk almost full"))
    root = ElementTree.fromstring(html)
    details = root.find("details")
    assert details is not None
    assert details.get("open") is None  # closed by default
    summary = details.find("summary")
    assert summary is not None
    assert "white-space:nowrap" in (summary.get("style") or "")
    assert "last progress" not in ElementTree.tostring(summary, encoding="unicode")
    story = ElementTree.tostring(details, encoding="unicode")
    assert "last progress 0.5 s ago, promised within 3.0 s + 2.0 s grace" in story
    assert "disk almost full" in story


def test_an_unknown_total_shows_count_and_rate_without_a_bar() -> None:
    html = render_html(view(total=None))
    assert "nbm-bar" not in html
    assert "· 40 · 12 it/s" in render_text(view(total=None))
    assert payload(view(total=None))["share"] is None


def test_late_and_stalled_say_so_in_the_line_itself() -> None:
    text = render_text(view(state="stalled", since_progress=12.0))
    assert text.endswith("no progress for 12 s, promised 3.0 s")
    line = ElementTree.fromstring(render_html(view(state="late", since_progress=4.0))).find("details/summary")
    assert line is not None
    late = [e for e in line.iter() if e.get("class") == "nbm-late"]
    assert late[0].text == "no progress for 4.0 s, promised 3.0 s"
    assert COLOURS["late"] in (late[0].get("style") or "")
    assert payload(view())["late"] == ""
    assert (
        payload(view(state="stalled", since_progress=12.0))["note"] == "no progress for 12 s, promised 3.0 s"
    )


def test_no_eta_says_the_run_cannot_stall() -> None:
    assert "no ETA promised, so it cannot stall" in render_html(view(eta=None))


def test_usage_chips_in_the_line_and_readings_in_the_story() -> None:
    history = History()
    gpu = GpuUsage(0, "H100", 87.0, 10 * 2**30, 80 * 2**30, 3 * 2**30)
    for cpu in (10.0, 50.0, 180.0):
        history.add(Usage(cpu, 2**30, 900 * 2**20, 3, (gpu,)))
    assert payload(view(usage=history))["chips"] == [["CPU", "180%"], ["mem", "1.0 GB"], ["GPU", "87%"]]
    assert render_text(view(usage=history)).endswith(" · CPU 180% · mem 1.0 GB · GPU 87%")
    told = payload(view(usage=history))["story"]["usage"]
    assert told[0] == "CPU 180% · memory 1.0 GB RSS (900.0 MB PSS) · 3 processes"
    assert told[1] == "GPU0 H100: 87% busy · 10.0 GB of 80.0 GB, this run 3.0 GB"
    assert not set("▁▂▃▄▅▆▇█") & set(render_html(view(usage=history)))  # no block characters


def test_without_a_gpu_there_is_no_gpu_chip_and_no_gpu_words() -> None:
    history = History()
    history.add(Usage(5.0, 2**20, None, 1, (), "no GPU"))
    assert [label for label, _ in payload(view(usage=history))["chips"]] == ["CPU", "mem"]
    assert "GPU" not in render_html(view(usage=history))
    ended = render_text(view(state="finished", ended=True, usage=history))
    assert "GPU" not in ended


def test_the_final_snapshot_tells_what_happened_and_has_no_live_parts() -> None:
    history = History()
    history.add(Usage(150.0, 2 * 2**30, None, 1, (), "no GPU"))
    history.add(Usage(20.0, 2**30, None, 1, (), "no GPU"))
    incidents = ("stalled 12 s at step 1, recovered",)
    final = view(state="finished", ended=True, usage=history, step=100, incidents=incidents)
    text = render_text(final)
    assert text.splitlines() == [
        "nbmonitor · train · finished · 100/100 (100%) · in 1 min 5 s · CPU 150% peak · mem 2.0 GB peak",
        "stalled 12 s at step 1, recovered",
        "peak CPU 150% · peak memory 2.0 GB",
    ]
    html = render_html(final)
    for live in ("last progress", "it/s", "watcher"):
        assert live not in html
    (shown,) = [e for e in ElementTree.fromstring(html).iter() if e.get("class") == "nbm-incidents"]
    assert shown.text == "stalled 12 s at step 1, recovered"  # outside the details: always seen


def test_the_watcher_line_says_what_happens_if_the_kernel_dies() -> None:
    assert "notifications stop if this kernel dies" in render_html(view())
    assert "watcher running (pid 42)" in render_html(view(watcher="pid 42"))
    far = render_html(view(watcher="https://laptop:8888/"))  # a kernel on a far host
    assert "reports to https://laptop:8888/: the watcher there tells of this run" in far


def test_a_group_shows_a_strip_of_member_bars_and_names_the_straggler() -> None:
    members = (
        MemberView("rank 0, pid 10", 40, "running"),
        MemberView("rank 1, pid 11", 12, "running", straggler=True),
        MemberView("rank 2, pid 12", 40, "ended", note="exit 0"),
    )
    shown = payload(view(members=members))
    assert shown["straggler"] == "rank 1"
    assert shown["note"] == "slowest: rank 1"  # what the line ends with, worded here for the lab too
    assert [(m["share"], m["straggler"]) for m in shown["members"]] == [
        (0.4, False),
        (0.12, True),
        (0.4, False),
    ]
    assert shown["members"][1]["colour"] == COLOURS["stalled"]
    strip = [
        e
        for e in ElementTree.fromstring(render_html(view(members=members))).iter()
        if e.get("class") == "nbm-member"
    ]
    assert [e.get("data-straggler") for e in strip] == ["0", "1", "0"]
    assert "slowest: rank 1" in render_html(view(members=members))
    assert shown["story"]["members"][2] == "rank 2, pid 12: step 40 · ended: exit 0"


def test_refreshes_are_rate_limited_skip_unchanged_content_and_say_the_kernel_is_alive() -> None:
    ipython_shell()  # display() needs a shell
    from IPython.utils.capture import capture_output

    from nbmonitor.widget import ALIVE_EVERY, RunDisplay

    with capture_output() as shown:
        display = RunDisplay(view(), mode="live", clock=lambda: 1000.0)
        sent = [display.refresh(view(step=i), now=i / 100) for i in range(100)]  # 100 changes in one second
        assert 1 <= sum(sent) <= MAX_RATE
        assert display.refresh(view(step=99), now=2.0)
        assert not display.refresh(view(step=99), now=2.0 + ALIVE_EVERY / 2)  # unchanged: nothing sent
        assert display.refresh(view(step=99), now=2.0 + ALIVE_EVERY)  # ... until it is time to say "alive"
        assert display.refresh(view(step=99, state="stalled"), now=8.0)  # a new state shows at once
        assert not display.refresh(view(step=99, state="running"), now=8.05)  # but never over 10 a second
        # The writer may see the run ended before the cell's end shows it: that is finish()'s, once.
        assert not display.refresh(view(state="finished", ended=True), now=20.0)
        display.finish(view(state="finished", ended=True))
        assert not display.refresh(view(step=1000), now=10.0)
    first, *updates = shown.outputs
    assert all(u.update and u.transient["display_id"] == first.transient["display_id"] for u in updates)
    assert len(updates) == sum(sent) + 4
    last = max(i for i, was_sent in enumerate(sent) if was_sent)
    assert updates[sum(sent) - 1].data[RUN_MIME]["step"] == last
    final = updates[-1].data
    assert set(final) == {RUN_MIME, "text/html", "text/plain"}
    assert final[RUN_MIME]["ended"]
    assert final[RUN_MIME]["sent_at"] == 1000.0
    assert final["text/html"] == render_html(view(state="finished", ended=True))


def test_a_stalled_cell_shows_where_it_is_stuck_as_text() -> None:
    stuck = "<lambda> (<ipython-input-3>:2) ← wait_for_batch (data.py:42)"
    shown = render_html(view(state="stalled", stuck=stuck))
    assert 'class="nbm-stuck"' in shown
    assert "stuck in &lt;lambda&gt; (&lt;ipython-input-3&gt;:2) ← wait_for_batch (data.py:42)" in shown
    assert "<lambda>" not in shown
    assert f"stuck in {stuck}" in render_text(view(state="stalled", stuck=stuck))
    assert "stuck in" not in render_text(view())


def usage_history(seconds: int, *, skipped: int = 0) -> Any:
    """Two processes over ``seconds`` one-second rows, a mark, and ``skipped`` damaged lines."""
    from nbmonitor import history as h

    read = h.History("0" * 32, 0.0, name="train", skipped=skipped)
    read.processes = {0: h.ProcessInfo(0, 100, "kernel", 0.0), 1: h.ProcessInfo(1, 101, "python -c", 0.0)}
    read.rows = [
        h.Row(float(t), 1.0, {0: h.Reading(90.0, 2**30, None, None), 1: h.Reading(t, 2**28, None, None)})
        for t in range(1, seconds + 1)
    ]
    read.marks = [h.Mark(2.0, "epoch", 1)]
    return read


def test_the_usage_plot_is_one_bundle_interactive_in_lab_a_picture_elsewhere_and_text() -> None:
    ipython_shell()  # display() needs a shell
    from IPython.utils.capture import capture_output

    from nbmonitor import plot
    from nbmonitor.widget import USAGE_MIME, UsagePlot

    with capture_output() as shown:
        assert UsagePlot("train").show(usage_history(5, skipped=2))
    (output,) = shown.outputs
    live = output.data
    assert set(live) == {USAGE_MIME, "image/svg+xml", "text/plain"}
    assert set(live[USAGE_MIME]) == {"peaks", "skipped", "columns"}  # the plot itself once, as the picture
    assert live[USAGE_MIME]["peaks"] == plot.peak_lines(usage_history(5))
    assert live[USAGE_MIME]["skipped"] == 2
    assert live["text/plain"] == "\n".join(plot.peak_lines(usage_history(5)))
    # Lab draws the picture with its columns beside it: what the server's plot embeds, as text.
    picture = live["image/svg+xml"]
    assert picture == plot.svg(usage_history(5), 640, title="train")
    assert ElementTree.fromstring(picture).find(f"{SVG}metadata") is None
    embedded = plot.svg(usage_history(5), 640, title="train", data=True)
    assert live[USAGE_MIME]["columns"] == ElementTree.fromstring(embedded).findtext(f"{SVG}metadata")
    columns = json.loads(live[USAGE_MIME]["columns"])
    assert columns["t"] == [1, 2, 3, 4, 5]
    assert columns["cpu"] == {"0": [90.0] * 5, "1": [1.0, 2.0, 3.0, 4.0, 5.0]}


def test_a_run_that_recorded_no_usage_shows_no_plot() -> None:
    ipython_shell()
    from IPython.utils.capture import capture_output

    from nbmonitor.widget import UsagePlot

    with capture_output() as shown:
        assert not UsagePlot("train").show(usage_history(0))
        assert not UsagePlot("train").show(None)
    assert shown.outputs == []


def test_incidents_tell_each_stall_once_it_is_over_and_the_one_going_on() -> None:
    from nbmonitor.views import Incidents

    told = Incidents()
    for state, step, since, now in [
        ("running", 1, 0.0, 100.0),
        ("late", 1, 4.0, 104.0),  # late alone is no incident
        ("running", 2, 0.0, 105.0),
        ("stalled", 2, 6.0, 111.0),  # no progress since 105
        ("stalled", 2, 9.0, 114.0),
    ]:
        told.note(state, step, since, now)
    assert told.now(117.0) == ("stalled at step 2 for 12 s",)
    told.note("running", 3, 0.0, 117.0)
    told.note("stalled", 3, 5.0, 130.0)
    told.note("failed", 3, 0.0, 131.0)
    assert told.now(131.0) == ("stalled 12 s at step 2, recovered", "stalled 6.0 s at step 3, then failed")


@pytest.mark.parametrize(
    ("per_second", "shown"),
    [
        (2580.0, "2.6k it/s"),
        (25_800.0, "26k it/s"),
        (1.2e6, "1.2M it/s"),
        (3.44, "3.4 it/s"),
        (258.0, "258 it/s"),
        (1 / 3.2, "3.2 s/it"),
        (1 / 125, "2 min 5 s/it"),
        (0.0, "0 it/s"),
    ],
)
def test_rates_read_as_people_read_them(per_second: float, shown: str) -> None:
    from nbmonitor._format import rate

    assert rate(per_second) == shown
