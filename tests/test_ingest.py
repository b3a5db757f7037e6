"""The server's side of runs that report over HTTP (nbmonitor.ingest), on a real repo: what a
batch writes, that it can come twice, and every way a bad or foreign batch is refused whole."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nbmonitor import history, logtail
from nbmonitor.ingest import MAX_BODY, Ingest, IngestError, Refused, client_key
from nbmonitor.logtail import LogLine
from nbmonitor.observe import Observer
from nbmonitor.repo import Repo
from nbmonitor.rules import State

from .records import sample

ME, THEM = "a1" * 32, "b2" * 32
RUN = "c" * 32


def batch(*ops: dict[str, Any], client: str = ME) -> bytes:
    return json.dumps({"client": client, "ops": list(ops)}).encode()


def run_op(**changes: Any) -> dict[str, Any]:
    return {"op": "run", "record": sample(id=RUN, host="far", **changes).to_dict()}


def log_text(*texts: str, header: bool = False) -> str:
    lines = logtail.encode(LogLine(1.0 + i, "", "stdout", t) for i, t in enumerate(texts))
    return (logtail.encode_header(RUN) if header else "") + lines


def files(repo: Repo) -> dict[str, bytes]:
    """Every file of the repo but its owners, by path: what a batch wrote."""
    found = {}
    for path in sorted(repo.path.rglob("*")):
        if path.is_file() and "owners" not in path.parts:
            found[str(path.relative_to(repo.path))] = path.read_bytes()
    return found


@pytest.fixture
def ingest(repo: Repo) -> Ingest:
    return Ingest(repo)


def test_a_batch_writes_the_run_its_usage_and_its_log_as_the_client_has_them(
    ingest: Ingest, repo: Repo
) -> None:
    usage = history.encode_header(RUN, 100.0, "far", "train") + "\n"
    answer = ingest.apply(
        batch(
            {"op": "replace", "file": "usage", "run": RUN, "text": usage},
            {"op": "append", "file": "log", "run": RUN, "at": 0, "text": log_text("one", header=True)},
            run_op(write_lag=0.2, heartbeat=0.3),
        ),
        "10.0.0.2",
    )
    assert answer == {"applied": 3, "resend": []}
    run = repo.read_run(RUN)
    assert (run.host, run.via) == ("far", "10.0.0.2")  # a run of another host, whatever it says
    assert run.write_lag == pytest.approx(1.2)  # its file here trails by the client's batching too
    assert run.heartbeat == pytest.approx(2.0)  # refreshed here no oftener than batches come
    assert repo.usage_path(RUN).read_text() == usage
    assert [x.text for x in repo.read_log(RUN)[0]] == ["one"]
    assert oct(repo.owner_path(RUN).stat().st_mode & 0o777) == "0o600"
    assert repo.owner_path(RUN).read_text() == client_key(ME)
    assert ME not in repo.owner_path(RUN).read_text()  # its hash: enough to know it, not to be it


def test_a_run_that_says_it_is_on_this_host_is_still_judged_by_its_heartbeat(
    ingest: Ingest, repo: Repo
) -> None:
    # A container shares the host's name and boot: its pid 7 is not this host's pid 7.
    mine = sample(id=RUN, host=os.uname().nodename, pid=4_000_000, eta=None, heartbeat=10.0)
    observer = Observer(repo)
    assert observer.look([mine])[0].state is State.CRASHED  # written here, judged by its pid
    ingest.apply(batch({"op": "run", "record": mine.to_dict()}), "c")
    sent = repo.read_run(RUN)
    assert observer.process(sent) is None  # no pid of this host is asked about it
    assert observer.look([sent])[0].state is State.RUNNING


def test_a_batch_sent_twice_writes_what_it_writes_once(ingest: Ingest, repo: Repo) -> None:
    first = log_text("one", "two", header=True)
    again = batch(
        {"op": "append", "file": "log", "run": RUN, "at": 0, "text": first},
        run_op(),
    )
    ingest.apply(again, "c")
    ingest.apply(again, "c")  # its answer was lost: the client sends it again
    more = {"op": "append", "file": "log", "run": RUN, "at": len(first.encode()), "text": log_text("three")}
    ingest.apply(batch(more), "c")
    ingest.apply(batch(more), "c")
    assert [x.text for x in repo.read_log(RUN)[0]] == ["one", "two", "three"]


def test_an_append_past_what_the_server_has_asks_for_the_whole_file(ingest: Ingest, repo: Repo) -> None:
    ingest.apply(batch(run_op()), "c")
    late = {"op": "append", "file": "log", "run": RUN, "at": 500, "text": log_text("later")}
    assert ingest.apply(batch(late, run_op(step=11)), "c") == {"applied": 1, "resend": [0]}
    assert not repo.log_path(RUN).exists()
    assert repo.read_run(RUN).step == 11  # the rest of the batch went


def test_a_workers_log_part_and_checkpoint_records_are_written_and_removed(
    ingest: Ingest, repo: Repo
) -> None:
    record = {"format": 1, "job": "j", "path": "/far/ckpt/step-1", "step": 1, "at": 5.0, "metadata": {}}
    name, job = "000000000005000-0123456789ab", "d" * 32
    ingest.apply(
        batch(
            {"op": "append", "file": "log", "run": RUN, "part": 4242, "at": 0, "text": log_text("w")},
            {"op": "checkpoint", "job": job, "name": name, "record": record},
            run_op(),
        ),
        "c",
    )
    assert repo.log_path(RUN, 4242).exists()
    assert json.loads((repo.checkpoints_dir / job / f"{name}.json").read_text())["step"] == 1
    ingest.apply(batch({"op": "uncheckpoint", "job": job, "name": name}), "c")
    assert not (repo.checkpoints_dir / job / f"{name}.json").exists()


def test_another_clients_run_is_refused_and_the_batch_writes_nothing(ingest: Ingest, repo: Repo) -> None:
    ingest.apply(batch(run_op()), "c")
    before = files(repo)
    theirs = batch({"op": "append", "file": "log", "run": "e" * 32, "at": 0, "text": log_text("x")}, run_op())
    with pytest.raises(Refused, match=r"operation 1: c{32} belongs to another client"):
        ingest.apply(theirs.replace(ME.encode(), THEM.encode()), "c")
    assert files(repo) == before
    assert not repo.owner_path("e" * 32).exists()


def test_a_run_written_on_this_host_cannot_be_written_over_http(ingest: Ingest, repo: Repo) -> None:
    repo.write_run(sample(id=RUN))
    with pytest.raises(Refused, match="is written on this host"):
        ingest.apply(batch(run_op(step=99)), "c")
    assert repo.read_run(RUN).step == 10
    local_job = "d" * 32
    (repo.checkpoints_dir / local_job).mkdir(parents=True)
    record = {"format": 1, "path": "/x", "step": 1, "at": 5.0, "metadata": {}}
    with pytest.raises(Refused, match="is written on this host"):
        ingest.apply(
            batch(
                {"op": "checkpoint", "job": local_job, "name": "0" * 15 + "-" + "0" * 12, "record": record}
            ),
            "c",
        )


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"{not json", "a batch must be JSON"),
        (b"[]", "a batch must be a JSON object, got list"),
        (json.dumps({"client": "me", "ops": []}).encode(), "field 'client' must be the client's secret"),
        (batch(run_op(), {"op": "delete", "run": RUN}), "operation 1: field 'op' must be run, append"),
        (
            batch({"op": "run", "record": {"format": 1, "id": "../../etc/passwd"}}),
            "operation 0: field 'id' is not",
        ),
        (
            batch({"op": "append", "file": "../runs", "run": RUN, "text": ""}),
            "field 'file' must be usage or log",
        ),
        (
            batch({"op": "append", "file": "log", "run": "../" + RUN, "text": ""}),
            "field 'run' is not a run id",
        ),
        (batch({"op": "append", "file": "log", "run": RUN, "part": "../x", "text": ""}), "field 'part'"),
        (batch({"op": "append", "file": "usage", "run": RUN, "part": 7, "text": ""}), "of a log only"),
        (batch({"op": "append", "file": "log", "run": RUN, "at": -1, "text": ""}), "field 'at'"),
        (batch({"op": "append", "file": "log", "run": RUN, "text": "half a line"}), "must be whole lines"),
        (batch({"op": "append", "file": "log", "run": RUN, "at": 9, "text": "<b>x</b>\n"}), "not log lines"),
        (batch({"op": "replace", "file": "usage", "run": RUN, "text": '{"t": 1}\n'}), "no header"),
        (
            batch({"op": "replace", "file": "log", "run": RUN, "text": logtail.encode_header("e" * 32)}),
            "the log of another run",
        ),
        (
            batch({"op": "checkpoint", "job": "d" * 32, "name": "../../runs/x", "record": {}}),
            "field 'name' must be a checkpoint record's name",
        ),
        (batch(run_op(name="x" * 300_000)), "a run file is at most"),
        (batch(*[run_op()] * 2001), "at most 2000 operations"),
        (b" " * (MAX_BODY + 1), "a batch is at most"),
    ],
    ids=lambda v: "" if isinstance(v, bytes) else v[:30],
)
def test_a_malformed_batch_is_refused_with_what_is_wrong_and_writes_nothing(
    ingest: Ingest, repo: Repo, body: bytes, said: str
) -> None:
    with pytest.raises(IngestError, match=said.replace("(", r"\(")):
        ingest.apply(body, "c")
    assert not repo.path.exists() or not files(repo)
    assert not repo.owners_dir.exists() or not list(repo.owners_dir.iterdir())


def test_a_refused_batch_names_no_secret(ingest: Ingest, tmp_path: Path) -> None:
    with pytest.raises(IngestError) as refused:
        ingest.apply(batch({"op": "nope"}), "c")
    assert ME not in str(refused.value)
