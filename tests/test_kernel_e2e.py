"""%%watch in real Jupyter kernels (jupyter_client, nbclient): what the front end receives."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.repo import Repo
from nbmonitor.widget import RUN_MIME, USAGE_MIME

from .helpers import ROOT, Proc, wait_until
from .kernels import WIDGET_MIME, Kernel, displays, plots, run_views, snapshots

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def kernel_repo(tmp_path: Path) -> Path:
    return tmp_path / "kernel-repo"


@pytest.fixture
def kernel(kernel_repo: Path) -> Iterator[Kernel]:
    k = Kernel(kernel_repo)
    try:
        reply, _ = k.run("%load_ext nbmonitor")
        assert reply["status"] == "ok"
        yield k
    finally:
        k.stop()


def test_a_stuck_cell_turns_stalled_and_is_notified_once_with_a_watcher_watching_too(
    kernel: Kernel, kernel_repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "notified.log"
    NotifierStore(Repo(kernel_repo)).add(NotifierConfig.create("logger", {"file": str(log)}))
    watcher = Proc.watcher(kernel_repo, "--interval", "0.2")
    try:
        watcher.wait_for("watching")
        code = (
            "%%watch --eta 1 --name stuck\n"
            "import os\nfrom tests.helpers import wait_until\n"
            f"log = {str(log)!r}\n"
            "wait_until(lambda: os.path.exists(log) and 'STALLED' in open(log).read(), 30, 'the stall')\n"
            "from nbmonitor.magics import _agents\n"
            "(shown,) = _agents[get_ipython()].cells.values()\n"
            "wait_until(lambda: shown.display._last['state'] == 'stalled', 10, 'the badge')"
        )
        reply, messages = kernel.run(code)
        assert reply["status"] == "ok"
        wait_until(lambda: log.exists() and "RECOVERED" in log.read_text(), 15, "the recovery notification")
        assert watcher.popen.poll() is None, "the watcher watched the same repo all along"
    finally:
        watcher.stop()
    (record,) = Repo(kernel_repo).runs()
    claim = json.loads(
        (Repo(kernel_repo).events_dir / record.id / f"stalled-{record.progress}.json").read_text()
    )
    assert claim["seen_by"].split()[0] in ("kernel", "watcher")
    lines = log.read_text().splitlines()
    assert len([line for line in lines if "STALLED" in line]) == 1  # sent once between the two
    assert len([line for line in lines if "RECOVERED" in line]) == 1
    states = [shown["state"] for shown in run_views(messages)]
    assert states[0] == "running"
    assert "late" in states
    assert "stalled" in states
    (final,) = snapshots(messages)
    assert 'data-state="finished"' in final["text/html"]
    assert WIDGET_MIME not in final
    # What happened stays in the saved output: the stall, its step and its length, then the end.
    (incident,) = final[RUN_MIME]["story"]["incidents"]
    assert re.fullmatch(r"stalled [\d.]+ s at step 0, then finished", incident), incident
    assert f"\n{incident}\n" in final["text/plain"] + "\n"
    assert 'class="nbm-incidents"' in final["text/html"]


def test_an_exception_fails_the_run_in_the_display_and_the_repo(kernel: Kernel, kernel_repo: Path) -> None:
    reply, messages = kernel.run("%%watch --name broken\nraise ValueError('shape mismatch')")
    assert (reply["status"], reply["ename"], reply["evalue"]) == ("error", "ValueError", "shape mismatch")
    (final,) = snapshots(messages)
    assert 'data-state="failed"' in final["text/html"]
    assert "ValueError: shape mismatch" in final["text/plain"]
    (record,) = Repo(kernel_repo).runs()
    assert record.status == "failed"
    assert record.origin.kind == "notebook"
    assert record.origin.kernel_id
    claim = json.loads((Repo(kernel_repo).events_dir / record.id / "end.json").read_text())
    assert (claim["event"], claim["seen_by"].split()[0]) == ("failed", "kernel")


def test_runs_name_the_cell_by_the_number_its_prompt_shows(kernel: Kernel, kernel_repo: Path) -> None:
    # Seen: "cell 10" for the cell shown as [9] (IPython 9 counts the next cell while one runs).
    kernel.run("x = 1")
    _, watched = kernel.run("%%watch\nx += 1")
    _, blocked = kernel.run("import nbmonitor\nwith nbmonitor.watch(name='block'):\n    x += 1")
    prompts = [m["content"]["execution_count"] for m in watched + blocked if m["msg_type"] == "execute_input"]
    by_name = {r.name: r for r in Repo(kernel_repo).runs()}
    assert by_name[f"cell {prompts[0]}"].origin.cell == prompts[0]
    assert by_name["block"].origin.cell == prompts[1]
    assert by_name["block"].origin.describe().endswith(f"cell {prompts[1]}")


def test_widget_traffic_stays_under_ten_messages_a_second_in_a_million_iteration_loop(kernel: Kernel) -> None:
    code = (
        "%%watch --eta 5 --name million\n"
        "import nbmonitor\n"
        "for i in nbmonitor.track(range(1_000_000)):\n"
        "    for _ in range(100):\n"
        "        pass"
    )
    started = time.monotonic()
    reply, messages = kernel.run(code)
    seconds = time.monotonic() - started
    assert reply["status"] == "ok"
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert seconds > 1.0, "the loop was too short to measure"
    assert len(run_views(messages)) >= 3, "the display never updated"
    assert len(updates) <= 10 * seconds + 1  # the final snapshot too
    (final,) = snapshots(messages)
    assert "· 1000000/1000000 (100%) ·" in final["text/plain"]


def test_a_saved_notebook_shows_the_final_snapshots_without_widgets(
    tmp_path: Path, kernel_repo: Path
) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext nbmonitor"),
        nbformat.v4.new_code_cell(
            "%%watch --eta 2 --name ok --total 3\nimport nbmonitor\nlist(nbmonitor.track(range(3)))"
        ),
        nbformat.v4.new_code_cell("%%watch --name <b>bad</b>\n1 / 0"),
    ]
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(ROOT)}}
    )
    client.km = KernelManager(kernel_name="python3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBMONITOR_REPO", str(kernel_repo))
        client.execute()
    saved = tmp_path / "saved.ipynb"
    nbformat.write(nb, saved)
    again = nbformat.read(saved, as_version=4)
    ok, bad = (c.outputs for c in again.cells[1:])
    ok_display = next(o for o in ok if o.output_type == "display_data")
    assert WIDGET_MIME not in ok_display.data
    assert 'data-state="finished"' in ok_display.data["text/html"]
    assert "nbmonitor · ok · finished · 3/3 (100%) · in " in ok_display.data["text/plain"]
    assert ok_display.data[RUN_MIME]["ended"]
    assert next(o for o in ok if o.output_type == "execute_result").data["text/plain"] == "[0, 1, 2]"
    bad_display = next(o for o in bad if o.output_type == "display_data")
    assert 'data-state="failed"' in bad_display.data["text/html"]
    assert "&lt;b&gt;bad&lt;/b&gt;" in bad_display.data["text/html"]
    assert any(o.output_type == "error" and o.ename == "ZeroDivisionError" for o in bad)


def test_a_watched_cell_shows_its_whole_usage_plot_when_it_ends(kernel: Kernel) -> None:
    code = (
        "%%watch --eta 5 --name plotted\n"
        "import subprocess, sys, time, nbmonitor\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3)'])\n"
        "nbmonitor.mark('epoch', 1)\n"
        "for _ in nbmonitor.track(range(30)):\n"
        "    time.sleep(0.1)\n"
        "child.wait()"
    )
    reply, messages = kernel.run(code)
    assert reply["status"] == "ok"
    (drawn,) = plots(messages)  # the whole run, under its display, once it ended
    final = ElementTree.fromstring(drawn)
    series = {p.get("data-proc") for p in final.iter(f"{SVG}path") if p.get("class") == "nbm-series"}
    assert len(series) == 2  # the kernel and its child
    keys = [k.findtext(f"{SVG}title", "") for k in final.iter(f"{SVG}g") if k.get("class") == "nbm-key"]
    assert keys == ["kernel", "python -c"]
    marks = [m.findtext(f"{SVG}title", "") for m in final.iter(f"{SVG}g") if m.get("class") == "nbm-mark"]
    assert any(m.startswith("epoch 1 at") for m in marks)
    assert any(m.startswith("finished at") for m in marks)
    bundles = [d for d in displays(messages, "display_data") if "image/svg+xml" in d]
    assert "peak memory" in bundles[-1]["text/plain"]
    # JupyterLab's interactive plot: the picture, with its columns beside it for the read-out.
    assert set(bundles[-1][USAGE_MIME]) == {"peaks", "skipped", "columns"}
    columns = json.loads(bundles[-1][USAGE_MIME]["columns"])
    assert set(columns["cpu"]) == series
    assert len(columns["t"]) == len(columns["x"]) == len(columns["memory"]["1"]) > 1
    assert bundles[-1][USAGE_MIME]["peaks"] == bundles[-1]["text/plain"].splitlines()


def test_a_cell_printing_100000_lines_keeps_its_output_whole_and_its_tail_has_the_last(
    kernel: Kernel, kernel_repo: Path
) -> None:
    printing = "import logging\nfor i in range(100_000):\n    print('line', i)\nlogging.warning('end %d', i)"
    expected = "".join(f"line {i}\n" for i in range(100_000))

    def output(messages: list[dict[str, Any]], name: str) -> str:
        streams = [m["content"] for m in messages if m["msg_type"] == "stream"]
        return "".join(s["text"] for s in streams if s["name"] == name)

    _, plain = kernel.run(printing, timeout=120)
    reply, watched = kernel.run(f"%%watch --name chatty-cell --no-usage\n{printing}", timeout=120)
    assert reply["status"] == "ok"
    assert output(watched, "stdout") == output(plain, "stdout") == expected  # the output area, unchanged
    assert output(watched, "stderr") == output(plain, "stderr")
    reply, _ = kernel.run("1 + 1", timeout=10)  # the kernel answers at once
    assert reply["status"] == "ok"
    (record,) = [r for r in Repo(kernel_repo).runs() if r.name == "chatty-cell"]
    lines, bad = Repo(kernel_repo).read_log(record.id)
    assert bad == 0
    assert lines[-1].text == "end 99999"
    assert lines[-1].level == "WARNING"
    assert [x.text for x in lines[-4:-1]] == ["line 99997", "line 99998", "line 99999"]
