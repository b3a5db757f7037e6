from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nbmonitor import _writer
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc
from .servers import HttpRecorder, serve


@pytest.fixture(autouse=True)
def _own_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches ~/.nbmonitor."""
    monkeypatch.setenv("NBMONITOR_REPO", str(tmp_path / "default-repo"))


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Real subprocesses a test starts, each stopped when it ends."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitor(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> _writer.Writer:
    """This process's monitor, without its thread: tests call tick() themselves."""
    manual = _writer.Writer(wall=clock.wall, mono=clock.mono, thread=False)
    monkeypatch.setattr(_writer, "_writer", manual)
    return manual


@pytest.fixture
def http() -> Iterator[HttpRecorder]:
    """A real local HTTP endpoint that records each request and answers as scripted."""
    yield from serve(HttpRecorder())
