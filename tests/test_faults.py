"""Faults on purpose (issue: fault injection): each gives the right event, exactly once."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, run_id_from, wait_until

DIES = """
import ctypes, os, signal, sys, time
import nbmonitor
run = nbmonitor.Run(name="doomed", expect_next_in=3600)
run.report_progress()
print("started", run.id, flush=True)
deadline = time.monotonic() + 30
while not run.repo.run_path(run.id).exists() and time.monotonic() < deadline:
    time.sleep(0.02)
how = sys.argv[1]
if how == "os._exit":
    os._exit(1)
if how == "segfault":
    ctypes.string_at(0)
if how == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
if how == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""


@pytest.fixture
def watcher(repo: Repo) -> Iterator[Proc]:
    proc = Proc.watcher(repo.path, "--interval", "0.2")
    proc.wait_for("watching")
    yield proc
    proc.stop()


@pytest.mark.parametrize("how", ["os._exit", "segfault", "sigterm", "sigkill"])
def test_a_script_that_dies_is_crashed_once(repo: Repo, watcher: Proc, tmp_path: Path, how: str) -> None:
    script = tmp_path / "dies.py"
    script.write_text(DIES)
    proc = Proc.python(script, how, repo=repo.path)
    run_id = run_id_from(proc, "started")
    assert proc.wait_exit(30) != 0
    watcher.wait_for("CRASHED", run_id[:8], timeout=10)
    later = Proc.python(script, "return", repo=repo.path)  # a later run, seen in later polls
    later_id = run_id_from(later, "started")
    wait_until(lambda: repo.run_path(later_id).exists(), 10, "the later run's file")
    later.stop()
    assert len(watcher.matching(run_id[:8])) == 1
    claim = json.loads((repo.events_dir / run_id / "end.json").read_text())
    assert claim["event"] == "crashed"
    assert repo.read_run(run_id).status == "running"  # it never reported an end: that is the crash


def test_sigterm_handled_by_the_script_itself_is_a_normal_exit(
    repo: Repo, watcher: Proc, tmp_path: Path
) -> None:
    script = tmp_path / "graceful.py"
    script.write_text(
        "import signal, sys, time, nbmonitor\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "run = nbmonitor.Run(name='graceful', expect_next_in=3600)\n"
        "print('started', run.id, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = Proc.python(script, repo=repo.path)
    run_id = run_id_from(proc, "started")
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file")
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait_exit(30) == 0
    watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    assert watcher.matching("CRASHED") == []


@pytest.mark.parametrize("restart", ["kill", "graceful"])
def test_a_kernel_killed_or_restarted_mid_cell_crashes_that_run_and_the_next_cell_works(
    repo: Repo, watcher: Proc, restart: str
) -> None:
    from .kernels import Kernel

    kernel = Kernel(repo.path)
    try:
        kernel.run("%load_ext nbmonitor")
        kernel.client.execute("%%watch --eta 60 --name cut-off\nimport time\ntime.sleep(60)")
        (cut,) = wait_until(lambda: [r for r in repo.runs() if r.name == "cut-off"], 30, "the cell's run")
        kernel.manager.restart_kernel(now=restart == "kill")
        kernel.client.wait_for_ready(timeout=60)
        end = repo.events_dir / cut.id / "end.json"
        wait_until(end.exists, 15, "the cut-off run's end to be claimed")
        # A killed kernel cannot speak for itself: the watcher reports it. One asked to restart
        # (Jupyter interrupts its cell first) claims the crash itself before it goes.
        claim = json.loads(end.read_text())
        assert claim["event"] == "crashed"
        assert claim["seen_by"].startswith("watcher" if restart == "kill" else "kernel")
        reply, _ = kernel.run("%load_ext nbmonitor")
        assert reply["status"] == "ok"
        reply, _ = kernel.run("%%watch --name after-restart\n1 + 1")
        assert reply["status"] == "ok"
    finally:
        kernel.stop()
    (after,) = [r for r in repo.runs() if r.name == "after-restart"]
    assert after.status == "finished"
    assert len(watcher.matching(cut.id[:8])) == (1 if restart == "kill" else 0)
    assert sorted(p.name for p in (repo.events_dir / cut.id).iterdir()) == ["end.json"]


def test_an_interrupt_with_no_shutdown_after_it_is_interrupted_and_the_kernel_goes_on(repo: Repo) -> None:
    from .kernels import Kernel

    kernel = Kernel(repo.path)
    try:
        kernel.run("%load_ext nbmonitor")
        # stop_on_error=False: ipykernel 6.14 (the lowest tested) aborts a request sent right
        # after an error; the kernel going on is what this shows, not ipykernel's queue.
        msg_id = kernel.client.execute(
            "%%watch --eta 60 --name stopped\nimport time\ntime.sleep(60)", stop_on_error=False
        )
        wait_until(lambda: [r for r in repo.runs() if r.name == "stopped"], 30, "the cell's run")
        kernel.manager.interrupt_kernel()
        reply = kernel.client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        reply, _ = kernel.run("%%watch --name next\n1 + 1")
        assert reply["status"] == "ok"
    finally:
        kernel.stop()
    runs = {r.name: r for r in repo.runs()}
    assert runs["stopped"].status == "interrupted"
    end = json.loads((repo.events_dir / runs["stopped"].id / "end.json").read_text())
    assert end["event"] == "interrupted"
    assert runs["next"].status == "finished"


def test_a_restarted_kernel_sends_the_crash_itself_when_no_watcher_runs(repo: Repo) -> None:
    from nbmonitor.config import NotifierConfig, NotifierStore

    from .kernels import Kernel
    from .servers import HttpRecorder

    http = HttpRecorder()
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))
    kernel = Kernel(repo.path)
    try:
        kernel.run("%load_ext nbmonitor")
        # A run opened in an earlier cell and left open is cut off too, like the cell's own.
        kernel.run("import nbmonitor\nlong = nbmonitor.Run(name='across-cells')")
        kernel.client.execute("%%watch --eta 60 --name cut-off\nimport time\ntime.sleep(60)")
        wait_until(lambda: len(repo.runs()) == 2, 30, "both runs' files")
        kernel.manager.restart_kernel(now=False)
        kernel.client.wait_for_ready(timeout=60)
        # No watcher runs: the kernel sent the notifications before it went.
        wait_until(lambda: len(http.answered()) >= 2, 15, "two notifications")
    finally:
        kernel.stop()
        http.close()
    assert sorted((p.json()["event"], p.json()["run"]["name"]) for p in http.answered()) == [
        ("crashed", "across-cells"),
        ("crashed", "cut-off"),
    ]
    assert {r.status for r in repo.runs()} == {"running"}  # cut off: never ended, by anyone
    assert not list(repo.outbox_dir.rglob("*.json"))


def test_a_kernel_shut_down_between_cells_ends_its_open_runs_as_finished(repo: Repo) -> None:
    from .kernels import Kernel

    kernel = Kernel(repo.path)
    try:
        kernel.run("%load_ext nbmonitor")
        reply, _ = kernel.run("import nbmonitor\nlong = nbmonitor.Run(name='left-open')")
        assert reply["status"] == "ok"
        wait_until(lambda: repo.runs(), 30, "the run's file")
        kernel.manager.shutdown_kernel(now=False)  # the user closes the notebook: no cell runs
    finally:
        kernel.client.stop_channels()
    (run,) = repo.runs()
    assert run.status == "finished"  # so no watcher will ever call it crashed
    assert not (repo.events_dir / run.id).exists()  # and the kernel claimed no crash on its way out


MANY = """
import sys, threading, time, nbmonitor
def one(i):
    run = nbmonitor.Run(name=f"p{sys.argv[1]}-r{i}", expect_next_in=5)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        run.report_progress(expect_next_in=5)
        time.sleep(0.01)
    run.report_successful_finish()
threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_200_runs_in_20_processes_with_a_watcher_and_a_kernel_each_event_arrives_once(
    repo: Repo, watcher: Proc, tmp_path: Path
) -> None:
    from nbmonitor.config import NotifierConfig, NotifierStore

    from .kernels import Kernel
    from .servers import HttpRecorder

    http = HttpRecorder()
    NotifierStore(repo).add(
        NotifierConfig.create(
            "webhook", {"url": f"{http.url}/hook"}, events=["stalled", "crashed", "finished"]
        )
    )
    kernel = Kernel(repo.path)
    script = tmp_path / "many.py"
    script.write_text(MANY)
    try:
        kernel.run("%load_ext nbmonitor")
        kernel.client.execute("%%watch --eta 30 --name kernel-cell\nimport time\ntime.sleep(6)")
        fleet = [Proc.python(script, str(p), repo=repo.path) for p in range(20)]
        assert [p.wait_exit(60) for p in fleet] == [0] * 20
        received: dict[str, list[str]] = {}

        def count() -> int:
            received.clear()
            for request in http.answered(200):
                body = request.json()
                for item in body.get("events") or [{"event": body["event"], "run": body["run"]}]:
                    received.setdefault(item["run"]["id"], []).append(item["event"])
            return len(received)

        wait_until(lambda: count() >= 201, 60, "201 finished notifications")
        # Nothing left to send anywhere: any duplicate would have arrived by now.
        wait_until(lambda: not list(repo.outbox_dir.rglob("*.json")), 30, "an empty outbox")
        count()
    finally:
        kernel.stop()
        http.close()
    assert all(events == ["finished"] for events in received.values()), received
    runs = repo.runs()
    assert len(runs) == 201
    assert {r.status for r in runs} == {"finished"}
    assert watcher.matching("STALLED") == []
    assert watcher.matching("CRASHED") == []
    assert watcher.matching("WARNING") == []


def test_an_endpoint_down_for_two_minutes_gets_every_notification_once_when_it_is_back(
    repo: Repo, clock: FakeClock
) -> None:
    """Two minutes on an injected clock, second by second: the watcher polls and the sender
    delivers as the real loop does. The endpoint refuses connections for a minute, answers 503
    for another, then is back; a second notifier is up all along."""
    from nbmonitor.config import NotifierConfig, NotifierStore
    from nbmonitor.outbox import Sender

    from .records import World
    from .servers import Answer, HttpRecorder, free_port

    port = free_port()
    steady = HttpRecorder()
    store = NotifierStore(repo)
    for url in (f"http://127.0.0.1:{port}/down", f"{steady.url}/up"):
        store.add(NotifierConfig.create("webhook", {"url": url}))
    world = World(repo, clock)
    sender = Sender(repo, clock=clock.mono, wall=clock.wall, timeout=2)
    watcher = world.watcher(notifiers=sender.refresh)
    arrived: dict[HttpRecorder, list[tuple[float, str, str]]] = {}

    def second(until: float) -> None:
        while clock.wall() < until:
            clock.advance(1)
            watcher.poll()
            sender.deliver()
            for server in [s for s in (steady, flaky) if s is not None]:
                seen = arrived.setdefault(server, [])
                for request in server.answered(200)[len(seen) :]:
                    body = request.json()
                    for item in body.get("events") or [body]:
                        seen.append((clock.wall(), item["run"]["name"], item["event"]))

    flaky: HttpRecorder | None = None
    start = clock.wall()
    stuck = world.write("1" * 32, name="stuck", pid=101, eta=5.0, grace=2.0)
    world.write("2" * 32, name="killed", pid=102, eta=None)
    world.write("3" * 32, name="raises", pid=103, eta=None)
    try:
        second(start + 20)  # "stuck" stalls at 7 s
        world.dead.add(102)  # "killed" crashes at 20 s
        second(start + 60)
        flaky = HttpRecorder(port)  # the endpoint answers again, with 503 for a minute
        flaky.default = Answer(503, "maintenance")
        world.write("3" * 32, name="raises", pid=103, eta=None, status="failed", ended_at=clock.wall())
        second(start + 90)
        moved = world.progress(stuck)  # "stuck" recovers at 90 s, and ends
        repo.write_run(moved.with_changes(status="finished", ended_at=clock.wall()))
        second(start + 120)
        flaky.default = Answer(200, "ok")  # back at 120 s
        second(start + 240)
    finally:
        steady.close()
        if flaky is not None:
            flaky.close()
    assert flaky is not None
    expected = [("stuck", "stalled"), ("killed", "crashed"), ("raises", "failed"), ("stuck", "recovered")]
    back = arrived[flaky]
    assert sorted((name, kind) for _, name, kind in back) == sorted(expected)  # each once
    assert max(at for at, _, _ in back) <= start + 120 + 60 + 1  # backoff is capped at 60 s
    assert [(name, kind) for _, name, kind in arrived[steady]] == expected
    happened = [start + 8, start + 21, start + 61, start + 91]  # the first poll after each
    assert [at for at, _, _ in arrived[steady]] == happened  # the other notifier was not held up
    failed = len(flaky.requests) - len(flaky.answered(200))
    assert 1 <= failed <= 2  # a minute of 503s at most 60 s apart: it backed off, not hammered
    assert not list(repo.outbox_dir.rglob("*.json"))


# -- the repo made unusable under running work -------------------------------------------------

TRAINS = """
import pathlib, sys, time, nbmonitor
stop = pathlib.Path(sys.argv[1])
run = nbmonitor.Run(name="trains", expect_next_in=float(sys.argv[2]) if len(sys.argv) > 2 else 60)
print("started", run.id, flush=True)
step = 0
while not stop.exists():
    step += 1
    run.report_progress(step=step)
    if step % 10 == 0:
        print("step", step, flush=True)
    time.sleep(0.01)
run.report_successful_finish()
print("done", step, flush=True)
"""


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"needs permission to mount: {done.stderr.strip()}")


class Disk:
    """A small filesystem of its own (tmpfs) that a test can fill and free."""

    def __init__(self, path: Path, size: str = "4m") -> None:
        path.mkdir()
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        with open(self.filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        assert shutil.disk_usage(self.path).free == 0

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mount = Disk(tmp_path / "disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount.path)], check=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only (a read-only bind mount over it), even for root, until the block ends."""
    _mount("--bind", str(path), str(path))
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def steps_after(proc: Proc, since: float) -> list[int]:
    return [int(line.split()[1]) for at, line in proc.lines if at > since and line.startswith("step ")]


def train(tmp_path: Path, repo: Repo, *args: str) -> tuple[Proc, str, Path]:
    script, stop = tmp_path / "trains.py", tmp_path / "stop"
    script.write_text(TRAINS)
    proc = Proc.python(script, str(stop), *args, repo=repo.path)
    run_id = run_id_from(proc, "started")
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file")
    return proc, run_id, stop


def test_a_read_only_repo_never_stops_the_loop_and_monitoring_resumes_when_writable(
    repo: Repo, watcher: Proc, tmp_path: Path
) -> None:
    proc, run_id, stop = train(tmp_path, repo)
    with read_only(repo.path):
        said = proc.wait_for("cannot write the file of run 'trains'", "Read-only file system", timeout=10)
        wait_until(lambda: len(steps_after(proc, said)) >= 3, 10, "the loop to go on")
        frozen = repo.read_run(run_id).progress  # still readable, no longer updated
    proc.wait_for("run 'trains' is written to", "again", timeout=10)
    wait_until(lambda: repo.read_run(run_id).progress > frozen, 10, "the file to move again")
    stop.touch()
    assert proc.wait_exit(30) == 0
    watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    # Each file that cannot be written is said once, not every second (its log tail too: the
    # script prints its steps).
    assert len(proc.matching("cannot write the file of run")) == 1
    assert len(proc.matching("cannot write the log tail of run")) == 1
    assert "Traceback" not in proc.text + watcher.text
    assert watcher.matching("CRASHED") == watcher.matching("STALLED") == []


def test_a_full_disk_delays_events_without_losing_one_and_the_loop_goes_on(
    disk: Disk, tmp_path: Path
) -> None:
    repo = Repo(disk.path / "repo")
    watcher = Proc.watcher(repo.path, "--interval", "0.2")
    try:
        watcher.wait_for("watching")
        proc, run_id, stop = train(tmp_path, repo)
        (tmp_path / "dies.py").write_text(DIES)
        doomed = Proc.python(tmp_path / "dies.py", "sleep", repo=repo.path)
        doomed_id = run_id_from(doomed, "started")
        wait_until(lambda: repo.run_path(doomed_id).exists(), 10, "the doomed run's file")
        disk.fill()
        said = proc.wait_for("cannot write the file of run 'trains'", "No space left", timeout=10)
        doomed.popen.send_signal(signal.SIGKILL)
        doomed.wait_exit()
        watcher.wait_for("cannot record event crashed", doomed_id[:8], "No space left", timeout=10)
        wait_until(lambda: len(steps_after(proc, said)) >= 3, 10, "the loop to go on")
        assert watcher.matching("CRASHED") == []  # not reported before it is recorded ...
        disk.free()
        watcher.wait_for("CRASHED", doomed_id[:8], timeout=10)  # ... and reported once it is
        proc.wait_for("run 'trains' is written to", "again", timeout=10)
        stop.touch()
        assert proc.wait_exit(30) == 0
        watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    finally:
        watcher.stop()
    assert len(watcher.matching("cannot record event")) == 1  # said once, not at every poll
    assert len(watcher.matching("CRASHED")) == 1
    assert len(proc.matching("cannot write")) == 1
    assert "Traceback" not in proc.text + watcher.text


def test_a_repo_deleted_under_running_work_is_created_again_and_watched(
    repo: Repo, watcher: Proc, tmp_path: Path
) -> None:
    proc, run_id, stop = train(tmp_path, repo)
    before = repo.read_run(run_id).progress
    shutil.rmtree(repo.path)
    proc.wait_for("the repo", "was gone (deleted?); created it again", timeout=10)
    watcher.wait_for("is gone (deleted?)", timeout=10)
    wait_until(lambda: repo.run_path(run_id).exists(), 10, "the run file to come back")
    watcher.wait_for("is back; watching it again", timeout=10)
    wait_until(lambda: repo.read_run(run_id).progress > before, 10, "the file to move again")
    stop.touch()
    assert proc.wait_exit(30) == 0
    watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    wait_until(repo.watcher_file.exists, 10, "the watcher to be findable again")
    assert "Traceback" not in proc.text + watcher.text
    assert watcher.matching("CRASHED") == watcher.matching("STALLED") == []


# Every process started with this on its path reads its wall clock's offset from a file.
SHIFTED_WALL = """
import os, time
_offset, _real = os.environ["NBMONITOR_TEST_WALL_OFFSET"], time.time
def _shifted():
    try:
        with open(_offset) as f:
            return _real() + float(f.read())
    except (OSError, ValueError):
        return _real()
time.time = _shifted
"""


def test_the_wall_clock_jumping_an_hour_raises_no_false_alarm_in_real_processes(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offset, shifted = tmp_path / "offset", tmp_path / "shifted"
    offset.write_text("0")
    shifted.mkdir()
    (shifted / "sitecustomize.py").write_text(SHIFTED_WALL)
    monkeypatch.setenv("PYTHONPATH", str(shifted))
    monkeypatch.setenv("NBMONITOR_TEST_WALL_OFFSET", str(offset))
    watcher = Proc.watcher(repo.path, "--interval", "0.2")
    try:
        watcher.wait_for("watching")
        proc, run_id, stop = train(tmp_path, repo, "1")  # ETA 1 s, grace 2 s

        def sees(jump: float) -> bool:  # the run's file is stamped with the jumped clock
            return abs(repo.read_run(run_id).last_progress_at - time.time() - jump) < 60

        for jump in (3600, -3600):  # an hour ahead, then an hour behind
            offset.write_text(str(jump))
            wait_until(functools.partial(sees, jump), 10, "the processes to see the jump")
            # Well past ETA + grace by either wall clock, with the watcher polling all along.
            later = functools.partial(steps_after, proc, time.monotonic() + 4)
            wait_until(later, 15, "the loop to run 4 s past the jump")
        stop.touch()
        assert proc.wait_exit(30) == 0
        watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    finally:
        watcher.stop()
    assert watcher.matching("STALLED") == watcher.matching("CRASHED") == []
    assert "Traceback" not in proc.text + watcher.text


def _stepped_proc_stat(folder: Path, seconds: int) -> Path:
    """/proc/stat as the kernel writes it once the wall clock is stepped ``seconds`` ahead: its
    boot time (``btime``, derived from the wall clock) moves by as much."""
    text = Path("/proc/stat").read_text()
    found = re.search(r"^btime (\d+)$", text, flags=re.M)
    assert found is not None
    btime = int(found.group(1))
    fake = folder / "stat"
    fake.write_text(re.sub(r"^btime \d+$", f"btime {btime + seconds}", text, flags=re.M))
    return fake


def test_a_wall_clock_step_never_makes_a_live_process_look_gone(repo: Repo, tmp_path: Path) -> None:
    # A watcher sees /proc/stat as after a two-second NTP step (a bind mount in its own mount
    # namespace); the training script, and `status`, do not. psutil's start times moved by the
    # step, so the healthy run was "crashed", its finish never reported, and `status` said no
    # watcher ran. Start times in clock ticks since boot do not move.
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    fake = _stepped_proc_stat(tmp_path, 2)
    proc, run_id, stop = train(tmp_path, repo, "1")  # ETA 1 s, grace 2 s
    watch = f"{sys.executable} -m nbmonitor --repo {repo.path} start --interval 0.1"
    watcher = Proc(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind {fake} /proc/stat && exec {watch}",
        ],
        repo.path,
    )
    try:
        at = watcher.wait_for("watching", timeout=15)
        if watcher.popen.poll() is not None:
            pytest.skip(f"needs permission to mount: {watcher.text}")
        wait_until(lambda: len(steps_after(proc, at)) >= 10, 15, "the loop to run on under the watcher")
        status = subprocess.run(
            [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "watcher: running, pid" in status.stdout
        (row,) = [line for line in status.stdout.splitlines() if run_id[:8] in line]
        assert " running " in row
        stop.touch()
        assert proc.wait_exit(30) == 0
        watcher.wait_for("FINISHED", run_id[:8], timeout=10)
    finally:
        watcher.stop()
    assert watcher.matching("CRASHED") == watcher.matching("STALLED") == []


def test_a_read_only_repo_under_a_watched_cell_prints_nothing_into_it_and_the_cell_finishes(
    repo: Repo, tmp_path: Path
) -> None:
    from .kernels import Kernel, idle, run_views

    stop = tmp_path / "stop"
    kernel = Kernel(repo.path)
    messages: list[dict[str, Any]] = []

    def shown(*parts: str) -> bool:
        """Read the cell's messages until its display shows every part."""

        def showing(msg: dict[str, Any]) -> bool:
            return any(all(p in json.dumps(view) for p in parts) for view in run_views([msg]))

        messages.extend(kernel.read(msg_id, showing, 15, f"display showing {parts}"))
        return True

    try:
        kernel.run("%load_ext nbmonitor")
        msg_id = kernel.client.execute(
            "%%watch --name under-ro --eta 30\n"
            "import pathlib, time, nbmonitor\n"
            f"while not pathlib.Path({str(stop)!r}).exists():\n"
            "    nbmonitor.report_progress()\n"
            "    time.sleep(0.01)\n"
        )
        (run,) = wait_until(lambda: repo.runs(), 30, "the cell's run file")
        with read_only(repo.path):
            assert shown("cannot write the file of run", "Read-only file system")
            frozen = repo.read_run(run.id).progress
        assert shown("written to", "again")
        wait_until(lambda: repo.read_run(run.id).progress > frozen, 10, "the file to move again")
        stop.touch()
        messages.extend(kernel.read(msg_id, idle, 15, "end of the cell"))
        _, status = kernel.run("%watch status")
    finally:
        kernel.stop()
    streams = [m["content"]["text"] for m in messages if m["msg_type"] == "stream"]
    assert not any("nbmonitor" in text for text in streams)  # nothing printed into the cell
    status_text = "".join(m["content"].get("text", "") for m in status if m["msg_type"] == "stream")
    assert "cannot write the file of run 'under-ro'" in status_text  # kept for %watch status
    assert repo.read_run(run.id).status == "finished"
