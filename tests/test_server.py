"""The server extension's REST API in a real Jupyter server, with authentication on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from nbmonitor import _process, history, logtail
from nbmonitor._format import COLOURS, duration
from nbmonitor.logtail import LogLine
from nbmonitor.record import CheckpointField, RunUsage
from nbmonitor.repo import Repo

from .records import sample


@pytest.fixture
def jp_server_config(repo: Repo, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The server with nbmonitor on ``repo``, or, parametrized indirectly, on a bad repo."""
    config: dict[str, Any] = {"ServerApp": {"jpserver_extensions": {"nbmonitor": True}}}
    where = getattr(request, "param", "repo")
    if where == "a-file":
        repo.path.parent.mkdir(parents=True, exist_ok=True)
        repo.path.write_text("not a repo")
    if where == "relative-env":
        request.getfixturevalue("monkeypatch").setenv("NBMONITOR_REPO", "relative/runs")
    else:
        config["Nbmonitor"] = {"repo": str(repo.path)}
    return config


async def get(jp_fetch: Any, *path: str, **params: str) -> Any:
    response = await jp_fetch("nbmonitor", "api", *path, params=params)
    assert response.code == 200
    return json.loads(response.body)


def write_runs(repo: Repo) -> None:
    now = time.time()
    host = os.uname().nodename
    repo.write_run(
        sample(id="a" * 32, name="<b>stuck</b>", host=host, pid=os.getpid(), process_start=None, boot_id=None,
               eta=1.0, last_progress_at=now - 60, started_at=now - 100, step=40, total=100)
    )  # fmt: skip
    repo.write_run(
        sample(id="b" * 32, name="done", status="finished", ended_at=now, started_at=now - 5,
               usage=RunUsage(150.0, 3 * 2**30, 2**30), attempt=1,
               checkpoint=CheckpointField(1200, now - 240, resumed=True))
    )  # fmt: skip


async def test_runs_lists_what_the_repo_holds(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)
    body = await get(jp_fetch, "runs")
    runs = {r["id"][0]: r for r in body["runs"]}
    assert set(runs) == {"a", "b"}
    stuck = runs["a"]
    assert (stuck["name"], stuck["status"], stuck["step"], stuck["total"]) == (
        "<b>stuck</b>",
        "stalled",
        40,
        100,
    )
    assert stuck["since_progress"] >= 59
    assert stuck["since_progress_text"] == duration(stuck["since_progress"])  # as the CLI and widget say it
    assert (stuck["colour"], runs["b"]["colour"]) == (COLOURS["stalled"], COLOURS["finished"])
    assert runs["b"]["since_progress_text"] is None
    assert stuck["origin"]["text"] == "train.py --lr 3"
    assert (runs["b"]["status"], runs["b"]["since_progress"]) == ("finished", None)
    assert runs["b"]["usage"] == {"cpu_percent": 150.0, "rss": 3 * 2**30, "gpu_memory": 2**30}
    assert stuck["usage"] is None
    assert (stuck["attempt"], stuck["attempt_text"]) == (0, "")
    assert (runs["b"]["attempt"], runs["b"]["attempt_text"]) == (
        1,
        "attempt 2 · resumed from the checkpoint at step 1200, saved 4 min ago",  # as it ended
    )


async def test_a_runs_stack_says_where_its_thread_was_stuck(jp_fetch: Any, repo: Repo) -> None:
    from nbmonitor.record import StackFrame

    write_runs(repo)
    stuck, now = repo.read_run("a" * 32), time.time()
    frames = (
        StackFrame("wait_for_batch", "/home/u/proj/data.py", 42, "batch = queue.get()"),
        StackFrame("train", "/home/u/proj/train.py", 88, "for batch in loader(<b>):"),
        StackFrame("<module>", "/home/u/proj/train.py", 120, "train()"),
        StackFrame("main", "/usr/lib/python3/runpy.py", 7),
    )
    repo.write_run(
        stuck.with_changes(stack=frames, stack_state="stalled", stack_at=now - 30, stack_from="py-spy")
    )
    # Taken before its last progress: the stack is kept, but the run is not stuck there now.
    repo.write_run(
        sample(id="c" * 32, name="recovered", stack=frames[:1], stack_state="late", stack_at=now - 90,
               last_progress_at=now - 10)
    )  # fmt: skip
    runs = {r["id"][0]: r for r in (await get(jp_fetch, "runs"))["runs"]}
    stack = runs["a"]["stack"]
    assert set(stack) == {"frames", "state", "at", "from", "stuck_in", "threads"}
    assert stack["threads"] == []  # its own thread's only, unless it asked for all
    assert (stack["state"], stack["at"], stack["from"]) == ("stalled", pytest.approx(now - 30), "py-spy")
    assert stack["stuck_in"] == "wait_for_batch (data.py:42) ← train (train.py:88) ← <module> (train.py:120)"
    assert all(set(f) == {"function", "file", "line", "code"} for f in stack["frames"])
    assert [tuple(f.values()) for f in stack["frames"]] == [  # innermost first, paths as they are
        ("wait_for_batch", "/home/u/proj/data.py", 42, "batch = queue.get()"),
        ("train", "/home/u/proj/train.py", 88, "for batch in loader(<b>):"),
        ("<module>", "/home/u/proj/train.py", 120, "train()"),
        ("main", "/usr/lib/python3/runpy.py", 7, ""),
    ]
    assert runs["b"]["stack"] is None  # never seen stuck
    recovered = runs["c"]["stack"]
    assert (recovered["state"], recovered["from"], recovered["stuck_in"]) == ("late", "process", None)
    assert [f["function"] for f in recovered["frames"]] == ["wait_for_batch"]
    assert (await get(jp_fetch, "runs", "a" * 32))["stack"] == runs["a"]["stack"]


async def test_a_group_is_listed_once_with_its_members_and_whom_to_blame(jp_fetch: Any, repo: Repo) -> None:
    from nbmonitor.membership import group_id
    from nbmonitor.record import GroupField, WorkerField

    now, host = time.time(), os.uname().nodename
    live = {"pid": os.getpid(), "process_start": None, "boot_id": None, "host": host}
    for rank in range(2):
        repo.write_run(
            sample(id=f"{rank + 1:032x}", name="ddp", eta=1.0, step=10 - rank, started_at=now - 100,
                   last_progress_at=now - 60 - rank, group=GroupField("job-1", "torchrun", rank, 2), **live)
        )  # fmt: skip
    workers = (WorkerField(77, "SpawnPoolWorker-1", 5, step=5),)
    repo.write_run(sample(id="c" * 32, name="<i>pool</i>", workers=workers, **live))
    body = await get(jp_fetch, "runs")
    assert [r["id"][0] for r in body["runs"]] == ["c"]  # members are listed under their group only
    assert body["runs"][0]["workers"] == [
        {"name": "SpawnPoolWorker-1", "pid": 77, "rank": None, "step": 5, "state": "running", "exit": None,
         "colour": COLOURS["running"]}
    ]  # fmt: skip
    (group,) = body["groups"]
    assert group["id"] == group_id("job-1", "ddp")
    assert (group["status"], group["step"], group["label"]) == ("stalled", 9, "torchrun job job-1, 2 ranks")
    assert [m["group"]["role"] for m in group["members"]] == ["rank 0", "rank 1"]
    assert [m["blamed"] for m in group["members"]] == [False, True]
    assert group["blame"].startswith(f"rank 1 on {host}, pid {os.getpid()}: step 9")
    assert group["attempt_text"] == ""


async def test_a_corrupt_run_file_does_not_break_the_listing(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)
    (repo.runs_dir / f"{'c' * 32}.json").write_text('{"format": 1, "id": "cc')
    body = await get(jp_fetch, "runs")
    assert sorted(r["id"][0] for r in body["runs"]) == ["a", "b"]


async def test_one_run_by_id(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)
    assert (await get(jp_fetch, "runs", "b" * 32))["status"] == "finished"
    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("nbmonitor", "api", "runs", "d" * 32)
    assert missing.value.code == 404
    with pytest.raises(HTTPClientError) as bad:
        await jp_fetch("nbmonitor", "api", "runs", "..%2F..%2Fetc")
    assert bad.value.code in (400, 404)


async def test_watcher_says_whether_one_runs(jp_fetch: Any, repo: Repo) -> None:
    body = await get(jp_fetch, "watcher")
    assert body == {"running": False, "repo": str(repo.path)}


ENDPOINTS = ["runs", f"runs/{'a' * 32}", f"runs/{'a' * 32}/usage", f"runs/{'a' * 32}/logs", "watcher"]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_endpoint_refuses_requests_without_a_token(
    jp_fetch: Any, jp_base_url: str, jp_http_port: int, path: str
) -> None:
    await jp_fetch("nbmonitor", "api", "watcher")  # the server is up
    url = f"http://localhost:{jp_http_port}{jp_base_url}nbmonitor/api/{path}"
    with pytest.raises(HTTPClientError) as refused:
        await AsyncHTTPClient().fetch(url)
    assert refused.value.code == 403


async def test_notebook_paths_are_given_relative_to_the_servers_root(
    jp_fetch: Any, repo: Repo, jp_root_dir: Any
) -> None:
    from nbmonitor.record import Origin

    inside = str(jp_root_dir / "work" / "train.ipynb")
    repo.write_run(sample(id="e" * 32, origin=Origin("notebook", path=inside, cell=3)))
    repo.write_run(sample(id="f" * 32, origin=Origin("notebook", path="/elsewhere/x.ipynb", cell=1)))
    runs = {r["id"][0]: r for r in (await get(jp_fetch, "runs"))["runs"]}
    assert runs["e"]["origin"]["lab_path"] == "work/train.ipynb"
    assert runs["f"]["origin"]["lab_path"] is None
    one = await get(jp_fetch, "runs", "e" * 32)
    assert one["origin"]["lab_path"] == "work/train.ipynb"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ENDPOINTS)
async def test_nothing_can_change_state_with_a_token_or_from_another_site(
    jp_fetch: Any, jp_base_url: str, jp_http_port: int, repo: Repo, path: str, method: str
) -> None:
    write_runs(repo)
    before = sorted((p.name, p.read_bytes()) for p in repo.path.rglob("*") if p.is_file())
    body = None if method == "DELETE" else b"{}"
    with pytest.raises(HTTPClientError) as authorised:  # the token is sent: no such method
        await jp_fetch("nbmonitor", "api", *path.split("/"), method=method, body=body)
    assert authorised.value.code == 405
    url = f"http://localhost:{jp_http_port}{jp_base_url}nbmonitor/api/{path}"
    forged = {"Cookie": "_xsrf=2|the-users-cookie"}  # what a form posted from another site sends
    for origin, refusals in [({"Origin": "http://evil.example"}, {403, 404}), ({}, {403})]:
        # Jupyter hides the API from other origins (404; jupyter_server 2.4, the lowest tested,
        # refuses them with 403); with no origin, no token and no XSRF header the request is
        # refused before any handler runs.
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(url, method=method, body=body, headers=forged | origin)
        assert refused.value.code in refusals
    assert sorted((p.name, p.read_bytes()) for p in repo.path.rglob("*") if p.is_file()) == before


async def test_the_ingest_takes_records_with_the_token_and_refuses_a_cross_site_form(
    jp_fetch: Any, jp_base_url: str, jp_http_port: int, repo: Repo
) -> None:
    record = sample(id="f" * 32, host="far").to_dict()
    body = json.dumps({"client": "a1" * 32, "ops": [{"op": "run", "record": record}]}).encode()
    url = f"http://localhost:{jp_http_port}{jp_base_url}nbmonitor/api/ingest"
    forged = {"Cookie": "_xsrf=2|the-users-cookie"}
    for origin, refusals in [({"Origin": "http://evil.example"}, {403, 404}), ({}, {403})]:
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(url, method="POST", body=body, headers=forged | origin)
        assert refused.value.code in refusals
    assert not repo.runs_dir.exists() or not list(repo.runs_dir.iterdir())
    with pytest.raises(HTTPClientError) as read:
        await jp_fetch("nbmonitor", "api", "ingest")  # it takes records; it shows none
    assert read.value.code == 405
    answer = await jp_fetch("nbmonitor", "api", "ingest", method="POST", body=body)
    assert json.loads(answer.body) == {"applied": 1, "resend": []}
    assert repo.read_run("f" * 32).via == "127.0.0.1"


@pytest.mark.parametrize(
    ("jp_server_config", "says"),
    [
        ("a-file", "is a file, not a repo directory"),
        ("relative-env", "NBMONITOR_REPO must be an absolute path, got 'relative/runs'"),
    ],
    indirect=["jp_server_config"],
)
async def test_a_repo_that_cannot_be_one_is_said_in_every_answer_not_a_server_error(
    jp_fetch: Any, says: str
) -> None:
    # Seen: 500, and the panel showing "offline" while the server was up.
    runs = await get(jp_fetch, "runs")
    assert runs["runs"] == []
    assert says in runs["error"]
    assert "\n" not in runs["error"]
    watcher = await get(jp_fetch, "watcher")
    assert (watcher["running"], says in watcher["error"]) == (False, True)
    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("nbmonitor", "api", "runs", "a" * 32)
    assert missing.value.code == 404


SVG = "{http://www.w3.org/2000/svg}"


def write_history(
    repo: Repo, run_id: str, names: list[str], *, gpu: bool = False, rows: int = 5
) -> list[str]:
    """A usage history of ``rows`` seconds for processes ``names`` (GPU memory too with ``gpu``),
    written with nbmonitor's own encoders; returns its lines."""
    lines = [history.encode_header(run_id, time.time() - rows, "box", "train")]
    lines += [
        history.encode_process(history.ProcessInfo(n, 100 + n, name, 0.0)) for n, name in enumerate(names)
    ]
    lines.append(history.encode_mark(history.Mark(1.0, "eval", 2)))
    for t in range(rows):
        readings = {
            n: history.Reading(50.0 + n, 2**28 * (n + 1), 2**27 * (n + 1), 2**30 if gpu else None)
            for n in range(len(names))
        }
        lines.append(history.encode_row(history.Row(float(t + 1), 1.0, readings)))
    repo.usage_dir.mkdir(parents=True, exist_ok=True)
    repo.usage_path(run_id).write_text("".join(lines))
    return lines


def series(svg: str) -> list[str]:
    """The data-proc of each stacked area of the plot, which must parse as XML."""
    root = ET.fromstring(svg)
    assert (root.tag, root.get("class")) == (f"{SVG}svg", "nbmonitor-usage")
    return [p.get("data-proc", "") for p in root.iter(f"{SVG}path") if p.get("class") == "nbm-series"]


async def refusal(jp_fetch: Any, *path: str, **params: str) -> tuple[int, str]:
    """The status and the JSON message of a request that must fail."""
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("nbmonitor", "api", *path, params=params)
    assert refused.value.response is not None
    return refused.value.code, json.loads(refused.value.response.body)["message"]


async def test_a_runs_usage_plot_has_an_area_per_process_in_each_panel(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)
    write_history(repo, "b" * 32, ["main", "<b>DataLoader</b> worker 0", "worker 1"], gpu=True)
    response = await jp_fetch("nbmonitor", "api", "runs", "b" * 32, "usage")
    body = json.loads(response.body)
    assert set(body) == {"svg", "peaks", "skipped"}
    # CPU, memory and GPU memory: three panels of three processes each.
    assert sorted(series(body["svg"])) == sorted(["0", "1", "2"] * 3)
    assert ET.fromstring(body["svg"]).get("width") == "720"
    assert "&lt;b&gt;DataLoader&lt;/b&gt;" in body["svg"]  # run text escaped, drawn as text
    assert ET.fromstring(body["svg"]).find(f"{SVG}metadata") is not None  # the hover read-out's data
    assert body["peaks"] == [
        "peak CPU 153% (most: worker 1, 52%)",
        "peak memory 768.0 MB (most: worker 1, 384.0 MB)",
        "peak GPU memory 3.0 GB (most: main, 1.0 GB)",
    ]
    assert body["skipped"] == 0


@pytest.mark.parametrize(("asked", "drawn"), [("1000", "1000"), ("10", "320"), ("99999", "1600")])
async def test_the_plots_width_is_asked_for_and_kept_within_bounds(
    jp_fetch: Any, repo: Repo, asked: str, drawn: str
) -> None:
    write_history(repo, "b" * 32, ["main"])
    body = await get(jp_fetch, "runs", "b" * 32, "usage", width=asked)
    assert ET.fromstring(body["svg"]).get("width") == drawn
    assert series(body["svg"]) == ["0", "0"]  # CPU and memory; no GPU memory seen


async def test_a_usage_plot_that_cannot_be_drawn_says_why(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)
    assert await refusal(jp_fetch, "runs", "b" * 32, "usage") == (
        404,
        f"run {'b' * 32} has no usage history (made with usage=False, or by an older nbmonitor)",
    )
    assert await refusal(jp_fetch, "runs", "d" * 32, "usage") == (404, f"no run or group {'d' * 32}")
    for bad in ["..%2F..%2Fetc", "B" * 32, "b" * 31]:
        code, _ = await refusal(jp_fetch, "runs", bad, "usage")
        assert code in (400, 404)
    assert (await refusal(jp_fetch, "runs", "b" * 32, "usage", width="wide"))[0] == 400
    repo.usage_dir.mkdir(parents=True, exist_ok=True)
    repo.usage_path("b" * 32).write_text('{"not": "a history"}\n')
    code, message = await refusal(jp_fetch, "runs", "b" * 32, "usage")
    assert code == 404
    assert message.startswith("the usage history cannot be read: ")
    assert message.endswith("not a usage history (its first line is no header)")
    repo.write_run(sample(id="e" * 32))  # running, with a header and not one second yet
    write_history(repo, "e" * 32, ["main"], rows=0)
    assert await refusal(jp_fetch, "runs", "e" * 32, "usage") == (
        404,
        f"no usage recorded yet for {'e' * 32}: it is sampled once a second",
    )
    write_history(repo, "b" * 32, ["main"], rows=0)  # finished within its first second
    assert await refusal(jp_fetch, "runs", "b" * 32, "usage") == (
        404,
        f"no usage recorded for {'b' * 32}: it ended before its first sample (one a second)",
    )


async def test_a_damaged_history_is_drawn_from_the_lines_that_can_be_read(jp_fetch: Any, repo: Repo) -> None:
    lines = write_history(repo, "b" * 32, ["main", "worker"], rows=6)
    # A torn last line (a kill mid-write), and rows of nonsense in between.
    damaged = [*lines[:5], '{"t": 2.0, "p": {"0": "lots"}}\n', "\x00\x00garbage\n", *lines[5:], lines[6][:20]]
    repo.usage_path("b" * 32).write_text("".join(damaged))
    body = await get(jp_fetch, "runs", "b" * 32, "usage")
    assert body["skipped"] == 3
    assert sorted(series(body["svg"])) == ["0", "0", "1", "1"]
    root = ET.fromstring(body["svg"])
    data = json.loads(root.find(f"{SVG}metadata").text or "")  # type: ignore[union-attr]  # asserted above
    assert len(data["t"]) == 6  # every row that parses is drawn


async def test_a_groups_usage_plot_shows_each_members_processes(jp_fetch: Any, repo: Repo) -> None:
    from nbmonitor.membership import group_id
    from nbmonitor.record import GroupField

    for rank in range(3):
        run_id = f"{rank + 1:032x}"
        repo.write_run(sample(id=run_id, name="ddp", group=GroupField("job-1", "torchrun", rank, 3)))
        if rank < 2:  # rank 2 has no history (usage=False): the others are still drawn
            write_history(repo, run_id, ["main", "DataLoader worker 0"])
    body = await get(jp_fetch, "runs", group_id("job-1", "ddp"), "usage")
    assert len(series(body["svg"])) == 2 * 2 * 2  # two members' two processes, in CPU and memory
    root = ET.fromstring(body["svg"])
    keys = [k for k in root.iter(f"{SVG}g") if k.get("class") == "nbm-key"]
    assert [k.findtext(f"{SVG}title") for k in keys] == [
        "rank 0 main",
        "rank 0 DataLoader worker 0",
        "rank 1 main",
        "rank 1 DataLoader worker 0",
    ]
    assert (root.findtext(f"{SVG}title") or "").startswith("ddp (group of 3): usage of 4 processes")
    member = await get(jp_fetch, "runs", f"{1:032x}", "usage")  # a member alone: its own processes
    assert len(series(member["svg"])) == 2 * 2
    repo.write_run(sample(id="e" * 32, name="solo", group=GroupField("job-2", "torchrun", 0, 1)))
    assert await refusal(jp_fetch, "runs", group_id("job-2", "solo"), "usage") == (
        404,
        f"no member of group {group_id('job-2', 'solo')} has a usage history",
    )


async def test_a_runs_log_tail_is_its_last_lines_as_data(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)
    said = [LogLine(1_800_000_000.0 + i, "", "stdout", f"step {i}") for i in range(80)]
    said.append(LogLine(1_800_000_100.0, "ERROR", "traceback", "<script>alert(1)</script>\x1b[31m\x00"))
    repo.replace_log("b" * 32, logtail.encode_header("b" * 32) + logtail.encode(said) + "torn {\n")
    body = await get(jp_fetch, "runs", "b" * 32, "logs")
    assert body["skipped"] == 1
    assert [LogLine.from_dict(x) for x in body["lines"]] == said[-50:]  # 50 unless asked
    assert len((await get(jp_fetch, "runs", "b" * 32, "logs", lines="5"))["lines"]) == 5
    assert len((await get(jp_fetch, "runs", "b" * 32, "logs", lines="100000"))["lines"]) == 81
    assert (await get(jp_fetch, "runs", "a" * 32, "logs")) == {"lines": [], "skipped": 0}  # none yet
    assert await refusal(jp_fetch, "runs", "d" * 32, "logs") == (404, f"no run or group {'d' * 32}")
    assert (await refusal(jp_fetch, "runs", "b" * 32, "logs", lines="many"))[0] == 400


async def test_a_poll_with_a_cursor_gets_only_what_changed_and_what_went(jp_fetch: Any, repo: Repo) -> None:
    write_runs(repo)  # "a" stalled, "b" finished
    first = await get(jp_fetch, "runs")
    assert first["full"] is True
    assert {r["id"][0] for r in first["runs"]} == {"a", "b"}
    again = await get(jp_fetch, "runs", since=first["cursor"])
    assert again["full"] is False
    # Nothing changed: a stalled run's answer stays as it was until its file or its state does.
    assert again["runs"] == again["removed_runs"] == again["removed_groups"] == again["groups"] == []
    assert again["cursor"] == first["cursor"]
    repo.write_run(sample(id="c" * 32, name="new", status="finished", ended_at=time.time()))
    repo.run_path("b" * 32).unlink()
    later = await get(jp_fetch, "runs", since=again["cursor"])
    assert [r["id"][0] for r in later["runs"]] == ["c"]
    assert later["removed_runs"] == ["b" * 32]
    stuck = repo.read_run("a" * 32)
    repo.write_run(stuck.with_changes(step=41, progress=stuck.progress + 1, last_progress_at=time.time()))
    moved = await get(jp_fetch, "runs", since=later["cursor"])
    assert [(r["id"][0], r["status"], r["step"]) for r in moved["runs"]] == [("a", "running", 41)]
    quiet = await get(jp_fetch, "runs", since=moved["cursor"])
    assert quiet["runs"] == []
    assert len(json.dumps(quiet)) < 1024  # a cursor, and little else
    # A cursor of another server, or none the server can answer from: everything again.
    for cursor in ("0123456789ab:1", f"{first['cursor'].split(':')[0]}:999999", "nonsense", ""):
        body = await get(jp_fetch, "runs", since=cursor)
        assert body["full"] is True
        assert {r["id"][0] for r in body["runs"]} == {"a", "c"}


async def test_a_deadline_or_a_death_changes_the_answer_with_no_file_written(
    jp_fetch: Any, repo: Repo
) -> None:
    host = os.uname().nodename
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = _process.process_start(child.pid)
        repo.write_run(
            sample(id="a" * 32, name="late-soon", host=host, pid=os.getpid(), process_start=None,
                   boot_id=None, eta=0.3, write_lag=0.0, last_progress_at=time.time(), started_at=time.time())
        )  # fmt: skip
        repo.write_run(
            sample(id="b" * 32, name="dies", host=host, pid=child.pid, process_start=start, boot_id=None,
                   eta=3600.0, started_at=time.time(), last_progress_at=time.time())
        )  # fmt: skip
        first = await get(jp_fetch, "runs")
        assert {r["id"][0]: r["status"] for r in first["runs"]} == {"a": "running", "b": "running"}
        await asyncio.sleep(0.4)  # past a's ETA: it is late, though its file says nothing new
        late = await get(jp_fetch, "runs", since=first["cursor"])
        assert [(r["id"][0], r["status"]) for r in late["runs"]] == [("a", "late")]
        child.kill()
        child.wait()
        dead = await get(jp_fetch, "runs", since=late["cursor"])
        assert [(r["id"][0], r["status"]) for r in dead["runs"]] == [("b", "crashed")]
    finally:
        child.kill()
        child.wait()


async def test_the_first_answer_holds_a_page_of_ended_runs_and_asks_for_more(
    jp_fetch: Any, repo: Repo
) -> None:
    now = time.time()
    for i in range(1, 8):
        repo.write_run(sample(id=f"{i:032x}", name=f"old-{i}", status="finished", started_at=now - 100 + i,
                              ended_at=now - 50 + i))  # fmt: skip
    repo.write_run(sample(id="f" * 32, name="going", host="elsewhere", started_at=now - 1000))
    first = await get(jp_fetch, "runs", ended="3")
    assert [r["name"] for r in first["runs"]] == ["going", "old-7", "old-6", "old-5"]
    assert first["more"] is True
    older = await get(jp_fetch, "runs", ended="3", before=str(first["runs"][-1]["started_at"]))
    assert [r["name"] for r in older["runs"]] == ["old-4", "old-3", "old-2"]
    assert older["more"] is True
    last = await get(jp_fetch, "runs", ended="3", before=str(older["runs"][-1]["started_at"]))
    assert ([r["name"] for r in last["runs"]], last["more"]) == (["old-1"], False)
    for bad in ({"ended": "many"}, {"ended": "-1"}, {"before": "yesterday"}):
        with pytest.raises(HTTPClientError) as caught:
            await get(jp_fetch, "runs", **bad)
        assert caught.value.code == 400


def test_the_feed_forgets_old_removals_and_sends_everything_to_a_cursor_before_them() -> None:
    from nbmonitor.server import _Feed

    feed = _Feed()
    feed.KEPT_REMOVALS = 2
    items = [{"id": str(i), "started_at": i, "status": "running"} for i in range(5)]
    feed.update(items, [])
    cursor = feed.since(None)["cursor"]
    for kept in (4, 3, 2, 1):  # one run goes at each look
        feed.update(items[:kept], [])
    assert feed.since(cursor)["full"] is True  # removals it would need are forgotten
    recent = feed.since(None)["cursor"]
    feed.update(items[:0], [])
    assert feed.since(recent)["removed_runs"] == ["0"]
