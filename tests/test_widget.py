"""What the run display shows: pure rendering, escaping, and the refresh rate limit."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree

import pytest

from nbmonitor.usage import GpuUsage, History, Usage
from nbmonitor.widget import COLOURS, MAX_RATE, View, render_html, render_text

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


def test_progress_rate_elapsed_and_time_left() -> None:
    text = render_text(view())
    assert "step 40/100 (40%)" in text
    assert "12.5/s" in text
    assert "elapsed 1 min 5 s" in text
    assert "about 4.8 s left" in text
    assert "last progress 0.5 s ago, promised within 3.0 s + 2.0 s grace" in text
    assert "width:40.0%" in render_html(view())


def test_an_unknown_total_shows_count_and_rate_without_a_bar() -> None:
    html = render_html(view(total=None))
    assert "width:" not in html
    assert "step 40 · 12.5/s" in render_text(view(total=None))


def test_no_eta_says_the_run_cannot_stall() -> None:
    assert "no ETA promised, so it cannot stall" in render_text(view(eta=None))


def test_usage_lines_show_cpu_memory_and_gpus_as_numbers() -> None:
    history = History()
    gpu = GpuUsage(0, "H100", 87.0, 10 * 2**30, 80 * 2**30, 3 * 2**30)
    for cpu in (10.0, 50.0, 180.0):
        history.add(Usage(cpu, 2**30, 900 * 2**20, 3, (gpu,)))
    text = render_text(view(usage=history))
    assert "CPU 180%" in text
    assert "memory 1.0 GB RSS (900.0 MB PSS)" in text
    assert "3 processes" in text
    assert "GPU0 H100: 87% busy · 10.0 GB of 80.0 GB, this run 3.0 GB" in text
    assert not set("▁▂▃▄▅▆▇█") & set(text)  # block characters render as bars and underscores in Lab


def test_without_a_gpu_it_says_so() -> None:
    history = History()
    history.add(Usage(5.0, 2**20, None, 1, (), "no GPU"))
    assert "no GPU" in render_text(view(usage=history))


def test_the_final_snapshot_shows_peaks_and_no_live_parts() -> None:
    history = History()
    history.add(Usage(150.0, 2 * 2**30, None, 1, (), "no GPU"))
    history.add(Usage(20.0, 2**30, None, 1, (), "no GPU"))
    text = render_text(view(state="finished", ended=True, usage=history, step=100))
    assert "finished" in text
    assert "peak CPU 150% · peak memory 2.0 GB · peak GPU memory no GPU" in text
    assert "last progress" not in text
    assert "/s" not in text


def test_the_watcher_line_says_what_happens_if_the_kernel_dies() -> None:
    assert "notifications stop if this kernel dies" in render_html(view())
    assert "watcher running (pid 42)" in render_html(view(watcher="pid 42"))


def test_refreshes_are_rate_limited_and_skip_unchanged_content() -> None:
    ipython_shell()  # display() needs a shell
    from nbmonitor.widget import RunDisplay

    display = RunDisplay(view(), mode="widget")
    sent = [display.refresh(view(step=i), now=i / 100) for i in range(100)]  # 100 changes in one second
    assert 1 <= sum(sent) <= MAX_RATE
    last = max(i for i, was_sent in enumerate(sent) if was_sent)
    assert display.widget.value == render_html(view(step=last))
    assert display.refresh(view(step=99), now=2.0)
    assert not display.refresh(view(step=99), now=5.0)  # unchanged: nothing sent
    assert display.refresh(view(step=99, state="stalled"), now=5.1)  # a new state shows at once
    assert not display.refresh(view(step=99, state="running"), now=5.15)  # but never over 10 a second
    display.finish(view(state="finished", ended=True))
    assert display.widget is None
    assert not display.refresh(view(step=1000), now=10.0)


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
        usage = UsagePlot("train", live=True)
        assert usage.refresh(usage_history(5, skipped=2), now=10.0)
        assert not usage.refresh(usage_history(6), now=10.5)  # at most once a second
        usage.finish(usage_history(8))
    first, *updates = shown.outputs
    assert first.data == {"text/plain": "usage: measuring..."}
    assert [u.update for u in updates] == [True, True]  # both redraw the same output, by its id
    assert {u.transient["display_id"] for u in updates} == {first.transient["display_id"]}
    live, final = (u.data for u in updates)
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
    assert json.loads(final[USAGE_MIME]["columns"])["t"] == list(range(1, 9))  # the whole run
    assert final[USAGE_MIME]["skipped"] == 0


def test_a_run_that_recorded_no_usage_leaves_an_empty_output() -> None:
    ipython_shell()
    from IPython.utils.capture import capture_output

    from nbmonitor.widget import UsagePlot

    with capture_output() as shown:
        usage = UsagePlot("train", live=True)
        assert not usage.refresh(usage_history(0), now=1.0)
        usage.finish(None)
    assert [o.data for o in shown.outputs] == [{"text/plain": "usage: measuring..."}, {"text/plain": ""}]
