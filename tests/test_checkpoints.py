"""Checkpoints: saved whole or not at all, recorded with the run's job, found by the next attempt."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path
from typing import Any

import pytest

import nbmonitor
from nbmonitor import _writer, checkpoints
from nbmonitor.checkpoints import CheckpointError
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, nbw, run_id_from, wait_until
from .test_faults import Disk
from .test_faults import disk as disk  # the fixture: a small filesystem to fill


def save_state(path: Path, value: int) -> None:
    (path / "state.json").write_text(json.dumps({"value": value}))
    (path / "weights").mkdir()
    (path / "weights" / "w.bin").write_bytes(bytes(1000))


def test_a_checkpoint_is_saved_whole_recorded_and_found_as_the_latest(
    tmp_path: Path, repo: Repo, clock: FakeClock, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run("train", repo=repo, usage=True)
    assert run.latest_checkpoint() is None  # the first attempt
    with run.checkpoint(step=1200, directory=tmp_path / "ckpt", loss=0.31, note="<b>x</b>") as path:
        assert path.name.startswith(".partial-")  # not in place until the block ends
        save_state(path, 1200)
        assert run.latest_checkpoint() is None
    found = run.latest_checkpoint()
    assert found is not None
    assert (found.step, found.metadata, found.run_id) == (1200, {"loss": 0.31, "note": "<b>x</b>"}, run.id)
    assert found.path.name.startswith("step-000000001200-")
    assert json.loads((found.path / "state.json").read_text()) == {"value": 1200}
    assert found.size == len(json.dumps({"value": 1200})) + 1000
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [found.path.name]  # no partial left
    (record,) = (repo.checkpoints_dir / checkpoints.job_key(run.job)).iterdir()
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    history = run.usage_history
    assert history is not None
    history.flush(clock.mono(), force=True)
    marks = [(m.label, m.value, m.by) for m in repo.read_usage(run.id).marks if m.label == "checkpoint"]
    assert marks == [("checkpoint", 1200, "nbmonitor")]
    run.close()


def fails_inside(run: nbmonitor.Run, where: Path) -> None:
    with run.checkpoint(step=2, directory=where) as path:
        save_state(path, 2)
        raise RuntimeError("disk on fire")


def test_an_exception_in_the_block_leaves_no_checkpoint(
    tmp_path: Path, repo: Repo, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run("train", repo=repo, usage=False)
    with run.checkpoint(step=1, directory=tmp_path / "ckpt") as path:
        save_state(path, 1)
    with pytest.raises(RuntimeError, match="disk on fire"):
        fails_inside(run, tmp_path / "ckpt")
    found = run.latest_checkpoint()
    assert found is not None
    assert found.step == 1
    assert len(list((tmp_path / "ckpt").iterdir())) == 1
    run.close()


def test_old_checkpoints_go_beyond_keep_and_the_best_stays(
    tmp_path: Path, repo: Repo, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run("train", repo=repo, usage=False)
    losses = [0.9, 0.2, 0.5, 0.6, 0.7, 0.8]
    for step, loss in enumerate(losses):
        with run.checkpoint(step=step, directory=tmp_path / "ckpt", keep=3, best="loss", loss=loss) as path:
            save_state(path, step)
    kept = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "ckpt").iterdir())
    assert kept == [1, 3, 4, 5]  # the three newest, and the best (lowest loss) one
    assert len(list((repo.checkpoints_dir / checkpoints.job_key(run.job)).iterdir())) == 4
    for step in range(6, 8):
        with run.checkpoint(
            step=step, directory=tmp_path / "ckpt", keep=2, best="max:loss", loss=step
        ) as path:
            save_state(path, step)
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "ckpt").iterdir()) == [6, 7]
    run.close()


def test_bad_input_is_a_one_line_error_before_anything_is_written(
    tmp_path: Path, repo: Repo, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run("train", repo=repo, usage=False)
    (tmp_path / "a-file").write_text("not a directory")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"step": -1}, "step must be a whole number >= 0, got -1"),
        ({"step": 1, "keep": 0}, "keep must be a whole number >= 1"),
        ({"step": 1, "model": object()}, "checkpoint metadata must be JSON"),
        ({"step": 1, "loss": float("nan")}, "checkpoint metadata must be JSON"),
        ({"step": 1, "directory": tmp_path / "a-file" / "ckpt"}, "cannot write checkpoints in "),
    ]
    for options, message in cases:
        with pytest.raises(CheckpointError, match=message) as raised, run.checkpoint(**options):
            pytest.fail("the block must not run")
        assert "\n" not in str(raised.value)
    assert run.latest_checkpoint() is None
    with pytest.raises(nbmonitor.NbmonitorError, match="needs a run"), nbmonitor.checkpoint(step=1):
        pass
    run.close()


def fills(run: nbmonitor.Run, where: Path) -> None:
    with run.checkpoint(step=2, directory=where) as path:
        (path / "big.bin").write_bytes(bytes(1 << 20))


def test_a_full_disk_while_saving_raises_and_the_previous_checkpoint_stays(
    disk: Disk, repo: Repo, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run("train", repo=repo, usage=False)
    with run.checkpoint(step=1, directory=disk.path / "ckpt") as path:
        save_state(path, 1)
    disk.fill()
    with pytest.raises(OSError, match="No space left") as raised:
        fills(run, disk.path / "ckpt")
    assert raised.value.errno == errno.ENOSPC
    disk.free()
    found = run.latest_checkpoint()
    assert found is not None
    assert found.step == 1
    assert [p.name for p in (disk.path / "ckpt").iterdir()] == [found.path.name]
    run.close()


RESUMES = """
import os, sys, time
import nbmonitor

with nbmonitor.watch(name="counter") as run:
    ckpt = nbmonitor.latest_checkpoint()
    start = ckpt.step + 1 if ckpt else 0
    print("started", run.id, "from", start, flush=True)
    for step in range(start, 10):
        with nbmonitor.checkpoint(step=step, total=step) as path:
            (path / "count").write_text(str(step))
            if step == int(sys.argv[1]):
                print("saving", step, flush=True)
                time.sleep(60)  # killed here, mid-save
    print("done", step, flush=True)
"""


def test_a_process_killed_while_saving_resumes_from_the_checkpoint_before(tmp_path: Path, repo: Repo) -> None:
    script = tmp_path / "counter.py"
    script.write_text(RESUMES)
    first = Proc.python(script, "4", repo=repo.path)
    first.wait_for("saving 4", timeout=30)
    first.popen.send_signal(signal.SIGKILL)
    first.wait_exit()
    folder = tmp_path / "checkpoints" / "counter"  # beside the script
    (partial,) = [p for p in folder.iterdir() if p.name.startswith(".partial-")]
    assert (partial / "count").read_text() == "4"  # written, never completed
    found = (
        nbmonitor.latest_checkpoint.__wrapped__
        if hasattr(nbmonitor.latest_checkpoint, "__wrapped__")
        else None
    )
    del found
    second = Proc.python(script, "-1", repo=repo.path)
    second.wait_for("started", "from 4", timeout=30)  # step 3 was the last complete one
    assert second.wait_exit(30) == 0
    assert second.matching("done 9")
    assert not partial.exists()  # its process is gone: cleaned up by the next attempt
    steps = sorted(int(p.name.split("-")[1]) for p in folder.iterdir())
    assert steps == [7, 8, 9]  # keep=3
    run_ids = {json.loads(p.read_text())["run"] for p in next(repo.checkpoints_dir.iterdir()).iterdir()}
    assert run_ids == {run_id_from(second, "started")}
    shown = nbw(repo, "status", run_id_from(second, "started"))
    (line,) = [x for x in shown.stdout.splitlines() if "latest checkpoint" in x]
    assert line.startswith("  latest checkpoint: at step 9 saved ")
    assert line.endswith(str(folder / sorted(p.name for p in folder.iterdir())[-1]))


def test_a_job_is_the_same_across_attempts_and_launchers_name_it(tmp_path: Path) -> None:
    from nbmonitor.record import Origin

    script = Origin("script", path=str(tmp_path / "train.py"), argv=("--lr", "3"))
    assert checkpoints.job_of("train", script, {}) == checkpoints.job_of("train", script, {})
    assert checkpoints.job_of("train", script, {}) != checkpoints.job_of("eval", script, {})
    assert checkpoints.job_of("t", script, {"TORCHELASTIC_RUN_ID": "abc"}) == "torchrun:abc:t"
    assert checkpoints.job_of("t", script, {"SLURM_JOB_ID": "77"}) == "slurm:77:t"
    assert (
        checkpoints.job_of("t", script, {"NBMONITOR_JOB_ID": "j1", "SLURM_JOB_ID": "77"}) == "nbmonitor:j1:t"
    )
    notebook = Origin("notebook", path="work/train.ipynb", cell=3)
    assert checkpoints.job_of("t", notebook, {}) == "notebook:work/train.ipynb:t"
    assert checkpoints.default_dir("a b/c", script, {}) == tmp_path / "checkpoints" / "a-b-c"
    assert checkpoints.default_dir("t", script, {"NBMONITOR_CHECKPOINT_DIR": "/data/ck"}) == Path(
        "/data/ck/t"
    )


CELL = """%%watch --eta 60 --name counter
import json, time
import nbmonitor
ckpt = nbmonitor.latest_checkpoint()
start = ckpt.step + 1 if ckpt else 0
print("resumed from", start)
for step in range(start, 6):
    with nbmonitor.checkpoint(step=step) as path:
        (path / "count").write_text(str(step))
    if step == 2 and start == 0:
        time.sleep(60)  # the kernel dies here
"""


def test_a_watched_cell_resumes_from_its_checkpoint_in_a_restarted_kernel(tmp_path: Path, repo: Repo) -> None:
    from .kernels import Kernel

    kernel = Kernel(repo.path)
    try:
        kernel.run(f"%load_ext nbmonitor\n%env NBMONITOR_CHECKPOINT_DIR={tmp_path / 'ckpt'}")
        kernel.client.execute(CELL)
        folder = tmp_path / "ckpt" / "counter"

        # Recorded, not only moved into place: a kill between the two leaves the one before the latest.
        def recorded() -> bool:
            return folder.is_dir() and len(list(repo.checkpoints_dir.glob("*/*.json"))) == 3

        wait_until(recorded, 30, "three checkpoints recorded")
        kernel.manager.restart_kernel(now=True)  # killed mid-cell
        kernel.client.wait_for_ready(timeout=60)
        kernel.run(f"%load_ext nbmonitor\n%env NBMONITOR_CHECKPOINT_DIR={tmp_path / 'ckpt'}")
        reply, messages = kernel.run(CELL)
        assert reply["status"] == "ok", reply
    finally:
        kernel.stop()
    said = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert "resumed from 3" in said  # steps 0 to 2 were saved before the kernel died
    shown = [
        m["content"]["data"]["text/plain"]
        for m in messages
        if m["msg_type"] in ("display_data", "update_display_data")
        and m["content"]["data"].get("text/plain", "").startswith("nbmonitor · counter")
    ]
    assert "\ncheckpoint at step 5, saved " in shown[-1]  # the display it ends with
    (second,) = [r for r in repo.runs() if r.status == "finished"]
    assert second.checkpoint is not None
    assert (second.checkpoint.step, second.checkpoint.resumed) == (5, False)
    assert sorted(p.name.split("-")[1] for p in folder.glob("step-*")) == [f"{s:012d}" for s in (3, 4, 5)]
