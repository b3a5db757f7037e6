"""nbmonitor-watcher's commands, run as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbmonitor
from nbmonitor import cli
from nbmonitor.record import RunUsage, UsagePeak
from nbmonitor.repo import Repo
from nbmonitor.watcher import watcher_info

from .helpers import child_env, nbw, wait_until
from .records import sample


@pytest.fixture
def detached(repo: Repo) -> Iterator[Repo]:
    yield repo
    nbw(repo, "stop")


def test_detach_starts_a_background_watcher_that_status_and_stop_see(detached: Repo) -> None:
    repo = detached
    started = nbw(repo, "start", "--detach", "--interval", "0.2")
    assert started.returncode == 0, started.stderr
    info = watcher_info(repo)
    assert info is not None
    assert f"started (pid {info['pid']})" in started.stdout
    status = nbw(repo, "status")
    assert f"watcher: running, pid {info['pid']}" in status.stdout
    again = nbw(repo, "start", "--detach")
    assert again.returncode == 1
    assert f"already running for {repo.path} (pid {info['pid']})" in again.stderr
    stopped = nbw(repo, "stop")
    assert stopped.returncode == 0
    assert f"stopped the watcher (pid {info['pid']})" in stopped.stdout
    assert watcher_info(repo) is None
    assert not repo.watcher_file.exists()
    log = repo.log_file.read_text()
    assert "watching" in log
    assert "stopped" in log


def test_log_and_lock_files_are_private_under_any_umask(detached: Repo) -> None:
    repo = detached
    for args in (["notifiers", "add", "logger", "--yes"], ["start", "--detach", "--interval", "0.2"]):
        done = subprocess.run(
            [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), *args],
            env=child_env(repo.path),
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=lambda: os.umask(0),  # the modes must not depend on it
        )
        assert done.returncode == 0, done.stderr
    for name in ("watcher.log", "watcher.lock", "notifiers.json"):
        path = repo.path / name
        if path.exists():  # a lock file may be removed when released
            assert path.stat().st_mode & 0o777 == 0o600, name
    assert (repo.path / "watcher.log").exists()


def test_sigterm_stops_a_foreground_watcher_cleanly(repo: Repo) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "start"],
        env=child_env(repo.path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: watcher_info(repo), 15, "the watcher to start")
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "stopped" in out
    assert not repo.watcher_file.exists()


def test_stop_without_a_watcher_says_so(repo: Repo) -> None:
    done = nbw(repo, "stop")
    assert (done.returncode, done.stdout.strip()) == (0, f"no watcher is running for {repo.path}")


def test_status_lists_runs_with_their_state(repo: Repo) -> None:
    import time

    now = time.time()
    repo.write_run(
        sample(
            id="a" * 32,
            name="stuck",
            pid=os.getpid(),
            process_start=None,
            boot_id=None,
            host=os.uname().nodename,
            eta=1.0,
            step=40,
            total=100,
            last_progress_at=now - 600,
            started_at=now - 700,
        )
    )
    peaks = (UsagePeak("memory", 3 * 2**30, "DataLoader worker 2", 2**30),)
    repo.write_run(
        sample(
            id="b" * 32,
            name="done",
            status="finished",
            ended_at=now,
            started_at=now - 5,
            usage=RunUsage(10.0, 2**30, None, peaks),
        )
    )
    done = nbw(repo, "status")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("watcher: not running")
    assert lines[1].split() == [
        "NAME",
        "ORIGIN",
        "STATUS",
        "STEP",
        "SINCE",
        "PROGRESS",
        "PEAK",
        "MEMORY",
        "ID",
    ]
    stuck = next(line for line in lines if line.startswith("stuck"))
    assert "stalled" in stuck
    assert "40/100" in stuck
    assert "10 min" in stuck
    (done_line,) = (line for line in lines if line.startswith("done"))
    assert "finished" in done_line
    assert "3.0 GB, most DataLoader worker 2" in done_line


def test_status_shows_a_group_as_one_row_with_its_members_under_it(repo: Repo) -> None:
    import time

    from nbmonitor.record import GroupField, WorkerField

    now, host = time.time(), os.uname().nodename
    live = {"pid": os.getpid(), "process_start": None, "boot_id": None, "host": host, "started_at": now - 60}
    for rank, step in enumerate((120, 80, 120)):
        repo.write_run(
            sample(
                id=f"{rank + 1:032x}", name="ddp", eta=1.0, step=step, total=None,
                last_progress_at=now - (95 if rank == 1 else 90), waiting=None if rank == 1 else "all_reduce",
                group=GroupField("job-1", "torchrun", rank, 3, rank), **live,
            )
        )  # fmt: skip
    workers = (WorkerField(4242, "ForkPoolWorker-1", 7, state="crashed", exit="killed by SIGKILL"),)
    repo.write_run(sample(id="f" * 32, name="pooled", eta=None, workers=workers, **live))
    lines = nbw(repo, "status").stdout.splitlines()
    group = next(i for i, line in enumerate(lines) if line.startswith("ddp [torchrun job job-1, 3 ranks]"))
    assert re.search(r" stalled +80 +1 min 35 s ", lines[group])  # the slowest rank's step and silence
    members = lines[group + 1 : group + 4]
    assert [line.split(",")[0].strip() for line in members] == [f"rank {r} on {host}" for r in range(3)]
    assert "(to blame)" in members[1]
    assert "(in all_reduce)" in members[0]
    pooled = next(i for i, line in enumerate(lines) if line.startswith("pooled"))
    assert lines[pooled + 1].startswith("  ForkPoolWorker-1, pid 4242")
    assert "crashed: killed by SIGKILL" in lines[pooled + 1]


def test_status_of_an_empty_repo(repo: Repo) -> None:
    assert "no runs yet" in nbw(repo, "status").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "--interval", "0"], "--interval: must be between 0.05 and 3600 seconds, got 0"),
        (["start", "--interval", "nan"], "--interval: must be between"),
        (["start", "--interval", "soon"], "--interval: expected a number of seconds, got 'soon'"),
        (["start", "--grace", "-1"], "--grace: must be between 0 and 86400 seconds, got -1"),
        (["start", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["launch"], "invalid choice: 'launch'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_naming_them(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_repo_that_is_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("")
    assert cli.main(["--repo", str(tmp_path / "f"), "start"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"nbmonitor-watcher: error: {tmp_path / 'f'} is a file, not a repo directory; "
        "choose a directory of your own with $NBMONITOR_REPO, --repo or repo="
    )


BAD_REPOS = {
    "relative": ("runs", "NBMONITOR_REPO must be an absolute path, got 'runs'"),
    "a-file": ("{tmp}/file", "is a file, not a repo directory"),
    "under-a-file": ("{tmp}/file/repo", "cannot be a repo, part of its path is a file"),
    "not-writable": ("/proc/nbmonitor-repo", "cannot create the repo /proc/nbmonitor-repo"),
}


@pytest.mark.parametrize(
    "command",
    [["status"], ["start"], ["notifiers", "list"], ["notifiers", "add", "logger", "--yes"], ["stop"]],
)
@pytest.mark.parametrize("where", BAD_REPOS.values(), ids=BAD_REPOS.keys())
def test_a_bad_nbmonitor_repo_is_one_line_for_every_command(
    tmp_path: Path, where: tuple[str, str], command: list[str]
) -> None:
    (tmp_path / "file").write_text("")
    location, says = where
    env = child_env(tmp_path / "unused") | {"NBMONITOR_REPO": location.format(tmp=tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "nbmonitor", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    if location.startswith("/proc") and command[0] != "start" and command[1:2] != ["add"]:
        # Reading a repo that does not exist is fine: there is nothing in it yet.
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("nbmonitor-watcher: error: ")
    assert says in line
    assert done.stdout == ""


def test_output_cut_short_by_its_reader_ends_quietly(repo: Repo) -> None:
    # `status | head -1`: the reader leaves after one line; there was a BrokenPipeError traceback.
    from nbmonitor.config import NotifierConfig, NotifierStore

    for n in range(3000):
        repo.write_run(sample(id=f"{n:032x}", name=f"run-{n}", status="finished", ended_at=2000.0))
    store = NotifierStore(repo)
    for _ in range(600):
        store.add(NotifierConfig.create("logger", {"file": "/tmp/some/notify-log-file-with-a-long-name.log"}))
    for command in ("status --all", "notifiers list"):
        done = subprocess.run(
            f"set -o pipefail; {sys.executable} -m nbmonitor --repo {repo.path} {command} | head -1",
            shell=True,
            executable="/bin/bash",
            env=child_env(repo.path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert len(done.stdout.splitlines()) == 1


def test_the_console_script_and_python_m_are_the_same_program(repo: Repo) -> None:
    script = Path(sys.executable).with_name("nbmonitor-watcher")
    if not script.exists():
        pytest.skip("nbmonitor is not installed with its console script in this environment")
    by_script = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    by_module = nbw(repo, "--version")
    assert by_script.stdout == by_module.stdout == f"nbmonitor-watcher {nbmonitor.__version__}\n"


def test_status_of_one_run_tells_where_it_was_stuck(repo: Repo) -> None:
    import time

    from nbmonitor.record import StackFrame

    now = time.time()
    stack = (
        StackFrame("wait_for_batch", "/home/me/data.py", 42, "batch = queue.get()"),
        StackFrame("train", "/home/me/train.py", 88, "batch = wait_for_batch()"),
    )
    repo.write_run(
        sample(
            id="c" * 32, name="stuck\x1b[31m", pid=os.getpid(), process_start=None, boot_id=None,
            host=os.uname().nodename, eta=1.0, started_at=now - 700, last_progress_at=now - 600,
            stack=stack, stack_state="stalled", stack_at=now - 598,
        )
    )  # fmt: skip
    shown = nbw(repo, "status", "cccccccc")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"stuck\\x1b[31m  [run {'c' * 32}]"  # text from runs is data
    assert "stalled, step 10/100, last progress 10 min ago" in lines[2]
    at = lines.index(next(line for line in lines if "stuck at" in line))
    assert lines[at].endswith("when stalled, innermost first:")
    assert lines[at + 1 : at + 5] == [
        "    wait_for_batch  /home/me/data.py:42",
        "      batch = queue.get()",
        "    train  /home/me/train.py:88",
        "      batch = wait_for_batch()",
    ]
    missing = nbw(repo, "status", "no-such-run")
    assert missing.returncode == 1
    assert "no run or group 'no-such-run'" in missing.stderr
