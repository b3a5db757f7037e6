"""The server extension's REST API in a real Jupyter server, with authentication on."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from nbmonitor._format import COLOURS, duration
from nbmonitor.record import RunUsage
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


async def get(jp_fetch: Any, *path: str) -> Any:
    response = await jp_fetch("nbmonitor", "api", *path)
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
               usage=RunUsage(150.0, 3 * 2**30, 2**30))
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


@pytest.mark.parametrize("path", ["runs", f"runs/{'a' * 32}", "watcher"])
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
@pytest.mark.parametrize("path", ["runs", f"runs/{'a' * 32}", "watcher"])
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
