"""Runs on hosts that share no filesystem with their Jupyter server report to it over HTTP
(nbmonitor.remote, nbmonitor.ingest): a real Jupyter server, a real watcher beside it, and scripts
on far hosts (their own network, host name, pids and mounts) that reach it through a veth pair."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbmonitor import _sender
from nbmonitor.errors import RepoError
from nbmonitor.remote import RemoteRepo, Server
from nbmonitor.repo import Repo

from .helpers import Proc, event_lines, wait_until, watching
from .jupyter import FarHost, JupyterServer, can_make_hosts

# Reports ``steps`` steps, one each ``every`` seconds, saying each; at ``hang`` it hangs.
SCRIPT = """
import sys, time
import nbmonitor

name, steps, every, eta, hang = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:5]), int(sys.argv[5])
with nbmonitor.watch(eta=eta, name=name) as run:
    print("started", run.id, flush=True)
    for step in range(1, steps + 1):
        if step == hang:
            print("hanging", flush=True)
            time.sleep(3600)  # the hang under test: killed by the test
        time.sleep(every)
        print(f"step {step}", flush=True)
        run.report_progress(step=step)
print("done", flush=True)
"""

POLL = 0.2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[JupyterServer]:
    work = tmp_path / "server"
    work.mkdir()
    found = JupyterServer(work, work / "repo", ip="0.0.0.0")
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "far" / "train.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SCRIPT)
    return path


def client_env(
    server: JupyterServer, spool: Path, host: str = "127.0.0.1", token: str | None = None
) -> dict[str, str]:
    return {
        "NBMONITOR_REPO": server.url(host),
        "NBMONITOR_TOKEN": token or server.token,
        "NBMONITOR_SPOOL": str(spool),
        "NBMONITOR_HEARTBEAT": "0.3",
    }


def launch(script: Path, name: str, steps: int, every: float, eta: float = 30.0, hang: int = 0) -> list[str]:
    return [sys.executable, str(script), name, str(steps), str(every), str(eta), str(hang)]


def server_runs(server: JupyterServer) -> dict[str, dict]:  # type: ignore[type-arg]
    """The runs as the server's API gives them to the panel, by name."""
    request = urllib.request.Request(f"{server.url('127.0.0.1')}nbmonitor/api/runs", headers=_auth(server))
    with urllib.request.urlopen(request, timeout=10) as answer:
        return {r["name"]: r for r in json.loads(answer.read())["runs"]}


def _auth(server: JupyterServer) -> dict[str, str]:
    return {"Authorization": f"token {server.token}"}


# -- the address and its token ------------------------------------------------------------


def test_the_token_comes_from_the_url_the_environment_or_a_file_and_is_never_shown(tmp_path: Path) -> None:
    url = "https://gpu-box:8888/lab?token=s3cret"  # as the browser shows it
    server = Server.parse(url, {})
    assert (server.base, server.token) == ("https://gpu-box:8888/", "s3cret")
    hub = Server.parse("https://hub.example/user/alice/lab/tree/train.ipynb?token=t", {})
    assert hub.base == "https://hub.example/user/alice/"
    assert Server.parse("http://gpu-box:8888", {"NBMONITOR_TOKEN": "t2"}).token == "t2"
    token_file = tmp_path / "token"
    token_file.write_text("t3\n")
    assert Server.parse("http://gpu-box:8888", {"NBMONITOR_TOKEN_FILE": str(token_file)}).token == "t3"
    assert server.ingest_url == "https://gpu-box:8888/nbmonitor/api/ingest"
    assert hub.ingest_url == "https://hub.example/user/alice/nbmonitor/api/ingest"
    repo = Repo(url)
    assert isinstance(repo, RemoteRepo)
    assert "s3cret" not in repr(repo) + str(repo) + repr(repo.server) + str(repo.path)
    assert repo.path.parent == Path.home() / ".nbmonitor" / "remote"
    assert repo.path.name.startswith("gpu-box-8888-")


@pytest.mark.parametrize(
    ("url", "env", "said"),
    [
        ("http://gpu-box:8888/", {}, "no token for http://gpu-box:8888/: add ?token="),
        (
            "http://gpu-box:8888/",
            {"NBMONITOR_TOKEN_FILE": "/nonexistent/token"},
            "cannot read the token file",
        ),
        ("http://me:pw@gpu-box:8888/", {}, "takes no user or password"),
        ("http://gpu-box:port/", {}, "not a server URL"),
        ("http:///?token=x", {}, "with a host"),
        ("http://gpu-box/?token=x&tok=y", {}, "takes only ?token=, not tok"),
    ],
)
def test_an_address_that_cannot_be_used_is_one_clear_error(url: str, env: dict[str, str], said: str) -> None:
    with pytest.raises(RepoError, match=said.replace("?", r"\?")):
        Server.parse(url, env)


def test_the_watcher_commands_that_need_a_directory_say_so_for_a_url(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nbmonitor", "--repo", "http://gpu-box:8888/?token=s3cret", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, NBMONITOR_SPOOL=str(tmp_path / "spool")),
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "nbmonitor-watcher: error: status needs a repo directory, and http://gpu-box:8888/ is a Jupyter "
        "server: its runs are watched, listed and shown beside it (run this there)"
    )


# -- the server's door ----------------------------------------------------------------------


def test_the_ingest_takes_no_write_without_the_token_and_none_for_another_clients_run(
    server: JupyterServer,
) -> None:
    from nbmonitor.record import RunRecord

    from .records import sample

    record: RunRecord = sample(id="f" * 32, host="far")
    body = json.dumps({"client": "a1" * 32, "ops": [{"op": "run", "record": record.to_dict()}]}).encode()

    def post(data: bytes, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
        request = urllib.request.Request(
            f"{server.url('127.0.0.1')}nbmonitor/api/ingest", data=data, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    assert post(body, {})[0] == 403  # Jupyter's own check: no token, no write (nor a cookie's)
    assert post(body, {"Authorization": "token wrong"})[0] == 403
    assert not server.repo.exists() or not list(server.repo.rglob("*.json"))
    assert post(body, _auth(server)) == (200, {"applied": 1, "resend": []})
    theirs = body.replace(b"a1" * 32, b"b2" * 32)
    code, said = post(theirs, _auth(server))
    assert (code, said["op"]) == (403, 0)
    assert said["message"] == f"operation 0: {'f' * 32} belongs to another client"
    code, said = post(b'{"client": 1}', _auth(server))
    assert code == 400
    assert "field 'client'" in said["message"]
    assert "a1" * 32 not in server.log.read_text()  # no secret in the server's log


def test_the_ingest_token_sends_records_and_opens_nothing_else(server: JupyterServer, tmp_path: Path) -> None:
    def token(*args: str) -> str:
        command = [sys.executable, "-m", "nbmonitor", "--repo", str(server.repo), "token", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout.strip()

    first = token()
    assert first == token()  # kept, 0600, in the server's repo
    assert oct((server.repo / "ingest.token").stat().st_mode & 0o777) == "0o600"
    ok = subprocess.run(
        [sys.executable, "-c", "import nbmonitor\nwith nbmonitor.watch(name='by-ingest-token'): pass"],
        env=dict(os.environ, **client_env(server, tmp_path / "spool", token=first)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert [r.name for r in Repo(server.repo).runs()] == ["by-ingest-token"]
    base = server.url("127.0.0.1")
    for path in ("api/contents", "api/kernels", "nbmonitor/api/runs"):  # the server's own doors stay shut
        request = urllib.request.Request(base + path, headers={"Authorization": f"token {first}"})
        with pytest.raises(urllib.error.HTTPError) as shut:
            urllib.request.urlopen(request, timeout=10)
        assert shut.value.code == 403, path
    second = token("--new")
    assert second != first
    stale = subprocess.run(
        [sys.executable, "-c", "import nbmonitor\nwith nbmonitor.watch(name='stale'): pass"],
        env=dict(os.environ, **client_env(server, tmp_path / "spool", token=first)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert stale.returncode == 0
    assert "refused the token (HTTP 403)" in stale.stderr


# -- far hosts ---------------------------------------------------------------------------------

far_hosts = pytest.mark.skipif(not can_make_hosts(), reason="needs root, unshare and ip (Linux namespaces)")


@pytest.fixture
def far(tmp_path: Path, server: JupyterServer) -> Iterator[list[FarHost]]:
    hosts: list[FarHost] = []
    yield hosts
    for host in hosts:
        host.close()


def far_run(
    hosts: list[FarHost], tmp_path: Path, server: JupyterServer, name: str, args: list[str], **env: str
) -> tuple[Proc, Path]:
    host = FarHost(name, tmp_path, server.work)
    hosts.append(host)
    spool = tmp_path / "far" / f"spool-{name}"
    proc = host.run(args, client_env(server, spool, host.server_address) | env, tmp_path / "nowhere")
    return proc, spool


@far_hosts
def test_far_hosts_progress_finish_stall_and_are_lost_as_the_watcher_beside_the_server_sees_them(
    tmp_path: Path, server: JupyterServer, far: list[FarHost], script: Path
) -> None:
    with watching(server.repo, POLL) as watcher:
        done, _ = far_run(far, tmp_path, server, "far-a", launch(script, "steady", 20, 0.1))
        hung, _ = far_run(far, tmp_path, server, "far-b", launch(script, "hangs", 50, 0.1, eta=1.0, hang=5))
        assert done.wait_exit(60) == 0, done.text
        watcher.wait_for("FINISHED", "steady", timeout=15)
        hung.wait_for("hanging", timeout=30)
        watcher.wait_for("STALLED", "hangs", timeout=15)
        # The panel's view: its own observer, which sees a far host's file a poll later.
        hangs = wait_until(lambda: _stalled(server_runs(server)["hangs"]), 15, "the panel to show the stall")
        assert (hangs["host"], hangs["step"]) == ("far-b", 4)
        steady = server_runs(server)["steady"]
        assert (steady["host"], steady["status"], steady["step"]) == ("far-a", "finished", 20)
        hung.popen.kill()  # the host goes: no last words, only its heartbeat stops
        watcher.wait_for("LOST", "hangs", timeout=30)
    events = [(line.split()[2], "steady" in line) for line in event_lines(watcher)]
    assert events == [("FINISHED", True), ("STALLED", False), ("LOST", False)]  # each said once
    (stalled,) = watcher.matching("STALLED")
    assert "far-b" in stalled

    def status() -> str | None:
        command = [sys.executable, "-m", "nbmonitor", "--repo", str(server.repo), "status"]
        said = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
        return said if "lost" in said else None  # by the file's age, as a one-off look sees it

    listed = wait_until(status, 30, "status to list the far host's run as lost", every=0.5)
    assert "steady" in listed


def _stalled(run: dict) -> dict | None:  # type: ignore[type-arg]
    return run if run["status"] == "stalled" else None


@far_hosts
def test_a_server_away_for_a_minute_gets_every_record_once_and_in_order(
    tmp_path: Path, server: JupyterServer, far: list[FarHost], script: Path
) -> None:
    steps, every = 360, 0.2  # 72 s of steps; the server is away for 60 of them
    proc, spool = far_run(far, tmp_path, server, "far-c", launch(script, "patient", steps, every))
    wait_until(lambda: server_runs(server).get("patient", {}).get("step", 0) >= 10, 60, "steps on the server")
    server.stop()
    stopped = time.monotonic()
    # The outage under test lasts a minute: the run goes on meanwhile.
    wait_until(lambda: time.monotonic() - stopped >= 60 or proc.popen.poll() is not None, 90, "a minute", 0.5)
    assert proc.popen.poll() is None, proc.text
    server.start()
    assert proc.wait_exit(120) == 0, proc.text
    repo = Repo(server.repo)
    (run,) = repo.runs()
    assert (run.status, run.step, run.host) == ("finished", steps, "far-c")
    said = [line.text for line in repo.read_log(run.id)[0] if line.text.startswith("step ")]
    assert said == [f"step {i}" for i in range(1, steps + 1)]  # every line, once, in order
    assert repo.log_path(run.id).read_bytes() == (spool / "logs" / f"{run.id}.jsonl").read_bytes()
    assert repo.usage_path(run.id).read_bytes() == (spool / "usage" / f"{run.id}.jsonl").read_bytes()
    assert (spool / "sent" / run.id).exists()
    assert len(proc.matching("cannot reach")) == 1  # said once for the whole time away
    assert len(proc.matching("answers again")) == 1
    assert server.token not in proc.text


def test_a_wrong_token_is_said_clearly_and_the_run_goes_on(
    tmp_path: Path, server: JupyterServer, script: Path
) -> None:
    env = client_env(server, tmp_path / "spool", token="not-the-token")
    proc = Proc(launch(script, "denied", 10, 0.05), tmp_path, env=env)
    assert proc.wait_exit(60) == 0, proc.text
    assert "done" in proc.text
    refused = proc.matching("refused the token (HTTP 403)")
    assert len(refused) == 1, proc.text
    assert "check $NBMONITOR_TOKEN" in refused[0]
    assert "not-the-token" not in proc.text
    assert Repo(server.repo).runs() == []


def test_records_left_by_a_process_that_ended_while_the_server_was_away_are_sent_later(
    tmp_path: Path, server: JupyterServer, script: Path
) -> None:
    spool = tmp_path / "spool"
    env = client_env(server, spool)
    server.stop()
    first = Proc(launch(script, "first", 5, 0.05), tmp_path, env=env)
    assert first.wait_exit(60) == 0, first.text
    (left,) = first.matching("could not reach")
    assert f"nbmonitor-watcher --repo {server.url('127.0.0.1')} send" in left
    killed = Proc(launch(script, "killed", 100, 0.05), tmp_path, env=env)
    killed.wait_for("step 5", timeout=60)
    killed.popen.kill()
    killed.wait_exit()
    server.start()
    second = Proc(launch(script, "second", 3, 0.05), tmp_path, env=env)  # sends what the others left
    assert second.wait_exit(60) == 0, second.text
    runs = {r.name: r for r in Repo(server.repo).runs()}
    assert (runs["first"].status, runs["first"].step, runs["second"].status) == ("finished", 5, "finished")
    last = Repo(spool).read_run(runs["killed"].id)  # its last record, which the watcher calls lost
    assert (runs["killed"].step, runs["killed"].updated_at) == (last.step, last.updated_at)
    sent = subprocess.run(
        [sys.executable, "-m", "nbmonitor", "send"], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, **env),
    )  # fmt: skip
    assert sent.stdout.strip() == f"nothing waits for {server.url('127.0.0.1')} in {spool}"


def test_send_delivers_what_waits_and_says_when_it_cannot(
    tmp_path: Path, server: JupyterServer, script: Path
) -> None:
    env = client_env(server, tmp_path / "spool")
    server.stop()
    proc = Proc(launch(script, "later", 3, 0.05), tmp_path, env=env)
    assert proc.wait_exit(60) == 0

    def send(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "nbmonitor", "send", *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, env=dict(os.environ, **env)
        )

    failed = send("--timeout", "1")
    assert failed.returncode == 1
    assert f"file(s) could not reach {server.url('127.0.0.1')} in 1 s; they wait in" in failed.stderr
    server.start()
    sent = send()
    assert sent.returncode == 0
    assert re.fullmatch(
        rf"sent [0-9]+ file\(s\) to {re.escape(server.url('127.0.0.1'))}", sent.stdout.strip()
    )
    assert [r.name for r in Repo(server.repo).runs()] == ["later"]


# Reports 40 steps over 4 s, then says how many batches its process sent.
COUNTED = """
import sys, time
import nbmonitor
from nbmonitor import _sender
with nbmonitor.watch(eta=30, name=sys.argv[1]) as run:
    for step in range(40):
        time.sleep(0.1)
        print(f"step {step}", flush=True)
        run.report_progress(step=step + 1)
    sending = _sender.sender(run.repo)
_sender.flush_all()
print("batches", sending.batches, flush=True)
"""


def test_the_processes_of_one_host_send_through_one_sender_at_a_time(
    tmp_path: Path, server: JupyterServer
) -> None:
    script = tmp_path / "counted.py"
    script.write_text(COUNTED)
    env = client_env(server, tmp_path / "spool")
    started = time.monotonic()
    procs = [Proc([sys.executable, str(script), f"rank-{i}"], tmp_path, env=env) for i in range(3)]
    assert all(p.wait_exit(60) == 0 for p in procs), [p.text for p in procs]
    elapsed = time.monotonic() - started
    batches = [int(p.matching("batches")[0].split()[1]) for p in procs]
    # One request a second for the host, not one per process (three a second); each process may
    # add two at once: one as it takes over the lock, one as it ends.
    assert sum(batches) <= elapsed + 2 * len(procs), (batches, elapsed)
    runs = {r.name: r for r in Repo(server.repo).runs()}
    assert {name: (r.status, r.step) for name, r in runs.items()} == {
        f"rank-{i}": ("finished", 40) for i in range(3)
    }


def test_a_supervised_job_on_a_far_host_reports_its_attempts(
    tmp_path: Path, server: JupyterServer, script: Path
) -> None:
    env = client_env(server, tmp_path / "spool")
    command = [
        sys.executable,
        "-m",
        "nbmonitor",
        "run",
        "--max-restarts",
        "1",
        "--",
        *launch(script, "sup", 5, 0.05),
    ]
    job = Proc(command, tmp_path, env=env)
    assert job.wait_exit(60) == 0, job.text
    (run,) = Repo(server.repo).runs()
    assert (run.name, run.status, run.step, run.supervisor is not None) == ("sup", "finished", 5, True)


def test_a_watched_cell_in_a_kernel_on_a_far_host_reports_to_the_server(
    tmp_path: Path, server: JupyterServer
) -> None:
    from .kernels import Kernel, run_views

    kernel = Kernel(tmp_path, env=client_env(server, tmp_path / "spool"))
    try:
        kernel.run("%load_ext nbmonitor")
        reply, messages = kernel.run(
            "%%watch --eta 5 --name far-cell\nimport time\nfor i in range(3): time.sleep(0.1)"
        )
        assert reply["status"] == "ok"
        story = json.dumps(run_views(messages))
        assert "reports to " in story  # its display says who watches it

        def arrived() -> bool:
            return any(r.name == "far-cell" and r.ended for r in Repo(server.repo).runs())

        wait_until(arrived, 30, "the cell's run, sent by the kernel's sender")
    finally:
        kernel.stop()
    (run,) = Repo(server.repo).runs()
    assert (run.origin.kind, run.status, run.via) == ("notebook", "finished", "127.0.0.1")


def test_https_with_a_custom_ca(tmp_path: Path, script: Path) -> None:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    work = tmp_path / "tls"
    work.mkdir()
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = JupyterServer(work, work / "repo", tls=(cert, key))
    try:
        env = client_env(server, tmp_path / "spool")
        unknown = Proc(launch(script, "unknown-ca", 3, 0.05), tmp_path, env=env)
        assert unknown.wait_exit(60) == 0
        assert unknown.matching("CERTIFICATE_VERIFY_FAILED")
        trusted = Proc(launch(script, "trusted", 3, 0.05), tmp_path, env=env | {"NBMONITOR_CA": str(cert)})
        assert trusted.wait_exit(60) == 0, trusted.text
        assert {r.name for r in Repo(server.repo).runs()} == {"unknown-ca", "trusted"}  # the leftover too
    finally:
        server.stop()


def test_a_remote_repos_files_go_through_the_spool_and_the_sender(tmp_path: Path) -> None:
    repo = RemoteRepo("http://127.0.0.1:9/?token=t", spool=tmp_path / "spool")
    repo.ensure()
    assert json.loads(repo.spool_file.read_text()) == {"server": "http://127.0.0.1:9/"}
    assert repo.environ()["NBMONITOR_REPO"] == "http://127.0.0.1:9/"
    assert _sender.sender(repo) is _sender.sender(
        RemoteRepo("http://127.0.0.1:9/?token=t", spool=tmp_path / "spool")
    )


def test_a_tail_cut_while_the_server_is_away_is_said_once_and_sent_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nbmonitor import logtail
    from nbmonitor.logtail import LogLine
    from nbmonitor.remote import Unreachable

    repo = RemoteRepo("http://127.0.0.1:9/?token=t", spool=tmp_path / "spool")
    repo.ensure()
    run_id = "c" * 32
    got: list[list[dict]] = []  # type: ignore[type-arg]
    away = True

    def send(server: Server, body: bytes) -> dict:  # type: ignore[type-arg]
        if away:  # the transport fails as a stopped server makes it fail
            raise Unreachable(f"cannot reach {server.base}: [Errno 111] Connection refused")
        ops = json.loads(body)["ops"]
        got.append(ops)
        return {"applied": len(ops), "resend": []}

    lines = [LogLine(float(i), "", "stdout", f"line {i}") for i in range(30)]
    repo.append_log(run_id, logtail.encode_header(run_id) + logtail.encode(lines[:10]))
    sender = _sender.Sender(repo, send=send)
    assert sender.flush(0.5) is False  # away: the lines wait
    assert sender.flush(2) is False
    repo.replace_log(run_id, logtail.encode_header(run_id) + logtail.encode(lines[20:]))  # cut meanwhile
    away = False
    with caplog.at_level("WARNING", logger="nbmonitor.remote"):
        assert sender.flush(10) is True
    said = [r.getMessage() for r in caplog.records if "were cut or coarsened" in r.getMessage()]
    assert len(said) == 1
    assert "1 file(s) of" in said[0]
    (op,) = [op for ops in got for op in ops if op.get("file") == "log"]
    assert op["op"] == "replace"  # the tail as it is now, whole
    assert [x.text for x in logtail.parse(op["text"], run_id)[0]] == [f"line {i}" for i in range(20, 30)]
