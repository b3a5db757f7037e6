"""%%watch and %watch through a real IPython InteractiveShell."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbmonitor
from nbmonitor import _writer
from nbmonitor.kernel import KernelAgent
from nbmonitor.magics import _agents
from nbmonitor.record import RunRecord
from nbmonitor.repo import Repo

from .helpers import ipython_shell


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    repo = tmp_path / "magic-repo"
    monkeypatch.setenv("NBMONITOR_REPO", str(repo))
    monkeypatch.setattr(_writer, "_writer", _writer.Writer())
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "nbmonitor")
    shell.user_ns["repo"] = Repo(repo)
    yield shell
    shell.run_line_magic("unload_ext", "nbmonitor")
    _writer.get().stop()


def agent(ip: InteractiveShell) -> KernelAgent:
    return _agents[ip]


def runs(ip: InteractiveShell) -> dict[str, RunRecord]:
    return {r.name: r for r in ip.user_ns["repo"].runs()}


def cell(ip: InteractiveShell, source: str) -> Any:
    return ip.run_cell(source)


def test_loading_starts_nothing_heavy(ip: InteractiveShell) -> None:
    assert ip.magics_manager is not None
    assert "watch" in ip.magics_manager.magics["cell"]
    assert "watch" in ip.magics_manager.magics["line"]
    assert not [t for t in threading.enumerate() if t.name.startswith("nbmonitor")]
    assert agent(ip).senders == {}


def test_a_watched_cell_is_a_run_that_finishes_and_keeps_its_result(ip: InteractiveShell) -> None:
    result = cell(ip, "%%watch --eta 3 --name first --total 4 --grace 7\nx = 20\nx * 2 + 2")
    assert result.success
    assert result.result == 42
    record = runs(ip)["first"]
    assert (record.status, record.eta, record.grace, record.total) == ("finished", 3.0, 7.0, 4)
    assert record.origin.kind == "interactive"


def test_progress_track_and_tqdm_inside_the_cell_count_for_its_run(ip: InteractiveShell) -> None:
    # tqdm bars count as the monitor sees them, ten times a second: this loop spans several looks.
    cell(ip, "%%watch --name reports\nimport nbmonitor\nfor i in range(5):\n    nbmonitor.report_progress()")
    cell(ip, "%%watch --name tracked\nfor i in nbmonitor.track(range(7)):\n    pass")
    cell(
        ip,
        "%%watch --name bars\nimport io, time, tqdm\n"
        "for i in tqdm.tqdm(range(9), file=io.StringIO(), mininterval=0):\n    time.sleep(0.05)",
    )
    found = runs(ip)
    assert (found["reports"].progress, found["reports"].step) == (5, 5)
    assert (found["tracked"].step, found["tracked"].total) == (7, 7)
    assert (found["bars"].progress, found["bars"].total) == (9, 9)  # the bar's total is the cell's
    assert set(found) == {"reports", "tracked", "bars"}  # track() made no run of its own


LEFT_RUNNING = """%%watch --name first
import io, threading, time, tqdm, nbmonitor
stop = threading.Event()
def left_running():
    while not stop.is_set():  # a new bar now and then, each moving, and bare progress reports
        bar = tqdm.tqdm(file=io.StringIO(), mininterval=0)
        for _ in range(20):
            nbmonitor.report_progress()
            bar.update()
            time.sleep(0.005)
        bar.close()
threading.Thread(target=left_running, daemon=True).start()
time.sleep(0.2)
"""

STUCK = """%%watch --name second
def helper():
    for _ in range(7):
        nbmonitor.report_progress()
thread = threading.Thread(target=helper)
thread.start()
thread.join()
bar = tqdm.tqdm(range(4), file=io.StringIO(), mininterval=0)
for _ in bar:
    pass
time.sleep(0.5)  # stuck, while the thread of the first cell keeps reporting
"""


def test_a_thread_left_by_an_earlier_cell_counts_for_no_later_cell(ip: InteractiveShell) -> None:
    # Its progress and its tqdm bars kept a later, stuck %%watch cell from ever stalling.
    try:
        cell(ip, LEFT_RUNNING)
        cell(ip, STUCK)
    finally:
        ip.user_ns["stop"].set()
    second = runs(ip)["second"]
    assert second.progress == 7 + 4  # its own thread's reports and its own bar, nothing else
    assert runs(ip)["first"].progress > 0


def test_an_exception_fails_the_run_and_still_fails_the_cell(ip: InteractiveShell, capsys: Any) -> None:
    result = cell(ip, "%%watch --name broken\nraise KeyError('weights')")
    assert isinstance(result.error_in_exec, KeyError)
    record = runs(ip)["broken"]
    assert record.status == "failed"
    assert record.error is not None
    assert record.error.summary() == "KeyError: 'weights'"
    assert "KeyError: 'weights'" in capsys.readouterr().out  # the usual traceback


def test_a_bare_track_loop_left_by_an_error_in_a_cell_is_failed(ip: InteractiveShell) -> None:
    result = cell(
        ip,
        "import nbmonitor\nfor i in nbmonitor.track(range(10), name='bare'):\n"
        "    if i == 3:\n        raise ValueError('bad batch')",
    )
    assert isinstance(result.error_in_exec, ValueError)
    record = runs(ip)["bare"]
    assert (record.status, record.step) == ("failed", 3)
    assert record.error is not None
    assert record.error.summary() == "ValueError: bad batch"


def test_keyboard_interrupt_marks_it_interrupted(ip: InteractiveShell) -> None:
    cell(ip, "%%watch --name stopped\nraise KeyboardInterrupt")
    assert runs(ip)["stopped"].status == "interrupted"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--eta -1", "argument --eta: must be a finite number of seconds > 0, got -1"),
        ("--eta nan", "argument --eta: must be a finite number of seconds > 0, got nan"),
        ("--eta soon", "argument --eta: expected a number of seconds, got 'soon'"),
        ("--grace -2", "argument --grace: must be a finite number of seconds >= 0, got -2"),
        ("--total 2.5", "argument --total: expected a whole number, got '2.5'"),
        ("--frobnicate", "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_give_one_line_and_the_cell_does_not_run(
    ip: InteractiveShell, capsys: Any, line: str, message: str
) -> None:
    ip.user_ns.pop("ran", None)
    result = cell(ip, f"%%watch {line}\nran = True")
    assert "ran" not in ip.user_ns
    assert not result.success
    out = capsys.readouterr()
    assert f"UsageError: %%watch: {message}" in out.err + out.out
    assert runs(ip) == {}


def test_arguments_are_quoted_as_in_a_shell(ip: InteractiveShell) -> None:
    assert cell(ip, '%%watch --name "train resnet50" --eta 3\nx = 1').success
    assert cell(ip, "%%watch --name 'it''s fine'\nx = 1").success
    assert set(runs(ip)) == {"train resnet50", "its fine"}
    result = cell(ip, '%%watch --name "unclosed\nx = 2')
    assert result.error_before_exec is not None or result.error_in_exec is not None
    assert "No closing quotation" in str(result.error_in_exec or result.error_before_exec)


def test_the_help_lists_every_option(ip: InteractiveShell) -> None:
    doc = ip.find_cell_magic("watch").__doc__
    for option in ("--eta SECONDS", "--name NAME", "--total N", "--grace SECONDS", "--no-usage", "--quiet"):
        assert option in doc
    for command in ("%watch auto", "%watch off", "%watch status"):
        assert command in doc


def test_auto_makes_long_cells_runs_and_leaves_short_ones_alone(ip: InteractiveShell, capsys: Any) -> None:
    cell(ip, "%watch auto --after 0.2")
    assert "longer than 0.2 s is now a run" in capsys.readouterr().out
    wait = "from tests.helpers import wait_until\nfrom nbmonitor.magics import _agents\n"
    wait += "a = _agents[get_ipython()]\n"
    cell(ip, "quick = 1")
    cell(ip, wait + "wait_until(lambda: a.auto.run, 10, 'an automatic run')")
    failed = cell(ip, wait + "wait_until(lambda: a.auto.run, 10, 'an automatic run')\n1 / 0")
    assert isinstance(failed.error_in_exec, ZeroDivisionError)
    statuses = sorted((r.status, r.origin.kind) for r in ip.user_ns["repo"].runs())
    assert statuses == [("failed", "interactive"), ("finished", "interactive")]
    cell(ip, "%watch off")
    assert agent(ip).auto is None
    assert not _writer.get().keep_alive


def test_status_lists_open_runs_the_watcher_and_events(ip: InteractiveShell, capsys: Any) -> None:
    cell(ip, "%%watch --name done\npass")
    cell(ip, "%watch status")
    out = capsys.readouterr().out
    assert "0 open run(s) in this kernel" in out
    assert "standalone watcher:" in out
    assert "automatic runs: off" in out


def test_bad_line_commands_are_one_line_errors(ip: InteractiveShell, capsys: Any) -> None:
    cell(ip, "%watch sometimes")
    cell(ip, "%watch auto --after -3")
    err = capsys.readouterr()
    text = err.err + err.out
    assert "UsageError: %watch: argument auto|off|status: invalid choice: 'sometimes'" in text
    assert "UsageError: %watch auto: argument --after: must be a finite number of seconds >= 0" in text


def test_unload_removes_magics_hooks_and_the_observer(ip: InteractiveShell) -> None:
    the_agent = agent(ip)
    ip.run_line_magic("unload_ext", "nbmonitor")
    assert ip.magics_manager is not None
    assert "watch" not in ip.magics_manager.magics["cell"]
    assert the_agent.on_tick not in _writer.get().observers
    assert not any(h in ip.events.callbacks["pre_run_cell"] for h in the_agent.hooks.values())
    ip.run_line_magic("load_ext", "nbmonitor")  # the fixture unloads again


def test_nothing_is_printed_when_the_repo_cannot_be_written(
    ip: InteractiveShell, capsys: Any, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    os.environ["NBMONITOR_REPO"] = str(blocked / "repo")
    cell(ip, "%%watch --name nowhere --quiet\nfor i in nbmonitor.track(range(3)):\n    pass")
    out = capsys.readouterr()
    assert out.out == out.err == ""
    cell(ip, "%watch status")
    assert "cannot write the file of run 'nowhere'" in capsys.readouterr().out
    assert nbmonitor.current_run() is None


def test_a_watched_cell_records_its_usage_for_the_lab_panel(ip: InteractiveShell) -> None:
    code = (
        "%%watch --name measured\n"
        "import nbmonitor\n"
        "from tests.helpers import wait_until\n"
        "run = nbmonitor.current_run()\n"
        "on_disk = lambda: repo.run_path(run.id).exists() and repo.read_run(run.id).usage\n"
        "wait_until(on_disk, 15, 'a usage reading in the run file')"
    )
    assert cell(ip, code).success
    usage = runs(ip)["measured"].usage
    assert usage is not None
    assert usage.rss > 0
    assert usage.cpu_percent >= 0
    quiet = cell(ip, "%%watch --name unmeasured --no-usage\npass")
    assert quiet.success
    assert runs(ip)["unmeasured"].usage is None
