"""Multiprocessing workers report into the run of the block that started them: real processes
(fork, spawn, forkserver; Process, Pool, ProcessPoolExecutor), real signals, a real kernel."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbmonitor import _board, templates
from nbmonitor.events import Event
from nbmonitor.repo import Repo

from .helpers import Proc, child_env, wait_until
from .kernels import Kernel, snapshots

# A module the workers run (spawn and forkserver import it by name).
JOBS = """
import os, signal, sys, time
import nbmonitor

def beats(n):
    for _ in range(n):
        nbmonitor.report_progress()
    return os.getpid()

def loop(n):
    for _ in nbmonitor.track(range(n)):
        pass
    return os.getpid()

def wait_then_beat(go, n):
    nbmonitor.report_progress()
    go.wait(30)
    return beats(n - 1)

def wait_for_file(path, n):
    nbmonitor.report_progress()
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return beats(n - 1)

def hang_forever():
    nbmonitor.report_progress()
    time.sleep(60)

def raise_after(n):
    beats(n)
    raise ValueError("bad shard")
"""

SCRIPT = """
import json, multiprocessing as mp, os, sys, time
from concurrent.futures import ProcessPoolExecutor
import nbmonitor, jobs

method, kind, repo = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = mp.get_context(method)
with nbmonitor.watch(name=f"{method}-{kind}", repo=repo) as run:
    if kind == "Process":
        procs = [ctx.Process(target=jobs.beats, args=(25,)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    elif kind == "Pool":
        with ctx.Pool(2) as pool:
            pool.map(jobs.loop, [10] * 5)
    else:
        with ProcessPoolExecutor(2, mp_context=ctx) as ex:
            list(ex.map(jobs.beats, [10] * 5))
print(json.dumps({"id": run.id}), flush=True)
"""


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    return tmp_path


def run_script(folder: Path, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a main module (under ``if __name__ == "__main__"``, as spawn needs)."""
    script = folder / "script.py"
    script.write_text(guarded(code))
    env = child_env(folder / "repo")
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def guarded(code: str) -> str:
    return 'if __name__ == "__main__":\n' + textwrap.indent(textwrap.dedent(code), "    ")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize(("kind", "expected"), [("Process", 50), ("Pool", 50), ("ProcessPoolExecutor", 50)])
def test_progress_reported_in_workers_counts_for_the_block(
    jobs: Path, method: str, kind: str, expected: int
) -> None:
    done = run_script(jobs, SCRIPT, method, kind, str(jobs / "repo"))
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout.splitlines()[-1])["id"]
    record = Repo(jobs / "repo").read_run(run_id)
    assert (record.status, record.progress) == ("finished", expected)
    assert record.workers  # who did the work, and that none of them crashed
    assert {w.state for w in record.workers} <= {"running", "ended"}
    assert all(w.pid > 0 and w.name for w in record.workers)
    assert len(list(Repo(jobs / "repo").runs())) == 1  # no worker made a run of its own


LIVE = """
import json, multiprocessing as mp, sys, time
import nbmonitor, jobs

ctx = mp.get_context(sys.argv[1])
go = ctx.Event()
with nbmonitor.watch(name="live", repo=sys.argv[2]) as run:
    worker = ctx.Process(target=jobs.wait_then_beat, args=(go, 5))
    worker.start()
    deadline = time.monotonic() + 30
    while run.record().progress < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    seen_while_running = run.record().progress
    go.set()
    worker.join()
    time.sleep(0.3)
print(json.dumps({"seen": seen_while_running, "final": run.record().progress}), flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_parent_sees_a_workers_progress_while_it_still_runs(jobs: Path, method: str) -> None:
    done = run_script(jobs, LIVE, method, str(jobs / "repo"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"seen": 1, "final": 5}


ENDS = """
import json, multiprocessing as mp, os, signal, sys, time
import nbmonitor, jobs

ctx = mp.get_context("spawn")
with nbmonitor.watch(name="ends", repo=sys.argv[1]) as run:
    killed = ctx.Process(target=jobs.hang_forever, name="doomed")
    failed = ctx.Process(target=jobs.raise_after, args=(3,), name="raiser")
    killed.start(); failed.start()
    deadline = time.monotonic() + 30
    while run.record().progress < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.system(f"kill -KILL {killed.pid}")  # from outside the job, as the OOM killer would
    killed.join(); failed.join()
    with ctx.Pool(2) as pool:  # terminated when the block ends: no crash
        pool.map(jobs.beats, [2, 2])
    deadline = time.monotonic() + 30
    while len(run.record().workers) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)
print(json.dumps({"id": run.id}), flush=True)
"""


def test_how_each_worker_ended_is_known_and_a_crash_is_named_in_the_runs_alarm(jobs: Path) -> None:
    done = run_script(jobs, ENDS, str(jobs / "repo"))
    assert done.returncode == 0, done.stderr
    record = Repo(jobs / "repo").read_run(json.loads(done.stdout.splitlines()[-1])["id"])
    by_name = {w.name: w for w in record.workers}
    assert (by_name["doomed"].state, by_name["raiser"].state) == ("crashed", "failed")
    assert by_name["doomed"].exit in ("gone without finishing", "killed by SIGKILL")
    pool = [w for w in record.workers if w.name.startswith("SpawnPoolWorker")]
    assert pool
    assert all(w.state in ("running", "ended") for w in pool)
    text = templates.text_for(Event("finished", "end", record, record.updated_at, 0.0, None, "test"))
    assert text.count("Workers ") == 1
    assert f"doomed, pid {by_name['doomed'].pid}: crashed, " in text
    assert f"raiser, pid {by_name['raiser'].pid}: failed, an exception" in text
    named = text.split(" Peak ")[0]  # the peaks may name any process; the alarm's workers only bad ones
    assert "SpawnPoolWorker" not in named


REUSED = """
import json, multiprocessing as mp, sys
import nbmonitor, jobs

ctx = mp.get_context(sys.argv[1])
pool = ctx.Pool(2)
with nbmonitor.watch(name="first", repo=sys.argv[2]) as first:
    pool.map(jobs.beats, [3, 3])
with nbmonitor.watch(name="second", repo=sys.argv[2]) as second:
    pool.map(jobs.beats, [4, 4])
    import time; time.sleep(0.3)
pool.close(); pool.join()
print(json.dumps({"first": first.record().progress, "second": second.record().progress}), flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_made_before_a_block_works_for_the_block_it_is_used_in(jobs: Path, method: str) -> None:
    done = run_script(jobs, REUSED, method, str(jobs / "repo"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"first": 6, "second": 8}


OUTSIDE = """
import multiprocessing as mp, sys
import nbmonitor, jobs

ctx = mp.get_context("spawn")
with ctx.Pool(1) as pool:
    print("pids", pool.map(jobs.beats, [3]), flush=True)
"""


def test_workers_of_a_process_with_no_block_report_nowhere_and_leave_nothing(jobs: Path) -> None:
    done = run_script(jobs, OUTSIDE)
    assert done.returncode == 0, done.stderr
    assert not (jobs / "repo" / "runs").exists() or not list((jobs / "repo" / "runs").iterdir())


def test_a_board_is_removed_when_its_process_ends(jobs: Path) -> None:
    done = run_script(jobs, SCRIPT, "spawn", "Pool", str(jobs / "repo"))
    assert done.returncode == 0, done.stderr
    pid = done.stdout  # the script is gone: no board of it, nor links of its workers, remain
    left = [p.name for p in _board.directory().glob("*.board") if not _alive_owner(p.name)]
    assert left == [], (pid, left)


def _alive_owner(name: str) -> bool:
    return Path(f"/proc/{name.split('-')[0]}").exists()


# -- a cell in a real kernel --------------------------------------------------------------


@pytest.fixture
def kernel(tmp_path: Path, jobs: Path) -> Iterator[Kernel]:
    k = Kernel(tmp_path / "kernel-repo")
    try:
        reply, _ = k.run(f"import sys; sys.path.insert(0, {str(jobs)!r})\n%load_ext nbmonitor")
        assert reply["status"] == "ok"
        yield k
    finally:
        k.stop()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_in_a_watch_cell_count_for_the_cell(kernel: Kernel, tmp_path: Path, method: str) -> None:
    reply, messages = kernel.run(
        "%%watch --name pooled\n"
        "import multiprocessing as mp, jobs, time\n"
        f"with mp.get_context({method!r}).Pool(2) as pool:\n"
        "    pool.map(jobs.loop, [7] * 4)\n"
        "time.sleep(0.3)\n"
    )
    assert reply["status"] == "ok", reply
    (record,) = Repo(tmp_path / "kernel-repo").runs()
    assert (record.name, record.status, record.progress, record.step) == ("pooled", "finished", 28, 28)
    final = snapshots(messages)[-1]
    assert "PoolWorker" in final["text/plain"]  # the display shows the workers


def test_a_worker_that_reports_with_a_forked_copy_of_the_run_counts_too(jobs: Path) -> None:
    code = """
import json, multiprocessing as mp, sys, time
import nbmonitor
with nbmonitor.watch(name="closure", repo=sys.argv[1]) as run:
    def work():
        for i in range(6):
            run.report_progress(step=i + 1)
    p = mp.get_context("fork").Process(target=work)
    p.start(); p.join()
    time.sleep(0.3)
print(json.dumps({"progress": run.record().progress, "step": run.record().step}), flush=True)
"""
    done = run_script(jobs, code, str(jobs / "repo"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"progress": 6, "step": 6}


def test_a_run_cannot_be_sent_to_a_spawned_worker_and_says_what_to_do_instead(jobs: Path) -> None:
    code = """
import pickle, nbmonitor, sys
with nbmonitor.watch(repo=sys.argv[1]) as run:
    try:
        pickle.dumps(run)
    except TypeError as e:
        print("said:", e)
"""
    done = run_script(jobs, code, str(jobs / "repo"))
    assert "said: a Run stays in the process that made it" in done.stdout, done.stderr


def test_the_watcher_sees_workers_of_a_script_in_status(jobs: Path, tmp_path: Path) -> None:
    code = """
import multiprocessing as mp, sys, time
import nbmonitor, jobs
ctx = mp.get_context("spawn")
with nbmonitor.watch(name="status", repo=sys.argv[1]) as run:
    procs = [ctx.Process(target=jobs.wait_for_file, args=(sys.argv[2], 3), name=f"shard-{n}") for n in (0, 1)]
    for p in procs: p.start()
    print("started", run.id, flush=True)
    for p in procs: p.join()
"""
    (jobs / "script.py").write_text(guarded(code))
    proc = Proc(
        [sys.executable, str(jobs / "script.py"), str(jobs / "repo"), str(jobs / "go")],
        jobs / "repo",
        cwd=jobs,
        env={"PYTHONPATH": f"{jobs}:{child_env(jobs)['PYTHONPATH']}"},
    )
    try:
        proc.wait_for("started", timeout=30)
        repo = Repo(jobs / "repo")
        wait_until(
            lambda: any(len(r.workers) == 2 for r in repo.runs()), 10, "both workers in the run's file"
        )
        status = subprocess.run(
            [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "status"],
            env=child_env(repo.path),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "  shard-0, pid" in status.stdout
        assert "  shard-1, pid" in status.stdout
        (jobs / "go").touch()
        assert proc.wait_exit(30) == 0, proc.text
    finally:
        (jobs / "go").touch()
        proc.stop()
    record = next(iter(Repo(jobs / "repo").runs()))
    assert (record.status, record.progress) == ("finished", 6)
