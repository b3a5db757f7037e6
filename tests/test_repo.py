"""The repo on disk: atomic whole-file writes, bad files skipped by name, exclusive claims."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from nbmonitor.errors import CorruptRecordError, RepoError
from nbmonitor.repo import Repo, Scanner, default_path

from .records import sample


def test_default_location_is_the_environment_variable_else_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NBMONITOR_REPO", str(tmp_path / "x"))
    assert default_path() == tmp_path / "x"
    assert Repo().path == tmp_path / "x"
    monkeypatch.delenv("NBMONITOR_REPO")
    assert default_path() == Path.home() / ".nbmonitor"


def test_files_are_private_to_the_user(repo: Repo) -> None:
    repo.write_run(sample())
    assert stat.S_IMODE(repo.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(repo.run_path(sample().id).stat().st_mode) == 0o600


def test_a_run_reads_back_as_written_and_no_temp_file_is_left(repo: Repo) -> None:
    repo.write_run(sample(step=5))
    assert repo.read_run(sample().id) == sample(step=5)
    assert [p.name for p in repo.runs_dir.iterdir()] == [f"{sample().id}.json"]


def test_a_deleted_repo_is_recreated_on_the_next_write(repo: Repo) -> None:
    repo.write_run(sample())
    for path in sorted(repo.path.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    repo.path.rmdir()
    repo.write_run(sample(step=2))
    assert repo.read_run(sample().id).step == 2


def test_a_repo_path_that_is_a_file_gets_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RepoError, match="is a file, not a repo directory"):
        Repo(tmp_path / "file").ensure()
    with pytest.raises(RepoError, match="cannot be a repo, part of its path is a file"):
        Repo(tmp_path / "file" / "repo").check()


def test_a_relative_nbmonitor_repo_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Every process would find it in its own working directory: no two would share a repo.
    monkeypatch.setenv("NBMONITOR_REPO", "runs")
    with pytest.raises(RepoError, match="NBMONITOR_REPO must be an absolute path, got 'runs'"):
        Repo()
    monkeypatch.chdir(tmp_path)
    assert Repo("runs").path == tmp_path / "runs"  # an argument is a path like any other


def test_an_open_repo_and_notifier_file_are_made_private_with_one_warning(
    repo: Repo, caplog: pytest.LogCaptureFixture
) -> None:
    from nbmonitor.config import NotifierConfig, NotifierStore

    store = NotifierStore(repo)
    store.add(NotifierConfig.create("logger"))
    os.chmod(repo.path, 0o777)
    os.chmod(store.path, 0o644)
    for _ in range(2):
        repo.ensure()
        assert len(store.load()) == 1
    assert stat.S_IMODE(repo.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"nbmonitor: {repo.path} was open to other users (mode 777); made it private (700)",
        f"nbmonitor: {store.path} was open to other users (mode 644); made it private (600)",
    ]


def _chown_away(path: Path) -> None:
    try:
        os.chown(path, 54321, -1)
    except PermissionError:
        pytest.skip("needs root to give a file to another user")


def test_a_repo_or_files_of_another_user_are_not_trusted(
    repo: Repo, caplog: pytest.LogCaptureFixture
) -> None:
    from nbmonitor.config import NotifierConfig, NotifierStore

    repo.write_run(sample(id="a" * 32, name="mine"))
    repo.write_run(sample(id="b" * 32, name="planted"))
    _chown_away(repo.run_path("b" * 32))
    assert [r.name for r in repo.runs()] == ["mine"]
    assert (
        f"skipping run file {repo.run_path('b' * 32)}: it belongs to another user, uid 54321" in caplog.text
    )
    store = NotifierStore(repo)
    store.add(NotifierConfig.create("logger"))
    _chown_away(store.path)
    with pytest.raises(CorruptRecordError, match=r"belongs to another user \(uid 54321\), so it is not used"):
        store.load()
    _chown_away(repo.path)
    for use in (repo.check, repo.ensure):
        with pytest.raises(RepoError, match=r"belongs to another user \(uid 54321\); nbmonitor trusts only"):
            use()


@pytest.mark.parametrize("bad", ["../../x", "/etc/passwd", "a\0b", "0" * 31, "G" * 32, ""])
def test_run_ids_cannot_point_outside_the_repo(repo: Repo, bad: str) -> None:
    with pytest.raises(ValueError, match="not a run id"):
        repo.run_path(bad)


def test_readers_never_see_half_a_file(repo: Repo) -> None:
    repo.write_run(sample(step=0))
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(repo.read_run(sample().id).step)
            except Exception as e:  # noqa: BLE001  # any failure to read whole is the bug under test
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(300):
            repo.write_run(sample(step=step, name="n" * (step * 7 % 3000)))
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert len(set(seen)) > 10, "the reader did not overlap the writes"
    assert seen == sorted(seen)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"format": 1, "id": "0000', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"format": 7}', "format 7 is newer"),
    ],
)
def test_a_bad_run_file_is_skipped_with_a_warning_naming_it(
    repo: Repo, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    good = sample()
    repo.write_run(good)
    bad = repo.runs_dir / f"{'1' * 32}.json"
    bad.write_bytes(content)
    with caplog.at_level(logging.WARNING, "nbmonitor"):
        assert repo.runs() == [good]
    assert str(bad) in caplog.text
    assert reason in caplog.text


def test_a_bad_file_is_reported_once_until_it_changes(repo: Repo, caplog: pytest.LogCaptureFixture) -> None:
    bad = repo.runs_dir / f"{'1' * 32}.json"
    repo.ensure()
    bad.write_text("{")
    scanner = Scanner(repo)
    with caplog.at_level(logging.WARNING, "nbmonitor"):
        scanner.scan()
        scanner.scan()
        assert len(caplog.records) == 1
        bad.write_text("{}")
        scanner.scan()
        assert len(caplog.records) == 2
        repo.write_run(sample(id="1" * 32))
        assert [r.id for r in scanner.scan()] == ["1" * 32]


def test_a_file_holding_another_runs_id_is_skipped(repo: Repo, caplog: pytest.LogCaptureFixture) -> None:
    repo.write_run(sample())
    os.rename(repo.run_path(sample().id), repo.runs_dir / f"{'2' * 32}.json")
    with caplog.at_level(logging.WARNING, "nbmonitor"):
        assert repo.runs() == []
    assert "holds run" in caplog.text


def test_read_run_names_the_file_when_it_is_corrupt(repo: Repo) -> None:
    repo.ensure()
    repo.run_path("3" * 32).write_text('{"format": 1}')
    with pytest.raises(CorruptRecordError, match=f"{'3' * 32}.json: field 'id' is missing"):
        repo.read_run("3" * 32)


def test_a_claim_is_won_once_and_holds_its_whole_payload(repo: Repo) -> None:
    run_id = sample().id
    assert repo.claim(run_id, "stalled-3", {"by": "a"}) is True
    assert repo.claim(run_id, "stalled-3", {"by": "b"}) is False
    assert repo.read_claim(run_id, "stalled-3") == {"by": "a"}
    assert repo.claims(run_id) == {"stalled-3"}
    assert sorted(p.name for p in (repo.events_dir / run_id).iterdir()) == ["stalled-3.json"]


def test_threads_racing_for_a_claim_produce_one_winner(repo: Repo) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append(repo.claim(sample().id, "end", {"by": i}))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def _claim_in_process(path: str, i: int) -> bool:
    return Repo(path).claim("4" * 32, "end", {"by": i})


def test_processes_racing_for_a_claim_produce_one_winner(repo: Repo) -> None:
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_claim_in_process, [str(repo.path)] * 16, range(16)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert json.loads((repo.events_dir / ("4" * 32) / "end.json").read_text()) == {"by": winner}


@pytest.mark.parametrize(("run_id", "key"), [("../x", "end"), ("4" * 32, "../../end"), ("4" * 32, "a/b")])
def test_claims_cannot_escape_the_repo(repo: Repo, run_id: str, key: str) -> None:
    with pytest.raises(ValueError, match="bad claim"):
        repo.claim(run_id, key, {})
