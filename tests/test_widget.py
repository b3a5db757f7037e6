"""What the run display shows: pure rendering, escaping, and the refresh rate limit."""

from __future__ import annotations

from typing import Any

import pytest

from nbmonitor.usage import GpuUsage, History, Usage
from nbmonitor.widget import COLOURS, MAX_RATE, View, render_html, render_text

from .helpers import ipython_shell


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
