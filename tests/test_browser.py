"""The JupyterLab extension in a real JupyterLab, driven in Debian's Chromium with Playwright.

Needs /usr/bin/chromium (tests/setup-browser.sh installs it where apt-get can);
without it the test is skipped and says why. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import nbformat
import pytest

from nbmonitor import plot as plot_module
from nbmonitor.record import ErrorInfo
from nbmonitor.repo import Repo
from nbmonitor.widget import COLOURS, USAGE_MIME

from .helpers import ROOT, terminate, wait_until
from .records import sample
from .servers import free_port

CHROMIUM = Path("/usr/bin/chromium")
SVG = "{http://www.w3.org/2000/svg}"
ARTIFACTS = ROOT / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")


class Lab:
    """A JupyterLab (or Notebook 7: ``app="notebook"``) server of its own: config, settings, repo
    and a copy of the quickstart."""

    def __init__(self, work: Path, app: str = "jupyterlab") -> None:
        self.token = "nbmonitor-browser-test"
        self.port = free_port()
        self.root = work / "root"
        self.root.mkdir()
        shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", self.root / "quickstart.ipynb")
        self.repo = work / "repo"
        self.go = work / "go"
        settings = work / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(work / "config"),
            NBMONITOR_REPO=str(self.repo),
            NBM_GO=str(self.go),
        )
        self.log = (work / "lab.log").open("w")
        self.app = app
        own = "LabApp" if app == "jupyterlab" else "JupyterNotebookApp"
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", app, "--no-browser", "--allow-root",
                f"--port={self.port}", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}", f"--{own}.user_settings_dir={work / 'settings'}",
                f"--{own}.expose_app_in_browser=True",
            ],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._up, 60, "JupyterLab to answer")

    def _up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url('api/status')}", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def stop(self) -> None:
        terminate(self.process, 15)
        if not self.log.closed:
            self.log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    server = Lab(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def notebook7(tmp_path: Path) -> Iterator[Lab]:
    server = Lab(tmp_path, app="notebook")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(lab: Lab) -> Iterator[Any]:
    yield from browser_page()


@pytest.fixture
def notebook7_page(notebook7: Lab) -> Iterator[Any]:
    yield from browser_page()


def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


@contextlib.contextmanager
def screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    """What the browser showed when the block failed, as test-artifacts/<name>.png."""
    try:
        yield
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        raise


def dark_theme(page: Any, selector: str, colour: str = "color") -> None:
    """Switch Lab to its dark theme; its styles load after the body's attribute changes, so wait
    until the ``colour`` of ``selector`` (a CSS property: color, fill) reads light."""
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_selector('body[data-jp-theme-light="false"]', state="attached", timeout=30_000)
    text = f"getComputedStyle(document.querySelector({selector!r})).{colour}"
    wait_until(lambda: sum(map(int, re.findall(r"\d+", page.evaluate(text))[:3])) > 450, 30, "dark styles")
    # Lab covers the page with its splash while the theme changes; the pointer cannot reach under it.
    page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=30_000)


def toolbar(page: Any, *commands: str) -> Any:
    """The button of the notebook's toolbar for the first of ``commands`` it has (JupyterLab 4.0
    and later ones name some differently): clicking runs it whatever has the keyboard focus."""
    either = ", ".join(f'.jp-NotebookPanel-toolbar [data-command="{command}"]' for command in commands)
    return page.locator(either).first


def run_active_cell(page: Any, timeout: float = 30) -> None:
    """Run the selected cell with the toolbar's ▶ (which then selects the next one)."""
    prompt = page.locator(".jp-Notebook .jp-Cell.jp-mod-active .jp-InputArea-prompt").element_handle()
    toolbar(page, "notebook:run-cell-and-select-next", "runmenu:run").click()
    wait_until(lambda: "[ ]" not in prompt.inner_text(), timeout, "the cell to start running")


def run_cell(page: Any, lines: list[str]) -> None:
    """Add a cell below the active one, type ``lines`` into it, and run it."""
    toolbar(page, "notebook:insert-cell-below").click()
    page.locator(".jp-Notebook .jp-Cell.jp-mod-active .cm-content").click()
    page.wait_for_selector(".jp-Notebook .jp-Cell.jp-mod-active .cm-editor.cm-focused", timeout=10_000)
    for i, line in enumerate(lines):
        if i:
            page.keyboard.press("Enter")
            page.keyboard.press("Home")
        page.keyboard.type(line)
    run_active_cell(page)


def test_the_runs_panel_and_status_bar_follow_a_stalling_cell(lab: Lab, page: Any) -> None:
    with screenshot_on_failure(page, "failure"):
        follow_a_stalling_cell(lab, page)


def open_quickstart(lab: Lab, page: Any) -> None:
    """Open the quickstart and run its first code cell (which loads nbmonitor)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(
        lab.url("lab/tree/quickstart.ipynb" if lab.app == "jupyterlab" else "notebooks/quickstart.ipynb")
    )
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # Keys pressed before the kernel is connected are lost: wait for it to be idle. On a loaded
    # machine Lab may not have the kernel specs yet when the notebook opens, and asks which kernel
    # to start (the notebook names Python 3, which it offers): accept it.
    # The indicator tells the kernel's state whether or not it is shown (Notebook 7.0 may keep it
    # hidden in a narrow toolbar: seen once on the lowest versions), so it need only be there.
    idle = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'
    asked = ".jp-Dialog:has-text('Select Kernel') .jp-mod-accept"
    page.wait_for_selector(f"{idle}, {asked}", state="attached", timeout=60_000)
    if page.locator(asked).count():
        page.locator(asked).click()
    page.wait_for_selector(idle, state="attached", timeout=60_000)
    # Opening it changes nothing: it is saved with the metadata Lab writes for its kernel. Only a
    # kernel of another Python (the lowest-versions job's) changes one thing, its version.
    running = page.evaluate(
        "async () => { const s = window.jupyterapp.shell.currentWidget.sessionContext;"
        " await s.ready; return (await s.session.kernel.info).language_info.version; }"
    )
    saved = json.loads((lab.root / "quickstart.ipynb").read_text())["metadata"]
    model = "window.jupyterapp.shell.currentWidget.context.model"
    same_python = running == saved["language_info"]["version"]
    saved["language_info"]["version"] = running
    wait_until(lambda: page.evaluate(f"{model}.toJSON().metadata") == saved, 10, "the kernel's metadata")
    if same_python:
        assert not page.evaluate(f"{model}.dirty"), "marked modified"
    first = page.locator(".jp-Notebook .jp-CodeCell").first
    # Lab can drop the first run request while the kernel's connection settles, even once the
    # indicator reads idle (seen on a loaded machine: the prompt stayed "[ ]"). Loading the
    # extension is idempotent, so ask again rather than wait in vain.
    for attempt in range(3):
        # The kernel dialog can also come after the indicator read idle (seen in CI): it covers
        # the notebook, and a click on the prompt waits under it in vain.
        if page.locator(asked).count():
            page.locator(asked).click()
            page.wait_for_selector(idle, timeout=60_000)
        try:
            first.locator(".jp-InputArea-prompt").click(timeout=10_000)
            run_active_cell(page, timeout=15 if attempt < 2 else 30)
            break
        except (AssertionError, PlaywrightTimeout) as e:
            if attempt == 2:
                dialogs = page.locator(".jp-Dialog").all_inner_texts()
                raise AssertionError(f"the first cell did not run; dialogs: {dialogs}") from e
    first.locator(".jp-InputArea-prompt", has_text="[1]").wait_for(timeout=60_000)


def follow_a_stalling_cell(lab: Lab, page: Any) -> None:
    open_quickstart(lab, page)  # then a cell that stalls until told
    run_cell(
        page,
        [
            "%%watch --eta 1 --name browser-stall",
            "import os, time",
            "while not os.path.exists(os.environ['NBM_GO']): time.sleep(0.05)",
        ],
    )
    # The status bar turns red with the news, and a toast says it in one line.
    status = page.locator(".nbm-statusbar")
    wait_until(lambda: "1 stalled" in status.inner_text(), 60, "the stall in the status bar")
    assert "nbm-bad" in (status.get_attribute("class") or "")
    page.get_by_text("browser-stall stalled · quickstart.ipynb").first.wait_for(timeout=10_000)
    neighbour = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem:not(.nbm-statusbar)").first
    centre = [(b["y"] + b["height"] / 2) for b in (status.bounding_box(), neighbour.bounding_box())]
    assert abs(centre[0] - centre[1]) <= 1, centre  # its text level with its neighbours'
    assert status.evaluate("e => getComputedStyle(e).fontSize") == neighbour.evaluate(
        "e => getComputedStyle(e).fontSize"
    )
    page.screenshot(path=str(ARTIFACTS / "lab-stalled-news.png"))
    # Opening the panel, where the stall is listed, is seeing it: the status bar is red no longer.
    page.locator(".jp-SideBar .lm-TabBar-tab", has_text="Runs").first.click()
    stalled = page.locator('.nbm-run[data-status="stalled"]', has_text="browser-stall")
    stalled.wait_for(timeout=60_000)
    wait_until(lambda: "nbm-bad" not in (status.get_attribute("class") or ""), 10, "the news seen")
    assert "1 stalled" in status.inner_text()
    # Where it runs: the notebook's path from the server's root, and when it started.
    place = stalled.locator(".nbm-where")
    assert place.locator(".nbm-file").inner_text().startswith("quickstart.ipynb, cell ")
    facts = stalled.locator(".nbm-facts").inner_text()
    assert re.fullmatch(r"step 0 · last progress [\d.]+ s ago · started \d\d:\d\d", facts), facts
    page.locator("#nbmonitor-runs").screenshot(path=str(ARTIFACTS / "runs-panel-stalled.png"))
    page.screenshot(path=str(ARTIFACTS / "lab-stalled.png"))
    assert stalled.get_attribute("title") == "open quickstart.ipynb"  # a click opens the notebook

    lab.go.touch()  # the cell carries on and ends
    page.locator(".nbm-run", has_text="browser-stall").wait_for(state="detached", timeout=30_000)
    page.get_by_text("browser-stall recovered").first.wait_for(timeout=10_000)  # the toast, updated
    wait_until(lambda: "stalled" not in status.inner_text(), 30, "the status bar to drop the stall")
    assert "nbm-bad" not in (status.get_attribute("class") or "")
    page.locator(".nbm-filter").click()  # show all runs, ended ones too
    page.locator('.nbm-run[data-status="finished"]', has_text="browser-stall").wait_for(timeout=10_000)
    page.locator("#nbmonitor-runs").screenshot(path=str(ARTIFACTS / "runs-panel-recovered.png"))

    # Names and errors are user text: shown as text, never run as HTML.
    evil = '<img src=x onerror="window.__pwned = 1">'
    Repo(lab.repo).write_run(
        sample(id="9" * 32, name=evil, status="failed", ended_at=time.time(), started_at=time.time() - 5,
               error=ErrorInfo("ValueError", f"<script>window.__pwned = 2</script>{evil}"))
    )  # fmt: skip
    shown = page.locator(".nbm-run", has_text='<img src=x onerror="window.__pwned = 1">')
    shown.wait_for(timeout=15_000)
    assert "<script>window.__pwned = 2</script>" in shown.inner_text()
    assert page.locator(".nbm-panel img").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.locator("#nbmonitor-runs").screenshot(path=str(ARTIFACTS / "runs-panel-user-text.png"))

    lab.stop()  # the server goes away: the panel and the status bar say so
    page.locator(".nbm-offline").wait_for(state="visible", timeout=30_000)
    wait_until(lambda: status.inner_text() == "nbmonitor offline", 30, "the status bar to say offline")


def test_a_group_and_a_cells_workers_in_the_panel_and_the_cell(lab: Lab, page: Any) -> None:
    with screenshot_on_failure(page, "failure-group"):
        show_a_group_and_workers(lab, page)


def test_the_panel_loads_ended_runs_a_page_at_a_time(lab: Lab, page: Any) -> None:
    now = time.time()
    for i in range(60):  # ended before the panel's first look: it gets the latest 50
        Repo(lab.repo).write_run(
            sample(id=f"{i + 1:032x}", name=f"archived-{i:02d}", status="finished", started_at=now - 4000 + i,
                   ended_at=now - 3000 + i)
        )  # fmt: skip
    # A run on a far host, whose records came over HTTP: its row names its host.
    Repo(lab.repo).write_run(
        sample(id="f" * 32, name="far-train", host="gpu-box", via="10.0.0.2", heartbeat=3600.0, eta=None,
               started_at=now - 60, last_progress_at=now - 5)
    )  # fmt: skip
    with screenshot_on_failure(page, "failure-pages"):
        page.goto(lab.url("lab"))
        page.locator(".jp-SideBar .lm-TabBar-tab", has_text="Runs").first.click()
        far = page.locator(".nbm-run", has_text="far-train")
        far.wait_for(timeout=60_000)
        assert far.locator(".nbm-facts").inner_text().endswith(" · on gpu-box")
        page.locator("#nbmonitor-runs").screenshot(path=str(ARTIFACTS / "runs-panel-far-host.png"))
        page.locator(".nbm-filter").click()  # show all runs, ended ones too
        page.locator(".nbm-run", has_text="archived-59").wait_for(timeout=60_000)
        rows = page.locator(".nbm-run")
        wait_until(lambda: rows.count() == 51, 10, "a page of ended runs, and the running one")
        assert page.locator(".nbm-run", has_text="archived-09").count() == 0
        older = page.locator(".nbm-older")
        older.scroll_into_view_if_needed()
        page.locator("#nbmonitor-runs").screenshot(path=str(ARTIFACTS / "runs-panel-older.png"))
        dark_theme(page, ".nbm-older")
        far.screenshot(path=str(ARTIFACTS / "runs-panel-far-host-dark.png"))
        older.scroll_into_view_if_needed()
        page.locator("#nbmonitor-runs").screenshot(path=str(ARTIFACTS / "runs-panel-older-dark.png"))
        older.click()
        page.locator(".nbm-run", has_text="archived-00").wait_for(timeout=10_000)
        assert rows.count() == 61
        assert older.count() == 0  # none left


def write_group(repo: Path) -> None:
    """A torchrun job of four ranks of this (live) process: rank 2 stopped first, the rest wait."""
    from nbmonitor.record import CheckpointField, GroupField

    now, host = time.time(), os.uname().nodename
    resumed = CheckpointField(1150, now - 300, resumed=True)  # its second attempt, from step 1150
    for rank in range(4):
        Repo(repo).write_run(
            sample(id=f"{rank + 1:032x}", name="ddp-resnet", host=host, pid=os.getpid(), process_start=None,
                   boot_id=None, eta=2.0, step=1200 if rank == 2 else 1240, total=5000,
                   last_progress_at=now - (95 if rank == 2 else 80), started_at=now - 600,
                   waiting=None if rank == 2 else "all_reduce",
                   group=GroupField("c3a1f09e-77b2-4d1c-9e0a-1f2e3d4c5b6a", "torchrun", rank, 4, rank),
                   attempt=1, checkpoint=resumed)
        )  # fmt: skip


def show_a_group_and_workers(lab: Lab, page: Any) -> None:
    write_group(Path(lab.repo))
    open_quickstart(lab, page)
    run_cell(
        page,
        [
            "%%watch --eta 30 --name pooled-cell --no-usage",
            "import multiprocessing as mp, os, time, nbmonitor",
            "go = lambda: os.path.exists(os.environ['NBM_GO'])",
            "def shard(n): [time.sleep(0.05) for _ in nbmonitor.track(range(n))]; "
            "[time.sleep(0.05) for _ in iter(go, True)]",
            "with mp.get_context('fork').Pool(3) as pool: pool.map(shard, [10, 20, 30])",
        ],
    )
    page.locator(".jp-SideBar .lm-TabBar-tab", has_text="Runs").first.click()
    group = page.locator('.nbm-group[data-status="stalled"]', has_text="ddp-resnet")
    group.wait_for(timeout=60_000)
    assert group.locator(".nbm-member").count() == 4
    blamed = group.locator(".nbm-member.nbm-blamed")
    assert blamed.count() == 1
    assert "rank 2" in blamed.inner_text()
    assert "to blame" in blamed.inner_text()
    assert "rank 2 on" in group.locator(".nbm-blame").inner_text()
    attempt = group.locator(".nbm-attempt").inner_text()  # its attempt, and where it resumed from
    assert attempt.startswith("attempt 2 · resumed from the checkpoint at step 1150, saved 5 min")
    page.get_by_text("ddp-resnet stalled · torchrun").first.wait_for(timeout=10_000)  # one toast, the group's
    pooled = page.locator(".nbm-run", has_text="pooled-cell")
    wait_until(
        lambda: pooled.locator(".nbm-workers .nbm-member").count() == 3, 30, "the cell's three workers"
    )
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    wait_until(lambda: cell.locator(".nbm-member").count() == 3, 30, "a small bar per worker in the cell")
    wait_until(lambda: cell.locator(".nbm-progress").inner_text() == "60", 30, "the workers' steps added up")
    panel = page.locator("#nbmonitor-runs")
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-group.png"))
    cell.screenshot(path=str(ARTIFACTS / "cell-workers.png"))
    page.set_viewport_size({"width": 760, "height": 900})  # narrow
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-group-narrow.png"))
    page.set_viewport_size({"width": 1400, "height": 900})
    dark_theme(page, ".nbm-panel .nbm-name", "color")
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-group-dark.png"))
    cell.screenshot(path=str(ARTIFACTS / "cell-workers-dark.png"))
    page.screenshot(path=str(ARTIFACTS / "lab-group-dark.png"))
    lab.go.touch()
    page.locator('.nbm-run[data-status="running"]', has_text="pooled-cell").wait_for(
        state="detached", timeout=30_000
    )


def write_usage(repo: Path, run_id: str, names: list[str], seconds: int, *, start: float, gpu: bool) -> None:
    """A usage history of ``seconds`` rows for processes ``names``, a curve each, with two marks,
    appended (the header first when the file is new) with nbmonitor's own encoders."""
    import math

    from nbmonitor import history as h

    path = Repo(repo).usage_path(run_id)
    lines = []
    if not path.exists():
        lines.append(h.encode_header(run_id, start, os.uname().nodename, "resnet-train"))
        lines += [h.encode_process(h.ProcessInfo(n, 4000 + n, name, 0.0)) for n, name in enumerate(names)]
        lines += [h.encode_mark(h.Mark(30.0, "epoch", 1)), h.encode_mark(h.Mark(62.0, "eval"))]
    first = (
        sum(1 for line in path.read_text().splitlines() if line.startswith('{"t"')) if path.exists() else 0
    )
    for t in range(first + 1, first + seconds + 1):
        readings = {
            n: h.Reading(
                cpu=(90.0 if n == 0 else 35.0) + 10 * math.sin(t / 7 + n),
                rss=(900 + 6 * t if n == 0 else 300 + 40 * n) * 2**20,
                pss=(800 + 6 * t if n == 0 else 200 + 40 * n) * 2**20,
                gpu=(3 * 2**30 + t * 2**24 if n == 0 else 0) if gpu else None,
            )
            for n in range(len(names))
        }
        gpus = (h.GpuReading(0, 70 + 25 * math.sin(t / 5), 5 * 2**30, 16 * 2**30),) if gpu else ()
        lines.append(h.encode_row(h.Row(float(t), 1.0, readings, gpus)))
    Repo(repo).usage_dir.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(lines))


def test_a_runs_usage_plot_opens_under_its_row(lab: Lab, page: Any) -> None:
    with screenshot_on_failure(page, "failure-usage"):
        show_a_usage_plot(lab, page)


def show_a_usage_plot(lab: Lab, page: Any) -> None:
    now, run_id = time.time(), "7" * 32
    names = ["main", "DataLoader worker 0", "DataLoader worker 1"]
    Repo(lab.repo).write_run(
        sample(id=run_id, name="resnet-train", host=os.uname().nodename, pid=os.getpid(), process_start=None,
               boot_id=None, eta=600.0, step=300, total=1000, started_at=now - 90, last_progress_at=now)
    )  # fmt: skip
    write_usage(Path(lab.repo), run_id, names, 90, start=now - 90, gpu=True)
    write_group(Path(lab.repo))
    for rank in range(4):
        write_usage(Path(lab.repo), f"{rank + 1:032x}", ["main"], 60, start=now - 60, gpu=False)
    page.goto(lab.url("lab"))
    page.locator(".jp-Launcher").wait_for(timeout=60_000)  # Lab has started (and focused it)
    page.locator(".jp-SideBar .lm-TabBar-tab", has_text="Runs").first.click()
    row = page.locator('.nbm-run[data-status="running"]', has_text="resnet-train")
    row.wait_for(timeout=60_000)
    narrow = page.locator("#nbmonitor-runs").bounding_box()["width"]
    move_sidebar_edge(page, 320)  # widened, as one does to look at a plot
    wait_until(
        lambda: page.locator("#nbmonitor-runs").bounding_box()["width"] > narrow + 250, 10, "a wider panel"
    )
    toggle = row.locator("button.nbm-toggle")
    assert toggle.get_attribute("aria-expanded") == "false"
    toggle.focus()  # the keyboard opens it
    page.keyboard.press("Enter")
    plot = row.locator(".nbm-usage-plot svg.nbmonitor-usage")
    plot.wait_for(timeout=15_000)
    assert toggle.get_attribute("aria-expanded") == "true"
    # CPU, memory and GPU memory: an area per process in each.
    assert plot.locator(".nbm-series").count() == 3 * 3
    assert plot.locator(".nbm-key").count() == 3
    assert plot.locator('.nbm-series[data-proc="1"]').count() == 3
    peaks = plot_module.peak_lines(Repo(lab.repo).read_usage(run_id))
    assert row.locator(".nbm-usage-peaks").inner_text().splitlines() == peaks  # as the CLI says them
    assert [p.split()[1] for p in peaks] == ["CPU", "memory", "GPU"]

    # The rows are drawn anew every two seconds; a row that stays keeps its nodes: the plot
    # stays open and the keyboard focus where it was.
    view = row.locator(".nbm-usage-view").element_handle()
    row.element_handle().evaluate("li => { li.dataset.old = 'yes'; }")
    wait_until(lambda: page.evaluate("!document.querySelector('li[data-old]')"), 10, "the rows to be redrawn")
    assert view.evaluate("node => node.isConnected && node.closest('li').dataset.key") == run_id
    assert page.evaluate("document.activeElement.classList.contains('nbm-toggle')")

    # A click on a legend key hides that process's areas and dims the key; another shows them.
    key = plot.locator('.nbm-key[data-proc="1"]')
    key.click()
    wait_until(
        lambda: all(s.is_hidden() for s in plot.locator('.nbm-series[data-proc="1"]').all()), 5, "hidden"
    )
    assert "nbm-off" in (key.get_attribute("class") or "")
    assert key.get_attribute("aria-checked") == "false"
    assert plot.locator('.nbm-series[data-proc="0"]').first.is_visible()
    key.click()
    wait_until(lambda: plot.locator('.nbm-series[data-proc="1"]').first.is_visible(), 5, "shown again")
    assert "nbm-off" not in (key.get_attribute("class") or "")

    # The keyboard does it too, and what is hidden stays hidden when the running run's plot is
    # refreshed with the rows its history gained.
    plot.locator('.nbm-key[data-proc="2"]').focus()
    page.keyboard.press(" ")
    columns = "JSON.parse(document.querySelector('.nbm-usage-plot metadata.nbm-data').textContent).t.length"
    assert page.evaluate(columns) == 90
    write_usage(Path(lab.repo), run_id, names, 5, start=now - 90, gpu=True)
    wait_until(lambda: page.evaluate(columns) == 95, 20, "the plot to show the new rows")
    assert all(s.is_hidden() for s in plot.locator('.nbm-series[data-proc="2"]').all())
    assert page.evaluate("document.activeElement.dataset.proc") == "2"
    page.keyboard.press("Enter")
    wait_until(lambda: plot.locator('.nbm-series[data-proc="2"]').first.is_visible(), 5, "shown by keyboard")

    # The pointer reads out the column under it: the time and each process's values.
    panel = page.locator("#nbmonitor-runs")
    tip = row.locator(".nbm-usage-tip")
    point_at(page, plot)
    assert tip.inner_text().startswith("at 5")  # about 57 s in
    assert tip.locator("thead th").all_text_contents() == ["", "CPU", "memory", "GPU"]
    cells = tip.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [row[0] for row in cells] == names
    assert all(re.fullmatch(r"\d+%", row[1]) and re.fullmatch(r"\d+\.\d [MG]B", row[2]) for row in cells)
    assert [row[3] != "" for row in cells] == [True, False, False]  # GPU memory: the main process's
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-usage.png"))

    # A group's plot: each rank's processes, named by rank.
    group = page.locator(".nbm-group", has_text="ddp-resnet")
    group.locator("button.nbm-toggle").click()
    ranks = group.locator(".nbm-usage-plot svg.nbmonitor-usage")
    ranks.wait_for(timeout=15_000)
    assert ranks.locator(".nbm-series").count() == 4 * 2  # no GPU memory: CPU and memory
    assert [t.text_content() for t in ranks.locator(".nbm-key title").all()] == [
        f"rank {r} main" for r in range(4)
    ]
    group.locator("button.nbm-toggle").click()
    ranks.wait_for(state="detached", timeout=5_000)

    wide = plot.bounding_box()["width"]
    move_sidebar_edge(page, -320)
    page.set_viewport_size({"width": 760, "height": 900})  # narrow
    wait_until(lambda: (plot.bounding_box() or {"width": wide})["width"] < narrow, 10, "the plot to fit")
    wait_until(lambda: plot.get_attribute("width") == "320", 10, "the plot drawn again, narrow")
    point_at(page, plot)
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-usage-narrow.png"))

    page.set_viewport_size({"width": 1400, "height": 900})
    move_sidebar_edge(page, 320)
    dark_theme(page, ".nbm-usage-plot svg text", "fill")
    wait_until(lambda: plot.get_attribute("width") != "320", 10, "the plot drawn again, wide")
    point_at(page, plot)
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-usage-dark.png"))


def test_a_runs_log_tail_opens_with_its_plot_as_text(lab: Lab, page: Any) -> None:
    with screenshot_on_failure(page, "failure-logs"):
        show_a_log_tail(lab, page)


def show_a_log_tail(lab: Lab, page: Any) -> None:
    from nbmonitor import logtail
    from nbmonitor.logtail import LogLine

    now, run_id = time.time(), "8" * 32
    repo = Repo(lab.repo)
    repo.write_run(
        sample(id=run_id, name="chatty-train", host=os.uname().nodename, pid=os.getpid(), process_start=None,
               boot_id=None, eta=600.0, step=40, total=100, started_at=now - 90, last_progress_at=now)
    )  # fmt: skip
    write_usage(Path(lab.repo), run_id, ["main"], 60, start=now - 60, gpu=False)
    said = [
        LogLine(now - 80 + i, "INFO", "log", f"train: epoch {i} loss {1 / (i + 1):.3f}") for i in range(60)
    ]
    said += [
        LogLine(now - 10, "", "stdout", "<img src=x onerror=window.pwned=1> <b>bold</b>"),
        LogLine(now - 9, "", "stderr", "\x1b[31mred\x1b[0m and a NUL \x00 " + "long " * 60),
        LogLine(now - 8, "WARNING", "log", "data: batch 41 is slow"),
        LogLine(now - 7, "", "stdout", "step 40 done"),
    ]
    repo.replace_log(run_id, logtail.encode_header(run_id) + logtail.encode(said))
    write_group(Path(lab.repo))
    for rank in range(4):
        member = f"{rank + 1:032x}"
        lines = [
            LogLine(now - 30 + i, "INFO", "log", f"rank {rank} step {1200 + i}", f"rank {rank}")
            for i in range(3)
        ]
        repo.replace_log(member, logtail.encode_header(member) + logtail.encode(lines))
    page.goto(lab.url("lab"))
    page.locator(".jp-Launcher").wait_for(timeout=60_000)
    page.locator(".jp-SideBar .lm-TabBar-tab", has_text="Runs").first.click()
    row = page.locator('.nbm-run[data-status="running"]', has_text="chatty-train")
    row.wait_for(timeout=60_000)
    move_sidebar_edge(page, 320)
    row.locator("button.nbm-toggle").click()
    tail = row.locator(".nbm-logs")
    tail.locator(".nbm-log-line").nth(49).wait_for(timeout=15_000)
    texts = tail.locator(".nbm-log-text").all_inner_texts()
    assert len(texts) == 50  # the last 50
    assert texts[-4:] == [
        "<img src=x onerror=window.pwned=1> <b>bold</b>",  # text, never markup
        "\\x1b[31mred\\x1b[0m and a NUL \\x00 " + "long " * 60,
        "data: batch 41 is slow",
        "step 40 done",
    ]
    assert tail.locator("img, b").count() == 0
    assert page.evaluate("window.pwned") is None
    assert tail.locator(".nbm-log-line").last.locator(".nbm-log-tag").inner_text() == "stdout"
    assert tail.locator('.nbm-log-line[data-level="warning"]').count() == 1
    # The newest line is in view: the box scrolls to its end.
    assert tail.evaluate("box => box.scrollTop + box.clientHeight >= box.scrollHeight - 4")
    panel = page.locator("#nbmonitor-runs")
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-logs.png"))

    group = page.locator(".nbm-group", has_text="ddp-resnet")
    group.locator("button.nbm-toggle").click()
    merged = group.locator(".nbm-logs .nbm-log-line")
    merged.nth(11).wait_for(timeout=15_000)
    assert merged.count() == 12
    assert set(group.locator(".nbm-logs .nbm-log-who").all_inner_texts()) == {f"rank {r}" for r in range(4)}
    group.locator("button.nbm-toggle").click()

    move_sidebar_edge(page, -320)
    page.set_viewport_size({"width": 760, "height": 900})
    wait_until(lambda: tail.bounding_box()["width"] < 400, 10, "the tail to fit a narrow panel")
    assert tail.evaluate("box => box.scrollWidth <= box.clientWidth + 1")  # wrapped, never wider
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-logs-narrow.png"))
    page.set_viewport_size({"width": 1400, "height": 900})
    move_sidebar_edge(page, 320)
    dark_theme(page, ".nbm-log-text")
    name = "getComputedStyle(document.querySelector('.nbm-name')).color"
    wait_until(lambda: sum(map(int, re.findall(r"\d+", page.evaluate(name))[:3])) > 600, 30, "dark names")
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-logs-dark.png"))


def test_a_stalled_runs_stack_under_its_row_and_in_its_details(lab: Lab, page: Any) -> None:
    with screenshot_on_failure(page, "failure-stack"):
        show_a_stack(lab, page)


FRAMES = [
    ("wait_for_batch", "/home/ana/projects/resnet/data/loader.py", 42, "batch = self.queue.get()"),
    ("next_batch", "/home/ana/projects/resnet/data/loader.py", 77, "return self.wait_for_batch(timeout)"),
    ("train", "/home/ana/projects/resnet/train.py", 88, 'log(f"<img src=x onerror=window.__pwned=3>")'),
    ("<module>", "/home/ana/projects/resnet/train.py", 120, ""),
]


def show_a_stack(lab: Lab, page: Any) -> None:
    from nbmonitor.record import StackFrame

    now, stuck_id, recovered_id = time.time(), "5" * 32, "6" * 32
    live = {"host": os.uname().nodename, "pid": os.getpid(), "process_start": None, "boot_id": None}
    frames = tuple(StackFrame(*frame) for frame in FRAMES)
    # Stalled a minute ago (an ETA of 1 s), its stack read from outside when it did.
    Repo(lab.repo).write_run(
        sample(id=stuck_id, name="resnet-stuck", eta=1.0, step=420, total=1000, started_at=now - 300,
               last_progress_at=now - 60, stack=frames, stack_state="stalled", stack_at=now - 30,
               stack_from="py-spy", **live)
    )  # fmt: skip
    write_usage(Path(lab.repo), stuck_id, ["main", "DataLoader worker 0"], 60, start=now - 300, gpu=False)
    # Late once, but it has made progress since: its stack is kept, it is not stuck there now.
    Repo(lab.repo).write_run(
        sample(id=recovered_id, name="resnet-recovered", eta=600.0, step=10, total=100, started_at=now - 300,
               last_progress_at=now, stack=frames[:2], stack_state="late", stack_at=now - 120, **live)
    )  # fmt: skip
    page.goto(lab.url("lab"))
    page.locator(".jp-Launcher").wait_for(timeout=60_000)
    page.locator(".jp-SideBar .lm-TabBar-tab", has_text="Runs").first.click()
    row = page.locator('.nbm-run[data-status="stalled"]', has_text="resnet-stuck")
    row.wait_for(timeout=60_000)
    stuck = row.locator(".nbm-stuck")
    assert stuck.inner_text() == (
        "stuck in wait_for_batch (loader.py:42) ← next_batch (loader.py:77) ← train (train.py:88)"
    )  # as the alarm and the notebook display say it
    assert stuck.evaluate("n => getComputedStyle(n).borderLeftColor") == "rgb(230, 81, 0)"  # stalled's
    recovered = page.locator('.nbm-run[data-status="running"]', has_text="resnet-recovered")
    assert recovered.locator(".nbm-stuck").count() == 0  # not stuck now
    assert page.locator(".nbm-stack").count() == 0  # the frames are in the details, shut

    panel = page.locator("#nbmonitor-runs")
    narrow = panel.bounding_box()["width"]
    move_sidebar_edge(page, 200)  # widened, as one does to read paths
    row.locator("button.nbm-toggle").click()
    stack = row.locator(".nbm-stack")
    wait_until(lambda: stack.locator(".nbm-frame").count() == len(FRAMES), 15, "the frames")
    where = stack.locator(".nbm-frame-where").all_inner_texts()
    assert where == [f"{name} — {file}:{line}" for name, file, line, _ in FRAMES]  # innermost first
    assert stack.locator(".nbm-frame-code").all_inner_texts() == [code for *_, code in FRAMES if code]
    note = stack.locator(".nbm-stack-note").inner_text()
    taken = r"stack when it turned stalled, \d+:\d\d:\d\d.* \(\d+ (s|min)[^)]* ago\)"  # when, as time of day
    assert re.fullmatch(f"{taken}, read by py-spy: its process could not say", note), note
    assert "monospace" in stack.locator(".nbm-frames").evaluate("n => getComputedStyle(n).fontFamily")
    assert page.locator(".nbm-panel img").count() == 0  # source lines are user text: shown as text
    assert page.evaluate("window.__pwned") is None
    row.locator(".nbm-usage-plot svg.nbmonitor-usage").wait_for(timeout=15_000)  # below the frames

    # The rows are drawn anew every two seconds; the frames list keeps its nodes (a selection stays).
    kept = stack.element_handle()
    row.element_handle().evaluate("li => { li.dataset.old = 'yes'; }")
    wait_until(lambda: page.evaluate("!document.querySelector('li[data-old]')"), 10, "the rows to be redrawn")
    assert kept.evaluate("node => node.isConnected && node.closest('li').dataset.key") == stuck_id

    recovered.locator("button.nbm-toggle").click()  # its old stack, said to be old
    old = recovered.locator(".nbm-stack .nbm-stack-note")
    old.wait_for(timeout=10_000)
    assert old.inner_text().startswith("stack when it turned late, ")
    assert old.inner_text().endswith(" ago), it has made progress since")
    assert recovered.locator(".nbm-frame").count() == 2
    recovered.locator("button.nbm-toggle").click()
    old.wait_for(state="detached", timeout=10_000)

    panel.screenshot(path=str(ARTIFACTS / "runs-panel-stack.png"))
    move_sidebar_edge(page, -200)
    page.set_viewport_size({"width": 760, "height": 900})  # narrow: long paths wrap, never clipped
    wait_until(lambda: panel.bounding_box()["width"] < narrow + 10, 10, "a narrow panel")
    plot = row.locator(".nbm-usage-plot svg.nbmonitor-usage")
    wait_until(lambda: plot.get_attribute("width") == "320", 10, "the plot drawn again, narrow")
    for text in [stuck, *stack.locator(".nbm-frame-where, .nbm-frame-code").all()]:
        box, edge = text.bounding_box(), panel.bounding_box()
        assert text.evaluate("n => n.scrollWidth <= n.clientWidth"), f"clipped: {text.inner_text()}"
        assert box["x"] + box["width"] <= edge["x"] + edge["width"], f"past the edge: {text.inner_text()}"
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-stack-narrow.png"))

    page.set_viewport_size({"width": 1400, "height": 900})
    move_sidebar_edge(page, 200)
    dark_theme(page, ".nbm-panel .nbm-frame-where", "color")
    wait_until(lambda: plot.get_attribute("width") != "320", 10, "the plot drawn again, wide")
    panel.screenshot(path=str(ARTIFACTS / "runs-panel-stack-dark.png"))


def move_sidebar_edge(page: Any, by: float) -> None:
    """Drag the edge between the left sidebar and the main area ``by`` pixels, as a person does."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first.bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + 200
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + by, y, steps=5)
    page.mouse.up()


def point_at(page: Any, plot: Any) -> None:
    """The pointer over the plot's CPU panel, 60% of the way along: its read-out shows."""
    box = wait_until(plot.bounding_box, 10, "the plot")
    page.mouse.move(
        box["x"] + box["width"] * 0.6, box["y"] + 40 * box["width"] / float(plot.get_attribute("width"))
    )
    plot.locator("xpath=../div[contains(@class, 'nbm-usage-tip')]").wait_for(state="visible", timeout=5_000)


def test_a_watched_cells_usage_plot_has_a_legend_and_a_read_out_and_is_saved_as_a_picture(
    lab: Lab, page: Any
) -> None:
    with screenshot_on_failure(page, "failure-cell-usage"):
        show_a_cells_usage_plot(lab, page)


def show_a_cells_usage_plot(lab: Lab, page: Any) -> None:
    open_quickstart(lab, page)  # then a cell with a child process, running until told to end
    run_cell(
        page,
        [
            "%%watch --eta 30 --name plotted-cell",
            "import os, subprocess, sys, time",
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])",
            "nbmonitor.mark('epoch', 1)",
            "while not os.path.exists(os.environ['NBM_GO']): time.sleep(0.05)",
            "child.kill(); child.wait()",
        ],
    )
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    display = cell.locator(".nbm-run-output")
    display.locator(".nbm-badge", has_text="running").wait_for(timeout=60_000)
    assert cell.locator(".nbm-usage-output").count() == 0  # while it runs, the cell is one line
    # Its story draws the usage so far, from the server, refreshed while it runs.
    display.locator(".nbm-line").click()
    live = display.locator(".nbm-story svg.nbmonitor-usage")
    live.wait_for(timeout=60_000)
    wait_until(lambda: live.locator(".nbm-key").count() == 2, 30, "the kernel and its child in the legend")
    assert [t.text_content() for t in live.locator(".nbm-key title").all()] == ["kernel", "python -c"]
    # A point per column along an area's top and back along its bottom: "M.. L.. L.. Z".
    columns = "svg => svg.querySelector('.nbm-series').getAttribute('d').split('L').length / 2"
    wait_until(lambda: live.evaluate(columns) >= 5, 30, "five seconds of usage, redrawn as it runs")
    cell.screenshot(path=str(ARTIFACTS / "cell-story-usage.png"))
    display.locator(".nbm-line").click()  # closed: nothing more is fetched

    # The cell ends: the whole run's plot under its line, with its legend and read-out.
    lab.go.touch()
    display.locator(".nbm-badge", has_text="finished").wait_for(timeout=30_000)
    output = cell.locator(".nbm-usage-output")
    plot = output.locator("svg.nbmonitor-usage")
    plot.wait_for(timeout=30_000)  # an SVG of the page (not an <img>)
    assert [t.text_content() for t in plot.locator(".nbm-key title").all()] == ["kernel", "python -c"]
    assert cell.locator(".jp-OutputArea-output img").count() == 0
    assert plot.evaluate(columns) >= 5
    assert plot.locator("metadata").count() == 0  # drawn from the picture, its columns given beside it
    assert plot.locator('.nbm-series[data-proc="1"]').count() == 2  # CPU and memory
    plot.locator(".nbm-mark title", has_text="finished at").wait_for(state="attached", timeout=10_000)

    # The pointer reads out the column under it: the time and each process's values.
    tip = output.locator(".nbm-usage-tip")
    point_at(page, plot)
    assert re.fullmatch(r"at \d+(\.\d)? s", tip.locator("div").first.inner_text()), tip.inner_text()
    assert tip.locator("thead th").all_text_contents() == ["", "CPU", "memory"]
    cells = read_out(tip)
    assert [row[0] for row in cells] == ["kernel", "python -c"]
    assert all(re.fullmatch(r"\d+%", row[1]) and re.fullmatch(r"\d+(\.\d)? [KMG]?B", row[2]) for row in cells)
    cell.screenshot(path=str(ARTIFACTS / "cell-usage.png"))

    # A legend key hides its process, and shows it again.
    key = plot.locator('.nbm-key[data-proc="1"]')
    key.click()
    wait_until(
        lambda: all(s.is_hidden() for s in plot.locator('.nbm-series[data-proc="1"]').all()), 5, "hidden"
    )
    assert key.get_attribute("aria-checked") == "false"
    assert "nbm-off" in (key.get_attribute("class") or "")
    assert plot.locator('.nbm-series[data-proc="0"]').first.is_visible()
    point_at(page, plot)
    assert [row[0] for row in read_out(tip)] == ["kernel"]  # the read-out leaves it out too
    key.click()
    wait_until(lambda: plot.locator('.nbm-series[data-proc="1"]').first.is_visible(), 5, "shown again")

    page.set_viewport_size({"width": 760, "height": 900})  # narrow: the plot scales to the cell
    area = cell.locator(".jp-OutputArea-output").last
    wait_until(lambda: plot.bounding_box()["width"] < 600, 10, "the plot to fit")
    box, edge = plot.bounding_box(), area.bounding_box()
    assert box["x"] + box["width"] <= edge["x"] + edge["width"] + 1
    point_at(page, plot)
    cell.screenshot(path=str(ARTIFACTS / "cell-usage-narrow.png"))
    page.set_viewport_size({"width": 1400, "height": 900})
    dark_theme(page, ".nbm-usage-output svg text", "fill")
    point_at(page, plot)
    cell.screenshot(path=str(ARTIFACTS / "cell-usage-dark.png"))

    # Kept in the saved notebook as the same plot and a picture.
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    saved = lab.root / "quickstart.ipynb"
    wait_until(lambda: USAGE_MIME in saved.read_text(), 30, "the notebook saved")
    notebook = nbformat.read(saved, as_version=4)  # type: ignore[no-untyped-call]  # nbformat
    outputs = next(c for c in notebook.cells if "plotted-cell" in c.source).outputs
    bundle = next(o.data for o in outputs if USAGE_MIME in o.get("data", {}))
    # GitHub and nbviewer show the picture: the plot, legend and all, kept once; its columns
    # beside it, JSON text on one line of the file.
    picture = ElementTree.fromstring(bundle["image/svg+xml"])
    keys = [k.findtext(f"{SVG}title") for k in picture.iter(f"{SVG}g") if k.get("class") == "nbm-key"]
    assert keys == ["kernel", "python -c"]
    assert any(m.get("class") == "nbm-mark" for m in picture.iter(f"{SVG}g"))
    assert picture.find(f"{SVG}metadata") is None
    assert set(bundle[USAGE_MIME]) == {"peaks", "skipped", "columns"}
    assert saved.read_text().count('class=\\"nbmonitor-usage\\"') == 1
    columns = json.loads(bundle[USAGE_MIME]["columns"])
    assert set(columns["cpu"]) == {"0", "1"}
    assert len(columns["t"]) > 5
    assert bundle["text/plain"].splitlines() == bundle[USAGE_MIME]["peaks"]


def test_a_hostile_notebooks_usage_output_is_drawn_as_a_plot_and_nothing_more(lab: Lab, page: Any) -> None:
    with screenshot_on_failure(page, "failure-hostile-usage"):
        open_a_hostile_usage_output(lab, page)


def open_a_hostile_usage_output(lab: Lab, page: Any) -> None:
    """A notebook anyone could have written (so untrusted): its usage outputs are drawn with
    their legends, a read-out only from columns that are arrays of numbers, and nothing in them
    runs, links or loads anything."""
    from nbmonitor import history as h

    read = h.History("0" * 32, 0.0, name="train")
    read.processes = {0: h.ProcessInfo(0, 100, "kernel", 0.0), 1: h.ProcessInfo(1, 101, "worker", 0.0)}
    read.rows = [
        h.Row(float(t), 1.0, {n: h.Reading(50.0 + n, (n + 1) * 2**28, None, None) for n in (0, 1)})
        for t in range(1, 31)
    ]
    elsewhere = f"http://127.0.0.1:{free_port()}"  # nothing answers: a request would still show
    evil = (
        "<script>window.__pwned = 1</script>"
        f'<image href="{elsewhere}/image" width="9" height="9"/>'
        '<foreignObject width="9" height="9"><div xmlns="http://www.w3.org/1999/xhtml">'
        '<img src="x" onerror="window.__pwned = 2"/></div></foreignObject>'
        '<a href="javascript:window.__pwned = 3"><text x="70" y="20">a link</text></a>'
        f'<rect x="1" y="1" width="9" height="9" fill="url({elsewhere}/fill)" '
        'onmouseover="window.__pwned = 4"/>'
        f'<text x="1" y="9" style="background: url({elsewhere}/style)" onclick="window.__pwned = 5">x</text>'
        f'<text x="1" y="9" fill="\\75 rl({elsewhere}/escaped)">y</text>'
    )
    picture, text = plot_module.svg_and_columns(read, 640, title="train")
    drawn = picture.replace("</svg>", f"{evil}</svg>")
    peaks = ['<img src=x onerror="window.__pwned = 6">']
    # A process named by markup in well-formed columns: read out as text.
    named = '<img src=x onerror="window.__pwned = 7">'
    columns = json.loads(text or "")
    for values in (columns["cpu"], columns["memory"], columns["gpu"]):
        values[named] = values["0"]
    # Columns that are not arrays of numbers: each plot is drawn, with no read-out.
    length = len(columns["x"])
    hostile: list[Any] = [
        "{not json",
        json.dumps({**columns, "cpu": {"0": [named] * length}}),  # text where a number goes
        json.dumps({**columns, "memory": {"0": [{"toFixed": named}] * length}}),
        json.dumps({**columns, "x": columns["x"][:-1]}),  # a column short
        json.dumps({**columns, "t": [None] * length}),
        json.dumps({**columns, "gpu": [named]}),
        json.dumps({**columns, "t": ["far"] * length}).replace('"far"', "1e999"),  # Infinity
        json.dumps([columns]),
        columns,  # JSON, but not as text: no columns (and the picture embeds none)
        42,
    ]

    def output(columns: Any, picture: str = drawn) -> Any:
        bundle = {
            # The plot is the bundle's picture: an SVG here is never drawn.
            USAGE_MIME: {"peaks": peaks, "skipped": 0, "columns": columns, "svg": f"<svg>{evil}</svg>"},
            "image/svg+xml": picture,
            "text/plain": "x",
        }
        return nbformat.v4.new_output("display_data", bundle)  # type: ignore[no-untyped-call]  # nbformat

    # And columns embedded in the picture alone, as the server's answer has them: just as checked.
    inside = html.escape(json.dumps({**columns, "cpu": {"0": [named] * length}}))
    embedded = drawn.replace("</svg>", f'<metadata class="nbm-data">{inside}</metadata></svg>')
    outputs = [output(json.dumps(columns)), *(output(c) for c in hostile), output(None, embedded)]
    cell = nbformat.v4.new_code_cell("%%watch", outputs=outputs)  # type: ignore[no-untyped-call]  # nbformat
    notebook = nbformat.v4.new_notebook(cells=[cell])  # type: ignore[no-untyped-call]  # nbformat
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, lab.root / "hostile.ipynb")  # type: ignore[no-untyped-call]  # nbformat
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    page.goto(lab.url("lab/tree/hostile.ipynb"))
    shown = page.locator(".nbm-usage-output")
    wait_until(lambda: shown.locator("svg.nbmonitor-usage").count() == len(outputs), 60, "every plot")
    plot = shown.first.locator("svg.nbmonitor-usage")
    assert shown.first.locator(".nbm-usage-peaks").inner_text() == peaks[0]  # as text
    point_at(page, plot)
    assert [row[0] for row in read_out(shown.first.locator(".nbm-usage-tip"))] == ["kernel", "worker", named]
    plot.locator('.nbm-key[data-proc="1"]').click()
    wait_until(lambda: plot.locator('.nbm-series[data-proc="1"]').first.is_hidden(), 5, "hidden")
    for i in range(1, len(outputs)):
        other = shown.nth(i)
        other.scroll_into_view_if_needed()
        assert other.locator(".nbm-key").count() == 2, i  # the plot and its legend
        box = other.locator("svg.nbmonitor-usage").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 40)
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 40)
        tip = other.locator(".nbm-usage-tip")
        assert tip.is_hidden(), i
        assert tip.locator("table").count() == 0, i  # no read-out, ever
    every = "svg => [svg, ...svg.querySelectorAll('*')]"
    for plot in shown.locator("svg.nbmonitor-usage").all():
        for text in plot.locator("text").all():
            text.hover(force=True)
            text.click(force=True)
        assert plot.locator("script, image, foreignObject, a").count() == 0
        attributes = plot.evaluate(f"{every}.flatMap(e => [...e.attributes].map(a => [a.name, a.value]))")
        assert not [a for a, _ in attributes if a.startswith("on") or a in ("href", "xlink:href")]
        assert {v for a, v in attributes if a == "style"} <= {"display: none;", ""}  # the legend's only
        assert not [v for _, v in attributes if "url" in v or "\\" in v]
    assert page.evaluate("window.__pwned") is None
    assert not [url for url in requests if url.startswith(elsewhere)]
    assert page.locator(".nbm-usage-output img").count() == 0


def read_out(tip: Any) -> list[list[str]]:
    """The rows of a plot's read-out, a list of cells each: process, CPU, memory (GPU)."""
    rows: list[list[str]] = tip.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def test_a_watched_cells_display_is_one_line_in_each_state_with_its_story_on_a_click(
    lab: Lab, page: Any
) -> None:
    with screenshot_on_failure(page, "failure-display"):
        show_the_display_states(lab, page)


COLOURS_RGB = {state: "rgb({}, {}, {})".format(*bytes.fromhex(c[1:])) for state, c in COLOURS.items()}


def one_line_high(output: Any) -> None:
    """A closed display is one line of chrome: its line, and nothing under it."""
    line = output.locator(".nbm-line").bounding_box()
    whole = output.bounding_box()
    assert line["height"] <= 24, line
    assert whole["height"] <= line["height"] + 8, (whole, line)


def show_the_display_states(lab: Lab, page: Any) -> None:
    open_quickstart(lab, page)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    run_cell(
        page,
        [
            "%%watch --eta 1 --grace 3 --name display-states",
            "import os, time, nbmonitor",
            "go = lambda: os.path.exists(os.environ['NBM_GO'])",
            "for i in nbmonitor.track(range(40)): time.sleep(0.1); "
            "[time.sleep(0.05) for _ in iter(go, True)] if i == 20 else None",
        ],
    )
    cell = cells.filter(has_text="--name display-states")
    output = cell.locator(".nbm-run-output")
    output.locator(".nbm-progress", has_text="/40").wait_for(timeout=30_000)
    wait_until(lambda: "it/s" in output.locator(".nbm-line").inner_text(), 15, "a rate in the line")
    one_line_high(output)
    cell.screenshot(path=str(ARTIFACTS / "cell-running.png"))
    page.locator('.nbm-run-output[data-state="late"]').wait_for(timeout=30_000)
    cell.screenshot(path=str(ARTIFACTS / "cell-late.png"))
    page.locator('.nbm-run-output[data-state="stalled"]').wait_for(timeout=30_000)
    late = output.locator(".nbm-late")
    assert re.fullmatch(r"no progress for [\d.]+ s, promised 1\.0 s", late.inner_text()), late.inner_text()
    assert late.evaluate("e => getComputedStyle(e).color") == COLOURS_RGB["stalled"]
    assert output.locator(".nbm-badge").inner_text() == "stalled"
    one_line_high(output)
    cell.screenshot(path=str(ARTIFACTS / "cell-stalled.png"))

    # One click opens its story: where it is stuck, its promise, the plot and the log tail.
    output.locator(".nbm-line").click()
    story = output.locator(".nbm-story")
    story.locator(".nbm-stuck").wait_for(timeout=15_000)
    stuck = story.locator(".nbm-stuck").inner_text()
    assert re.match(r"stuck in (<listcomp>|<module>) \(\d+\.py:3\) ← ", stuck), stuck  # the cell's line 3
    assert "promised within 1.0 s + 3.0 s grace" in story.inner_text()
    story.locator(".nbm-usage-plot svg").wait_for(timeout=30_000)
    story.locator(".nbm-logs-view").wait_for(timeout=15_000)
    cell.screenshot(path=str(ARTIFACTS / "cell-stalled-details.png"))
    output.locator(".nbm-line").click()  # and closes again
    story.wait_for(state="hidden", timeout=5_000)
    one_line_high(output)

    lab.go.touch()  # it carries on and finishes: the stall stays in the saved output
    page.locator('.nbm-run-output[data-state="finished"]').wait_for(timeout=30_000)
    incidents = output.locator(".nbm-incidents")
    assert re.fullmatch(r"stalled [\d.]+ s at step 20, recovered", incidents.inner_text()), (
        incidents.inner_text()
    )
    assert output.locator(".nbm-progress").inner_text() == "40/40 (100%)"
    cell.locator(".nbm-usage-output svg").wait_for(timeout=15_000)  # the whole run's plot, under it
    cell.screenshot(path=str(ARTIFACTS / "cell-finished-incidents.png"))

    run_cell(page, ["%%watch --name display-fails", "raise ValueError('shape mismatch')"])
    fails = cells.filter(has_text="--name display-fails")
    failed = fails.locator('.nbm-run-output[data-state="failed"]')
    failed.wait_for(timeout=30_000)
    failed.locator(".nbm-line").click()
    assert "ValueError: shape mismatch" in failed.locator(".nbm-story .nbm-error").first.inner_text()
    fails.screenshot(path=str(ARTIFACTS / "cell-failed.png"))

    # Ranked workers walk the same steps: the one behind is marked in the strip and named.
    run_cell(
        page,
        [
            "%%watch --eta 30 --name display-ranks --no-usage",
            "import multiprocessing as mp, os, time, nbmonitor",
            "go = lambda: os.path.exists(os.environ['NBM_GO'] + '-ranks')",
            "def rank(r): os.environ['RANK'] = str(r); "
            "[(nbmonitor.report_progress(step=i), time.sleep(0.05)) for i in range(5 if r == 1 else 30)]; "
            "[time.sleep(0.05) for _ in iter(go, True)]",
            "workers = [mp.get_context('fork').Process(target=rank, args=(r,)) for r in range(4)]",
            "[w.start() for w in workers]; [w.join() for w in workers]",
        ],
    )
    ranks = cells.filter(has_text="--name display-ranks")
    strip = ranks.locator(".nbm-run-output .nbm-strip")
    wait_until(lambda: strip.locator(".nbm-member").count() == 4, 30, "a small bar per rank")
    wait_until(lambda: strip.locator('.nbm-member[data-straggler="1"]').count() == 1, 30, "the straggler")
    # The ranks start one after another: the last started is the slowest for a moment, until the
    # others pass rank 1's five steps.
    late = ranks.locator(".nbm-late")
    wait_until(lambda: late.inner_text() == "slowest: rank 1", 30, "rank 1 named the slowest")
    assert late.evaluate("e => getComputedStyle(e).color") == COLOURS_RGB["stalled"]
    one_line_high(ranks.locator(".nbm-run-output"))
    ranks.screenshot(path=str(ARTIFACTS / "cell-group-straggler.png"))

    page.set_viewport_size({"width": 760, "height": 900})  # narrow
    for shown, name in ((cell, "finished-incidents"), (ranks, "group-straggler")):
        shown.screenshot(path=str(ARTIFACTS / f"cell-{name}-narrow.png"))
    one_line_high(ranks.locator(".nbm-run-output"))  # still running, and one line at any width
    page.set_viewport_size({"width": 1400, "height": 900})
    dark_theme(page, ".nbm-run-output .nbm-name", "color")
    for shown, name in ((cell, "finished-incidents"), (fails, "failed"), (ranks, "group-straggler")):
        shown.screenshot(path=str(ARTIFACTS / f"cell-{name}-dark.png"))
    (Path(str(lab.go) + "-ranks")).touch()
    ranks.locator('.nbm-run-output[data-state="finished"]').wait_for(timeout=30_000)

    # The kernel is killed under a running cell: the display does not go on saying "running".
    run_cell(
        page,
        [
            "%%watch --eta 60 --name display-killed",
            "import os, time",
            "[time.sleep(0.05) for _ in iter(lambda: os.path.exists(os.environ['NBM_GO'] + '-never'), True)]",
        ],
    )
    killing = cells.filter(has_text="--name display-killed")
    killed = killing.locator(".nbm-run-output")
    killed.locator(".nbm-badge", has_text="running").wait_for(timeout=30_000)
    (record,) = wait_until(
        lambda: [r for r in Repo(lab.repo).runs() if r.name == "display-killed"], 15, "its run file"
    )
    os.kill(record.pid, signal.SIGKILL)
    page.locator('.nbm-run-output[data-state="crashed"]').wait_for(timeout=60_000)
    assert re.fullmatch(r"its kernel died · last word at [\d:]+", killed.locator(".nbm-late").inner_text())
    assert (
        killed.locator(".nbm-badge").evaluate("e => getComputedStyle(e).backgroundColor")
        == COLOURS_RGB["crashed"]
    )
    restarting = page.locator(".jp-Dialog:has-text('Kernel Restarting') .jp-mod-accept")
    if restarting.count():  # Lab says the kernel died, over the page
        restarting.click()
    killing.screenshot(path=str(ARTIFACTS / "cell-crashed-kernel-killed-dark.png"))


def test_notebook_7_shows_the_same_display_and_story(notebook7: Lab, notebook7_page: Any) -> None:
    page = notebook7_page
    with screenshot_on_failure(page, "failure-notebook7"):
        open_quickstart(notebook7, page)
        run_cell(
            page,
            [
                "%%watch --eta 1 --grace 3 --name notebook7-cell",
                "import os, time, nbmonitor",
                "go = lambda: os.path.exists(os.environ['NBM_GO'])",
                "for i in nbmonitor.track(range(20)): time.sleep(0.1); "
                "[time.sleep(0.05) for _ in iter(go, True)] if i == 10 else None",
            ],
        )
        cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has_text="--name notebook7-cell")
        output = cell.locator(".nbm-run-output")
        output.locator(".nbm-badge", has_text="stalled").wait_for(timeout=60_000)
        one_line_high(output)
        assert output.locator(".nbm-progress").inner_text() == "10/20 (50%)"
        cell.screenshot(path=str(ARTIFACTS / "notebook7-cell-stalled.png"))
        output.locator(".nbm-line").click()
        output.locator(".nbm-story .nbm-stuck").wait_for(timeout=15_000)
        output.locator(".nbm-story svg.nbmonitor-usage").wait_for(timeout=30_000)
        cell.screenshot(path=str(ARTIFACTS / "notebook7-cell-story.png"))
        notebook7.go.touch()
        output.locator(".nbm-badge", has_text="finished").wait_for(timeout=30_000)
        assert re.fullmatch(
            r"stalled [\d.]+ s at step 10, recovered", output.locator(".nbm-incidents").inner_text()
        )
        cell.locator(".nbm-usage-output svg").wait_for(timeout=15_000)
        cell.screenshot(path=str(ARTIFACTS / "notebook7-cell-finished.png"))


def test_the_notifier_form_masks_a_webhook_url_marks_the_field_in_error_and_clears_it(
    lab: Lab, page: Any
) -> None:
    with screenshot_on_failure(page, "failure-form"):
        fill_the_form(lab, page)


def fill_the_form(lab: Lab, page: Any) -> None:
    open_quickstart(lab, page)
    run_cell(page, ["nbmonitor.configure()"])
    form = page.locator(".jp-Notebook .jp-CodeCell").filter(has_text="nbmonitor.configure()")
    secret = "XXXXXXXXXXXXXXXXXXXX1234"
    typo = f"htps://hooks.slack.com/services/T000/B000/{secret}"
    password = form.locator("input[type=password]")
    password.wait_for(timeout=60_000)
    password.fill(typo)
    # Typed as a password, shown masked under it: the scheme's typo can be seen, the secret not.
    form.get_by_text("→ htps://hooks.slack.com/****1234").wait_for(timeout=10_000)
    assert secret not in form.inner_text()
    form.locator(".widget-button", has_text="Save").click()
    error = form.get_by_text("must start with https:// or http://")
    error.wait_for(timeout=10_000)
    field = form.locator(".widget-vbox:has(> .widget-hbox > .widget-toggle-button)")  # the URL's own box
    outlined = "e => getComputedStyle(e).borderTopColor"
    assert field.count() == 1
    assert field.evaluate(outlined) == COLOURS_RGB["failed"]
    form.screenshot(path=str(ARTIFACTS / "form-error.png"))

    # "show" reveals the whole URL to fix it; the error goes as soon as the field is edited.
    form.locator(".widget-toggle-button", has_text="show").click()
    texts = form.locator("input[type=text]")
    wait_until(lambda: typo in [i.input_value() for i in texts.all()], 10, "the whole URL shown")
    (shown,) = [i for i in texts.all() if i.input_value() == typo]
    shown.fill(typo.replace("htps", "https"))
    error.wait_for(state="detached", timeout=10_000)
    assert field.evaluate(outlined) != COLOURS_RGB["failed"]
    assert form.get_by_text("Not saved").count() == 0
    form.screenshot(path=str(ARTIFACTS / "form-revealed.png"))
    form.locator(".widget-button", has_text="Save").click()
    form.get_by_text("Saved slack").wait_for(timeout=10_000)
    assert secret not in form.inner_text()  # the saved notifier's URL is listed masked
    dark_theme(page, ".jp-Notebook .jp-InputArea-editor", "color")
    form.screenshot(path=str(ARTIFACTS / "form-saved-dark.png"))
