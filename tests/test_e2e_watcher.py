"""The watcher end to end: real scripts, a real nbmonitor-watcher process, real signals.

Timing bounds follow the rules (ETA + grace + one poll + slack), measured
from lines the processes print; every wait has a deadline.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.repo import Repo

from .helpers import Proc, run_id_from, wait_until
from .servers import Answer, HttpRecorder, Request, free_port

POLL = 0.2

# A script that reports progress with an ETA, and hangs between "hang" and the go file.
HANGS = """
import os, sys, time
import nbmonitor
go = sys.argv[1]
run = nbmonitor.Run(name="hanging", expect_next_in=1, total=10)
for _ in range(3):
    run.report_progress()
    time.sleep(0.1)
print("hang", run.id, flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.02)
print("resume", flush=True)
for _ in range(3):
    run.report_progress()
    time.sleep(0.1)
run.report_successful_finish()
"""

# Reports progress until killed.
BUSY = """
import time, nbmonitor
run = nbmonitor.Run(name="busy", expect_next_in=30)
print("started", run.id, flush=True)
while True:
    run.report_progress()
    time.sleep(0.05)
"""

RAISES = """
import time, nbmonitor
with nbmonitor.watch(eta=30, name="raiser"):
    for _ in nbmonitor.track(range(3)):
        time.sleep(0.05)
    raise ValueError("loss is NaN at step 3")
"""

QUIET_EXIT = """
import time, nbmonitor
run = nbmonitor.Run(name="quiet", expect_next_in=1)
for _ in range(5):
    run.report_progress()
    time.sleep(0.05)
print("done", run.id, flush=True)
"""

# Keeps a short promise: progress every 20 ms for four seconds.
KEEPS_PROMISE = """
import sys, time, nbmonitor
eta, grace = float(sys.argv[1]), None if sys.argv[2] == "none" else float(sys.argv[2])
with nbmonitor.watch(eta=eta, grace=grace, name="keeps-promise") as run:
    print("started", run.id, flush=True)
    end = time.monotonic() + 4
    while time.monotonic() < end:
        run.report_progress()
        time.sleep(0.02)
"""

# A run whose name and error try to forge event lines and steer the terminal.
FORGES = """
import nbmonitor
name = "train\\n2099-01-01 00:00:00 FINISHED forged [run 00000000]\\x1b[2J"
with nbmonitor.watch(name=name) as run:
    print("started", run.id, flush=True)
    raise ValueError("bad\\r\\n2099-01-01 00:00:00 RECOVERED forged")
"""


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    texts = {"hangs": HANGS, "busy": BUSY, "raises": RAISES, "quiet": QUIET_EXIT, "keeps": KEEPS_PROMISE}
    texts["forges"] = FORGES
    for name, text in texts.items():
        (folder / f"{name}.py").write_text(text)
    return folder


def start_watcher(repo: Repo, procs: list[Proc], *args: str) -> Proc:
    watcher = Proc.watcher(repo.path, "--interval", str(POLL), *args)
    procs.append(watcher)
    watcher.wait_for("watching")
    return watcher


def run_script(scripts: Path, name: str, repo: Repo, procs: list[Proc], *args: str) -> Proc:
    proc = Proc.python(scripts / f"{name}.py", *args, repo=repo.path)
    procs.append(proc)
    return proc


def test_1_a_hang_is_reported_once_as_stalled_then_once_as_recovered(
    repo: Repo, scripts: Path, procs: list[Proc], tmp_path: Path
) -> None:
    watcher = start_watcher(repo, procs)
    go = tmp_path / "go"
    script = run_script(scripts, "hangs", repo, procs, str(go))
    hung_at = script.wait_for("hang")
    run_id = run_id_from(script, "hang")
    stalled_at = watcher.wait_for("STALLED", run_id[:8], timeout=15)
    # ETA 1 s + default grace 2 s + one poll + 1 s
    assert stalled_at - hung_at <= 1 + 2 + POLL + 1
    go.touch()
    watcher.wait_for("RECOVERED", run_id[:8], timeout=10)
    watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    assert script.wait_exit() == 0
    assert len(watcher.matching("STALLED", run_id[:8])) == 1
    assert len(watcher.matching("RECOVERED", run_id[:8])) == 1
    assert "no progress for" in watcher.matching("STALLED")[0]
    assert "hanging stalled: " in watcher.matching("STALLED")[0]


def test_2_a_killed_script_is_crashed_within_two_polls(repo: Repo, scripts: Path, procs: list[Proc]) -> None:
    watcher = start_watcher(repo, procs)
    script = run_script(scripts, "busy", repo, procs)
    run_id = run_id_from(script, "started")
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file")
    script.popen.send_signal(signal.SIGKILL)
    script.popen.wait(10)
    killed_at = time.monotonic()
    crashed_at = watcher.wait_for("CRASHED", run_id[:8], timeout=10)
    assert crashed_at - killed_at <= 2 * POLL + 0.5
    assert len(watcher.matching(run_id[:8])) == 1


def test_3_a_script_that_raises_is_failed_with_the_exception(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    watcher = start_watcher(repo, procs)
    script = run_script(scripts, "raises", repo, procs)
    assert script.wait_exit() == 1
    watcher.wait_for("FAILED", "raiser failed: ")
    (line,) = watcher.matching("FAILED", "raiser failed: ")
    assert "ValueError: loss is NaN at step 3" in line
    assert "raises.py:6" in line
    assert "ValueError: loss is NaN at step 3" in script.text  # the traceback still shows


def test_4_a_script_that_exits_without_finishing_raises_no_alarm(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    watcher = start_watcher(repo, procs)
    script = run_script(scripts, "quiet", repo, procs)
    run_id = run_id_from(script, "done")
    assert script.wait_exit() == 0
    watcher.wait_for("FINISHED", run_id[:8])
    # Well past its ETA + grace: still nothing but the finish.
    wait_until(lambda: repo.read_run(run_id).status == "finished", 5, "the finish on disk")
    watcher_polls_past_deadline(repo, run_id, 1 + 2 + 2 * POLL)
    assert watcher.matching(run_id[:8]) == watcher.matching("FINISHED", run_id[:8])
    assert len(watcher.matching(run_id[:8])) == 1


@pytest.mark.parametrize(
    ("eta", "grace", "watcher_args"),
    [("0.5", "0.2", ()), ("0.8", "none", ("--grace", "0"))],
    ids=["watch-eta-0.5-grace-0.2", "eta-0.8-start-grace-0"],
)
def test_a_healthy_loop_with_a_short_eta_is_never_called_stalled(
    repo: Repo, scripts: Path, procs: list[Proc], eta: str, grace: str, watcher_args: tuple[str, ...]
) -> None:
    # Seen: run files written once a second made such a loop "stalled", then "recovered", every second.
    watcher = start_watcher(repo, procs, *watcher_args)
    script = run_script(scripts, "keeps", repo, procs, eta, grace)
    run_id = run_id_from(script, "started")
    assert script.wait_exit() == 0
    watcher.wait_for("FINISHED", run_id[:8])
    assert watcher.matching(run_id[:8]) == watcher.matching("FINISHED", run_id[:8])


def test_run_text_never_forges_a_line_of_the_watcher_or_of_status(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    watcher = start_watcher(repo, procs)
    script = run_script(scripts, "forges", repo, procs)
    run_id = run_id_from(script, "started")
    assert script.wait_exit() == 1
    watcher.wait_for("FAILED", run_id[:8])
    assert [line for _, line in watcher.lines if line.startswith("2099")] == []
    assert "\x1b" not in watcher.text
    (line,) = watcher.matching(run_id[:8])
    assert "train\\n2099-01-01 00:00:00 FINISHED forged [run 00000000]\\x1b[2J failed:" in line
    assert "ValueError: bad\\r\\n2099-01-01 00:00:00 RECOVERED forged" in line
    status = Proc([sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "status"], repo.path)
    assert status.wait_exit() == 0
    assert [line for _, line in status.lines if line.startswith("2099")] == []
    assert "\x1b" not in status.text
    assert len(status.matching(run_id[:8])) == 1


def watcher_polls_past_deadline(repo: Repo, run_id: str, seconds: float) -> None:
    """Wait until ``seconds`` have passed since the run's last progress (by its own record)."""
    last = repo.read_run(run_id).last_progress_at
    wait_until(lambda: time.time() > last + seconds, seconds + 5, "the deadline to pass")


def test_5_a_watcher_killed_during_a_stall_reports_it_once_and_what_happened_while_it_was_down(
    repo: Repo, scripts: Path, procs: list[Proc], tmp_path: Path
) -> None:
    first = start_watcher(repo, procs)
    script = run_script(scripts, "hangs", repo, procs, str(tmp_path / "never"))
    run_id = run_id_from(script, "hang")
    first.wait_for("STALLED", run_id[:8], timeout=15)
    first.popen.send_signal(signal.SIGKILL)
    first.wait_exit()
    busy = run_script(scripts, "busy", repo, procs)
    busy_id = run_id_from(busy, "started")
    wait_until(lambda: repo.run_path(busy_id).exists(), 10, "the busy run's file")
    busy.popen.send_signal(signal.SIGKILL)
    busy.wait_exit()
    second = start_watcher(repo, procs)
    second.wait_for("CRASHED", busy_id[:8], timeout=10)
    # Two runs that end after the restart: once both are reported, whole polls have
    # gone by in which the old stall was looked at again.
    for _ in range(2):
        quiet = run_script(scripts, "quiet", repo, procs)
        second.wait_for("FINISHED", run_id_from(quiet, "done")[:8])
    assert second.matching("STALLED") == []
    assert [p.name for p in (repo.events_dir / run_id).iterdir()] == ["stalled-3.json"]
    claim = json.loads((repo.events_dir / run_id / "stalled-3.json").read_text())
    assert claim["event"] == "stalled"
    assert claim["seen_by"].startswith(f"watcher {first.popen.pid}@")


def test_6_a_second_watcher_on_the_same_repo_exits_non_zero_naming_the_first(
    repo: Repo, procs: list[Proc]
) -> None:
    first = start_watcher(repo, procs)
    second = Proc.watcher(repo.path)
    procs.append(second)
    assert second.wait_exit() == 1
    assert f"a watcher is already running for {repo.path} (pid {first.popen.pid})" in second.text
    assert first.popen.poll() is None


def test_7_a_truncated_run_file_is_named_in_a_warning_and_the_others_are_still_watched(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    watcher = start_watcher(repo, procs)
    script = run_script(scripts, "busy", repo, procs)
    run_id = run_id_from(script, "started")
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file")
    truncated = repo.runs_dir / f"{'e' * 32}.json"
    truncated.write_bytes(repo.run_path(run_id).read_bytes()[:57])
    watcher.wait_for("WARNING", str(truncated), "not valid JSON")
    script.popen.send_signal(signal.SIGKILL)
    watcher.wait_for("CRASHED", run_id[:8])
    assert len(watcher.matching(str(truncated))) == 1


FLEET = """
import sys, time, nbmonitor
run = nbmonitor.Run(name=f"fleet-{sys.argv[1]}", expect_next_in=2)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    run.report_progress(expect_next_in=2)
    time.sleep(0.01)
run.report_successful_finish()
"""


def test_8_fifty_processes_reporting_at_once_leave_no_corrupt_file_and_no_false_alarm(
    repo: Repo, tmp_path: Path, procs: list[Proc]
) -> None:
    watcher = start_watcher(repo, procs)
    script = tmp_path / "fleet.py"
    script.write_text(FLEET)
    fleet = [Proc.python(script, str(i), "10", repo=repo.path) for i in range(50)]
    procs.extend(fleet)
    reads = 0
    while any(p.popen.poll() is None for p in fleet):
        for path in repo.runs_dir.glob("[0-9a-f]*.json"):
            json.loads(path.read_bytes())  # never half a file
            reads += 1
    assert [p.wait_exit() for p in fleet] == [0] * 50, [p.text for p in fleet if p.popen.returncode]
    wait_until(lambda: len(watcher.matching("FINISHED")) == 50, 15, "fifty finishes")
    assert reads > 100
    runs = repo.runs()
    assert len(runs) == 50
    assert {r.status for r in runs} == {"finished"}
    alarms = [line for _, line in watcher.lines if any(k in line for k in ("STALLED", "CRASHED", "FAILED"))]
    assert alarms == []
    assert watcher.matching("WARNING") == []


def crash_a_busy_script(scripts: Path, repo: Repo, procs: list[Proc]) -> str:
    busy = run_script(scripts, "busy", repo, procs)
    run_id = run_id_from(busy, "started")
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file")
    busy.popen.send_signal(signal.SIGKILL)
    busy.wait_exit()
    return run_id


def webhook_posts(http: HttpRecorder, run_id: str, status: int = 200) -> list[Request]:
    return [r for r in http.answered(status) if r.json().get("run", {}).get("id") == run_id]


def a_later_delivery_then_an_empty_outbox(
    http: HttpRecorder, scripts: Path, repo: Repo, procs: list[Proc]
) -> str:
    """A later event is delivered and nothing is left to send: the restarted watcher has made
    whole passes since, so anything it were to repeat would have been sent by now."""
    later = crash_a_busy_script(scripts, repo, procs)
    wait_until(lambda: webhook_posts(http, later), 10, "a later delivery")
    # The server counts a post before the sender reads the answer and clears the file.
    wait_until(lambda: not list(repo.outbox_dir.rglob("*.json")), 10, "an empty outbox")
    return later


def test_a_running_watcher_uses_notifiers_added_after_it_started(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    http = HttpRecorder()
    try:
        watcher = start_watcher(repo, procs)
        NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))
        NotifierStore(repo).add(NotifierConfig.create("logger"))
        run_id = crash_a_busy_script(scripts, repo, procs)
        watcher.wait_for("CRASHED", run_id[:8])
        watcher.wait_for("NOTIFY busy crashed:")
        wait_until(lambda: webhook_posts(http, run_id), 10, "the webhook delivery")
        (post,) = webhook_posts(http, run_id)
        assert post.json()["event"] == "crashed"
    finally:
        http.close()


def test_a_delivery_pending_when_the_watcher_is_killed_is_sent_once_after_restart(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    http = HttpRecorder()
    http.default = Answer(500, "endpoint down")
    try:
        secret = "hook-secret-0123456789abcdef"
        NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/{secret}"}))
        first = start_watcher(repo, procs)
        run_id = crash_a_busy_script(scripts, repo, procs)
        wait_until(lambda: webhook_posts(http, run_id, 500), 10, "a failed delivery")
        first.wait_for("endpoint down")  # the failure was logged (without the secret URL, below)
        first.popen.send_signal(signal.SIGKILL)
        first.wait_exit()
        assert repo.pending_of(run_id, "end"), "the delivery is still pending"
        http.default = Answer(200, "ok")
        second = start_watcher(repo, procs)
        wait_until(lambda: webhook_posts(http, run_id), 10, "the delivery after restart")
        a_later_delivery_then_an_empty_outbox(http, scripts, repo, procs)
        assert len(webhook_posts(http, run_id)) == 1
        assert second.matching("CRASHED", run_id[:8]) == []  # the event itself is not repeated
        assert secret not in first.text + second.text
    finally:
        http.close()


def test_a_watcher_killed_mid_request_sends_again_after_restart_with_the_same_idempotency_key(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    http = HttpRecorder()
    answer = threading.Event()
    http.script = [Answer(200, "too late", hold=answer)]  # receives the request, answers later
    try:
        NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))
        first = start_watcher(repo, procs)
        run_id = crash_a_busy_script(scripts, repo, procs)
        wait_until(lambda: webhook_posts(http, run_id), 10, "the request to reach the endpoint")
        first.popen.send_signal(signal.SIGKILL)  # while it waits for the answer
        first.wait_exit()
        answer.set()  # the answer goes to a dead watcher
        second = start_watcher(repo, procs)
        wait_until(lambda: len(webhook_posts(http, run_id)) == 2, 10, "the delivery after restart")
        later = a_later_delivery_then_an_empty_outbox(http, scripts, repo, procs)
    finally:
        http.close()
    # Whether the first request counted only the endpoint knows: it is sent again, the same,
    # with the same Idempotency-Key so a receiver that keeps keys can drop it. Nothing more.
    first_try, retry = webhook_posts(http, run_id)
    assert first_try.headers["Idempotency-Key"] == retry.headers["Idempotency-Key"] == f"{run_id}/end"
    assert first_try.json() == retry.json()
    assert len(webhook_posts(http, later)) == 1
    assert second.matching("CRASHED", run_id[:8]) == []  # the event is not claimed again


def test_an_endpoint_that_refuses_connections_gets_each_pending_notification_once_when_it_is_up(
    repo: Repo, scripts: Path, procs: list[Proc]
) -> None:
    port = free_port()
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"http://127.0.0.1:{port}/hook"}))
    watcher = start_watcher(repo, procs)
    crashed = [crash_a_busy_script(scripts, repo, procs) for _ in range(2)]
    watcher.wait_for("cannot reach", "Connection refused", timeout=10)
    http = HttpRecorder(port)  # the endpoint comes up
    try:
        wait_until(lambda: all(webhook_posts(http, r) for r in crashed), 30, "both deliveries")
        wait_until(lambda: not list(repo.outbox_dir.rglob("*.json")), 10, "an empty outbox")
    finally:
        http.close()
    assert [len(webhook_posts(http, r)) for r in crashed] == [1, 1]
    assert len(http.requests) == 2
