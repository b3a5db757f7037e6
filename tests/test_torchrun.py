"""The real torchrun: ranks on CPU with gloo, all-reducing every step, watched as one group by a
real nbmonitor-watcher. One rank hangs, one is killed: one alarm each, naming that rank."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbmonitor.cli import main
from nbmonitor.config import DEFAULT_EVENTS, NotifierConfig, NotifierStore
from nbmonitor.membership import group_id
from nbmonitor.record import RunRecord
from nbmonitor.repo import Repo

from .helpers import Proc, child_env, event_lines, wait_until, watching
from .servers import HttpRecorder

pytest.importorskip("torch", reason="torch is installed by the README's test command")

POLL = 0.2
RANKS = 3

# Each rank all-reduces every step; rank HANG waits for the go file before step AT.
TRAIN = """
import os, sys, time
import torch, torch.distributed as dist
import nbmonitor

eta, go = float(sys.argv[1]), sys.argv[5]
steps, hang, at = (int(arg) for arg in sys.argv[2:5])
dist.init_process_group("gloo")
rank = dist.get_rank()
with nbmonitor.watch(eta=eta, grace=1.0, name="ddp") as run:
    for step in range(steps):
        if rank == hang and step == at:
            print("hanging", rank, os.getpid(), flush=True)
            while not os.path.exists(go):
                time.sleep(0.02)
        value = torch.ones(1)
        dist.all_reduce(value)
        run.report_progress(step=step + 1)
dist.destroy_process_group()
"""


@pytest.fixture
def watcher(repo: Repo) -> Iterator[Proc]:
    with watching(repo.path, POLL) as proc:
        yield proc


def torchrun(tmp_path: Path, repo: Repo, *args: str) -> Proc:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
    # Usage history on disk every second (not five): tests wait for it.
    env = {"OMP_NUM_THREADS": "1", "NBMONITOR_USAGE_FLUSH": "1"}
    return Proc([*command, str(script), *args], repo.path, env=env)


def members(repo: Repo) -> dict[int, RunRecord]:
    found = {}
    for run in repo.runs():
        assert run.group is not None
        assert run.group.launcher == "torchrun"
        assert run.group.rank is not None
        found[run.group.rank] = run
    return found


def quiet(watcher: Proc, seconds: float) -> None:
    """No new event line for ``seconds`` (several polls)."""
    before = len(event_lines(watcher))
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: len(event_lines(watcher)) > before, seconds, "another event")


def test_a_hung_rank_is_one_stalled_alarm_naming_it_then_one_recovered(
    tmp_path: Path, repo: Repo, watcher: Proc
) -> None:
    go = tmp_path / "go"
    job = torchrun(tmp_path, repo, "1.0", "40", "1", "10", str(go))
    try:
        hung_at = job.wait_for("hanging 1", timeout=120)
        pid = int(job.matching("hanging 1")[0].split()[2])
        stalled_at = watcher.wait_for("STALLED", timeout=30)
        # ETA 1 s + grace 1 s + a poll, and a second for the file and the start of the hang.
        assert stalled_at - hung_at < 1.0 + 1.0 + POLL + 1.5
        (stalled,) = watcher.matching("STALLED")
        assert f"rank 1 on {os.uname().nodename}, pid {pid}: step 10" in stalled
        assert "torchrun job" in stalled
        assert "3 ranks" in stalled
        go.touch()
        watcher.wait_for("RECOVERED", timeout=30)
        assert job.wait_exit(timeout=120) == 0, job.text
        watcher.wait_for("FINISHED", timeout=30)
    finally:
        go.touch()
        job.stop()
    assert [line.split()[2] for line in event_lines(watcher)] == ["STALLED", "RECOVERED", "FINISHED"]
    ranks = members(repo)
    assert sorted(ranks) == [0, 1, 2]
    assert all(r.status == "finished" and r.step == 40 for r in ranks.values())
    group = group_id(ranks[0].group.job, "ddp")  # type: ignore[union-attr]  # checked in members()
    assert len(repo.claims(group)) == 3
    assert all(repo.claims(r.id) == set() for r in ranks.values())  # no alarm of a rank's own


def test_a_killed_rank_is_one_crashed_alarm_naming_it_as_torchrun_tears_the_rest_down(
    tmp_path: Path, repo: Repo, watcher: Proc
) -> None:
    job = torchrun(tmp_path, repo, "60", "40", "1", "5", str(tmp_path / "never"))
    try:
        job.wait_for("hanging 1", timeout=120)

        def others_wait_in_all_reduce() -> bool:
            ranks = members(repo)
            return len(ranks) == RANKS and all(ranks[r].waiting == "all_reduce" for r in (0, 2))

        wait_until(others_wait_in_all_reduce, 30, "ranks 0 and 2 waiting for rank 1 in all_reduce")
        victim = members(repo)[1]
        assert victim.waiting is None
        os.kill(victim.pid, signal.SIGKILL)
        watcher.wait_for("CRASHED", timeout=30)
        assert job.wait_exit(timeout=120) != 0
        quiet(watcher, 10 * POLL)  # every rank is gone now, and the one alarm is all there is
        status = Proc([sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "status"], repo.path)
        assert status.wait_exit(30) == 0
        assert "crashed" in status.matching("ddp [torchrun job")[0]
        assert "(to blame)" in status.matching(f"pid {victim.pid}")[0]
    finally:
        job.stop()
    (crashed,) = event_lines(watcher)
    assert "CRASHED" in crashed
    assert f"rank 1 on {victim.host}, pid {victim.pid}: step 5" in crashed


# Rank 0 saves a checkpoint every 10 steps; rank 1 hangs at step 30 in the first attempt only.
RESUMING = """
import os, sys, time
import torch, torch.distributed as dist
import nbmonitor

dist.init_process_group("gloo")
rank, attempt = dist.get_rank(), int(os.environ["TORCHELASTIC_RESTART_COUNT"])

def say(*words):  # each rank's own file: ranks writing to one stdout mix their lines
    with open(os.path.join(sys.argv[1], f"rank-{rank}"), "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")

with nbmonitor.watch(eta=1.0, grace=1.0, name="ddp", on_stall="exit") as run:
    ckpt = nbmonitor.latest_checkpoint()
    start, total = (ckpt.step + 1, ckpt.metadata["total"]) if ckpt else (0, 0)
    say("attempt", attempt, "rank", rank, "from", start)
    for step in range(start, 60):
        if rank == 1 and step == 30 and attempt == 0:
            say("hanging", rank, os.getpid())
            time.sleep(600)
        value = torch.tensor([float(step)])
        dist.all_reduce(value)
        total += int(value.item())
        run.report_progress(step=step)
        time.sleep(0.02)
        if rank == 0 and step % 10 == 9:
            with run.checkpoint(step=step, total=total) as path:
                (path / "total").write_text(str(total))
        dist.barrier()  # no rank reads a checkpoint that another is still writing
    say("final", rank, total)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("supervised", [False, True], ids=["torchrun", "nbmonitor-watcher-run-torchrun"])
def test_a_hang_becomes_a_torchrun_restart_that_resumes_from_the_checkpoint(
    tmp_path: Path, repo: Repo, watcher: Proc, http: HttpRecorder, supervised: bool
) -> None:
    events = [*DEFAULT_EVENTS, "finished"]
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}, events=events))
    script = tmp_path / "resuming.py"
    script.write_text(RESUMING)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {
        "OMP_NUM_THREADS": "1",
        "NBMONITOR_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        # Else a restart's ranks may read the last attempt's addresses (pytorch/pytorch#135712).
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    command += ["--max-restarts", "2", str(script), str(tmp_path)]
    if supervised:  # torchrun restarts the hang inside the supervisor's attempt, which is left to it
        command = [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "run", "--", *command]
    job = Proc(command, repo.path, env=env)
    try:
        assert job.wait_exit(timeout=240) == 0, job.text
        wait_until(lambda: len(http.answered()) == 3, 30, "three deliveries")
    finally:
        job.stop()
    said = [line for rank in (0, 1) for line in (tmp_path / f"rank-{rank}").read_text().splitlines()]
    (hanging,) = [line for line in said if line.startswith("hanging")]
    pid = int(hanging.split()[-1])
    assert sorted(line for line in said if line.startswith("attempt")) == [
        "attempt 0 rank 0 from 0",
        "attempt 0 rank 1 from 0",
        "attempt 1 rank 0 from 30",  # from the checkpoint at step 29: nothing lost but the hang
        "attempt 1 rank 1 from 30",
    ]
    uninterrupted = 2 * sum(range(60))
    assert sorted(line for line in said if line.startswith("final")) == [
        f"final 0 {uninterrupted}",
        f"final 1 {uninterrupted}",
    ]

    # The first attempt's group: one stalled, then one restarting in place of its failure.
    posts = [r.json() for r in http.answered()]
    assert [p["event"] for p in posts] == ["stalled", "restarting", "finished"]
    stalled, restarting, finished = posts
    assert f"rank 1 on {os.uname().nodename}, pid {pid}: step 29" in stalled["text"]
    assert "stuck in <module> (resuming.py:" in stalled["text"]
    assert restarting["restart"] == restarting["restart"] | {
        "attempt": 0,
        "max_restarts": 2,
        "by": "torchrun",
        "checkpoint_step": 29,
    }
    assert "; restarting 1 of 2 from the checkpoint at step 29 saved " in restarting["text"]
    assert f"rank 1 on {os.uname().nodename}, pid {pid}: step 29" in restarting["text"]
    assert "Stalled: no progress for " in restarting["text"]
    assert finished["text"].startswith("ddp finished in ")
    # (Whoever claimed each first: the watcher, the stalled rank, or nbmonitor-watcher run.)
    runs = repo.runs()
    first = [r for r in runs if r.restart_count == 0]
    ended = {r.group.rank: r.status for r in first}  # type: ignore[union-attr]
    errors = {r.group.rank: (r.error.type, r.error.message) for r in first if r.error}  # type: ignore[union-attr]
    assert ended[1] == "failed"
    assert errors[1][0] == "Stalled", errors
    # Rank 0 waits in the collective: it stalls too, unless rank 1's exit broke its connection
    # first, or torchrun, seeing rank 1 gone, killed it first: then its file got no end (readers
    # call it crashed), and the group's events still blame rank 1 (above).
    if ended[0] != "running":
        assert errors[0][0] == "Stalled" or "Connection closed by peer" in errors[0][1], errors
    assert sorted((r.restart_count, r.status) for r in runs if r.restart_count == 1) == [(1, "finished")] * 2
    if supervised:
        assert all(r.attempt == 0 and r.supervisor is not None for r in runs)  # the supervisor's one attempt
        assert job.matching("nbmonitor-watcher run: attempt 1 (pid ")[-1].endswith(") finished")


SPAWN = """
import json, os, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
import nbmonitor

def train(rank, world, steps):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for step in range(steps):
        value = torch.ones(1)
        dist.all_reduce(value)
        nbmonitor.report_progress(step=step + 1)
    dist.destroy_process_group()

if __name__ == "__main__":
    with nbmonitor.watch(name="spawned", repo=sys.argv[1]) as run:
        mp.spawn(train, args=(2, 25), nprocs=2)
    record = run.record()
    print(json.dumps({"step": record.step, "progress": record.progress,
                      "ranks": sorted(w.rank for w in record.workers)}), flush=True)
"""


def test_ranks_started_by_torch_multiprocessing_spawn_count_for_the_block_as_lockstep(tmp_path: Path) -> None:
    from .servers import free_port

    script = tmp_path / "spawned.py"
    script.write_text(SPAWN)
    repo = tmp_path / "repo"
    proc = Proc(
        [sys.executable, str(script), str(repo), str(free_port())], repo, env={"OMP_NUM_THREADS": "1"}
    )
    assert proc.wait_exit(timeout=120) == 0, proc.text
    result = json.loads(proc.text.splitlines()[-1])
    # Ranks walk the same steps: the run is at the slowest rank's step, its progress theirs added up.
    assert result == {"step": 25, "progress": 50, "ranks": [0, 1]}


def test_child_env_has_no_launcher_variables() -> None:
    # The test process itself is no rank: runs made by tests are no members of a job.
    assert not {"TORCHELASTIC_RUN_ID", "RANK", "SLURM_STEP_ID"} & set(child_env(Path("/tmp")))


LOADER = """
import json, sys
import torch, nbmonitor
from torch.utils.data import DataLoader, Dataset

class Items(Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        nbmonitor.report_progress()  # in a DataLoader worker
        return torch.tensor([i])

if __name__ == "__main__":
    with nbmonitor.watch(name="loader", repo=sys.argv[1]) as run:
        for batch in DataLoader(Items(), batch_size=4, num_workers=2):
            pass
    record = run.record()
    print(json.dumps({"progress": record.progress, "workers": sorted(w.state for w in record.workers)}))
"""


def test_progress_reported_in_dataloader_workers_counts_for_the_block(tmp_path: Path) -> None:
    script = tmp_path / "loader.py"
    script.write_text(LOADER)
    proc = Proc([sys.executable, str(script), str(tmp_path / "repo")], tmp_path / "repo")
    assert proc.wait_exit(timeout=120) == 0, proc.text
    assert json.loads(proc.text.splitlines()[-1]) == {"progress": 24, "workers": ["ended", "ended"]}


SLOW_LOADER = LOADER.replace(
    "return torch.tensor([i])", "time.sleep(0.15)\n        return torch.tensor([i])"
).replace("import json, sys", "import json, sys, time")


def test_dataloader_workers_are_named_by_their_number_in_the_usage_history(tmp_path: Path) -> None:
    script = tmp_path / "loader.py"
    script.write_text(SLOW_LOADER)
    repo = Repo(tmp_path / "repo")
    proc = Proc([sys.executable, str(script), str(repo.path)], repo.path)
    assert proc.wait_exit(timeout=120) == 0, proc.text
    (run,) = repo.runs()
    names = {p.name for p in repo.read_usage(run.id).processes.values()}
    assert {"main", "DataLoader worker 0", "DataLoader worker 1"} <= names


def test_a_group_s_usage_is_its_ranks_side_by_side(
    tmp_path: Path, repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    go = tmp_path / "go"
    job = torchrun(tmp_path, repo, "30.0", "30", "0", "5", str(go))  # rank 0 waits at step 5
    try:

        def sampled() -> bool:
            runs = repo.runs()
            return len(runs) == RANKS and all(
                len(h.rows) >= 2 for _, h in repo.read_usages([("", r.id) for r in runs])
            )

        wait_until(sampled, 60, "two seconds of usage from every rank")
        go.touch()
        assert job.wait_exit(timeout=120) == 0, job.text
    finally:
        go.touch()
        job.stop()
    ranks = members(repo)
    group = group_id(ranks[0].group.job, "ddp")  # type: ignore[union-attr]  # checked in members()
    assert main(["--repo", str(repo.path), "usage", group]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ddp (group of 3)")
    for rank in range(RANKS):
        assert f"\nrank {rank} " in out
