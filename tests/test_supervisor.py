"""``nbmonitor-watcher run``: a job that crashes, fails or stalls comes back, from its checkpoint."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

from nbmonitor.config import DEFAULT_EVENTS, NotifierConfig, NotifierStore
from nbmonitor.repo import Repo

from .helpers import Proc, nbw, wait_until
from .servers import HttpRecorder

COUNTER = """
import json, os, sys, time
import nbmonitor

attempt = int(os.environ["NBMONITOR_RESTART_COUNT"])
hang_on = {int(x) for x in os.environ.get("HANG_ON", "").split(",") if x}
with nbmonitor.watch(eta=1, grace=0.5, name="counter") as run:
    ckpt = nbmonitor.latest_checkpoint()
    state = json.loads((ckpt.path / "state.json").read_text()) if ckpt else {"step": -1, "total": 0}
    print("attempt", attempt, "pid", os.getpid(), "from", state["step"] + 1, flush=True)
    for step in range(state["step"] + 1, 200):
        state = {"step": step, "total": state["total"] + step * step}
        run.report_progress(step=step)
        print("step", step, flush=True)
        time.sleep(0.01)
        if step == 150 and attempt in hang_on:
            print("hanging", flush=True)
            time.sleep(120)
        if step % 10 == 9:
            with run.checkpoint(step=step, total=state["total"]) as path:
                (path / "state.json").write_text(json.dumps(state))
    print("final", state["total"], flush=True)
"""


def said_after(job: Proc, first: str, then: str) -> bool:
    """Whether the job printed the line ``then`` after a line that starts with ``first``."""
    lines = [line for _, line in job.lines]
    starts = [i for i, line in enumerate(lines) if line.startswith(first)]
    return bool(starts) and then in lines[starts[0] + 1 :]


def supervised(repo: Repo, script: Path, *options: str, env: dict[str, str] | None = None) -> Proc:
    args = [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "run", *options]
    return Proc([*args, "--", sys.executable, str(script)], repo.path, env=env)


def test_a_job_killed_five_times_and_hung_twice_ends_as_an_uninterrupted_run_would(
    tmp_path: Path, repo: Repo, http: HttpRecorder
) -> None:
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    events = [*DEFAULT_EVENTS, "finished"]
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}, events=events))
    env = {"NBMONITOR_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "HANG_ON": "5,6"}
    watcher = Proc.watcher(repo.path, "--interval", "0.5")  # a watcher beside it: still told once
    job = supervised(repo, script, "--max-restarts", "8", "--pause", "0.1", "--term-grace", "2", env=env)
    chosen = random.Random(1234)
    killed_at = []
    try:
        watcher.wait_for("watching", timeout=30)
        for attempt in range(5):
            job.wait_for(f"attempt {attempt} pid", timeout=60)
            line = job.matching(f"attempt {attempt} pid")[0].split()
            pid, start = int(line[3]), int(line[5])
            at = chosen.randrange(start, min(start + 40, 199))
            first, then = f"attempt {attempt} pid", f"step {at}"
            wait_until(lambda: said_after(job, first, then), 60, then)  # noqa: B023  # used at once
            subprocess.run(["kill", "-KILL", str(pid)], check=True)
            killed_at.append(at)
        assert job.wait_exit(180) == 0
        wait_until(lambda: any(r.json()["event"] == "finished" for r in http.answered()), 30, "finished")
    finally:
        job.stop()
        watcher.stop()
    uninterrupted = sum(step * step for step in range(200))
    assert job.matching("final") == [f"final {uninterrupted}"]
    starts = [int(line.split()[5]) for line in job.matching("attempt", "pid", "from")]
    assert len(starts) == 8  # five kills, two hangs, then the one that ends
    for at, resumed in zip(killed_at, starts[1:6], strict=True):
        assert at - 10 < resumed <= at + 1  # at most one checkpoint interval lost
    attempts = sorted((r.attempt, r.status) for r in repo.runs())
    assert attempts[-1] == (7, "finished")
    # A run per attempt that lived to write its file (a kill right at the start may come first).
    assert len({a for a, _ in attempts}) == len(attempts)
    (last,) = [r for r in repo.runs() if r.attempt == 7]
    assert "  attempt 8 of its job (restarted 7 time(s))" in nbw(repo, "status", last.id).stdout
    said = job.matching("nbmonitor-watcher run:")
    assert len([line for line in said if "crashed (killed by SIGKILL); restarting" in line]) == 5
    assert len([line for line in said if "stalled (run 'counter' at step 150); stopping it" in line]) == 2
    assert said[-1].endswith("attempt 8 (pid " + said[-1].split("(pid ")[1].split(")")[0] + ") finished")

    # Told: one restarting per restart, in place of the crash; each stall once; then the finish.
    posts = [r.json() for r in http.answered()]
    assert sorted(p["event"] for p in posts) == ["finished"] + ["restarting"] * 7 + ["stalled"] * 2
    restarts = sorted((p for p in posts if p["event"] == "restarting"), key=lambda p: p["restart"]["attempt"])
    assert [p["restart"]["attempt"] for p in restarts] == list(range(7))
    assert [p["restart"]["ended"] for p in restarts] == ["crashed"] * 5 + ["stalled"] * 2
    for post, resumed in zip(restarts, starts[1:], strict=True):
        restart = post["restart"]
        assert restart["max_restarts"] == 8
        assert restart["by"] == "nbmonitor-watcher run"
        # The next attempt began where it said.
        assert restart["checkpoint_step"] == (resumed - 1 if resumed else None)
        what = "crashed (killed by SIGKILL)" if restart["ended"] == "crashed" else "stalled"
        assert post["text"].startswith(f"counter {what} at step ")
        source = f"from the checkpoint at step {resumed - 1} saved " if resumed else "from the start"
        assert f", restarting {restart['attempt'] + 1} of 8 {source}" in post["text"]
    hung = [p for p in restarts if p["restart"]["ended"] == "stalled"]
    assert all(p["run"]["step"] == "150" for p in hung)
    assert all("about 1 step lost" in p["text"] for p in hung)  # the checkpoint at 149


HOPELESS = """
import sys
import nbmonitor

with nbmonitor.watch(name="oom"):
    print("loading the model", flush=True)
    print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
    sys.exit(1)
"""


def test_a_failure_matching_no_restart_on_is_not_retried(
    tmp_path: Path, repo: Repo, http: HttpRecorder
) -> None:
    script = tmp_path / "oom.py"
    script.write_text(HOPELESS)
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))
    job = supervised(repo, script, "--no-restart-on", "CUDA out of memory|SyntaxError", "--pause", "0.1")
    assert job.wait_exit(60) == 1  # the job's own exit status
    (line,) = job.matching("gave up")
    assert "attempt 1 (pid " in line
    assert (
        "failed (exit status 1); gave up: its last lines match --no-restart-on: RuntimeError: CUDA out"
        in line
    )
    assert len(job.matching("loading the model")) == 1  # one attempt only
    # One gave-up, sent by the supervisor itself (no watcher runs), with the line and the tail.
    (post,) = [r.json() for r in http.answered()]
    assert post["event"] == "gave-up"
    assert post["title"] == "oom gave up"
    assert post["text"].startswith("oom gave up after 1 attempt: failed (exit status 1) at step 0; its last")
    assert (
        "match --no-restart-on: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB." in post["text"]
    )
    assert [x["text"] for x in post["log_tail"]][-2:] == [
        "loading the model",
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    ]


def test_a_job_that_fails_before_it_makes_a_run_is_told_from_its_stderr(
    tmp_path: Path, repo: Repo, http: HttpRecorder
) -> None:
    script = tmp_path / "typo.py"
    script.write_text("import nbmonitor\nprint('hello'\n")
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))
    job = supervised(repo, script, "--no-restart-on", "SyntaxError", "--pause", "0.1")
    assert job.wait_exit(60) == 1
    assert job.matching("SyntaxError: '(' was never closed")  # passed through as it came
    (post,) = [r.json() for r in http.answered()]
    assert post["event"] == "gave-up"
    assert post["text"].startswith("typo.py gave up after 1 attempt: failed (exit status 1) at step 0;")
    assert "--no-restart-on: SyntaxError: '(' was never closed" in post["text"]
    assert post["log_tail"][-1]["text"] == "SyntaxError: '(' was never closed"
    assert not repo.runs()  # told, but no run file made up for it


def test_stopping_the_supervisor_stops_the_job_without_a_restart(tmp_path: Path, repo: Repo) -> None:
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    env = {"NBMONITOR_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "HANG_ON": "0"}
    job = supervised(repo, script, env=env)
    job.wait_for("hanging", timeout=60)
    job.popen.send_signal(signal.SIGTERM)
    assert job.wait_exit(30) == 128 + signal.SIGTERM  # the job's status: ended by SIGTERM
    assert job.matching("stopped; no restart")
    assert len(job.matching("attempt", "pid", "from")) == 1


def test_bad_arguments_are_one_line_errors_before_anything_starts(repo: Repo) -> None:
    for args, code, message in [
        (["--max-restarts", "-1", "--", "true"], 2, "expected a whole number of restarts >= 0, got '-1'"),
        (["--max-restarts", "many", "--", "true"], 2, "expected a whole number of restarts >= 0, got 'many'"),
        (
            ["--restart-on", "crashed,bored", "--", "true"],
            2,
            "expected some of crashed,failed,stalled, got 'bored'",
        ),
        (["--no-restart-on", "(unclosed", "--", "true"], 2, "not a regular expression"),
        (["--"], 1, "no command to run"),
        (["--", "no-such-command-here"], 1, "no command 'no-such-command-here' found"),
    ]:
        done = nbw(repo, "run", *args)
        assert done.returncode == code, done.stderr
        assert message in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("nbmonitor-watcher")
    assert not repo.runs()
