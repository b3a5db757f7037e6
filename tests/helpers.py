"""Test helpers: an injectable clock, waits with deadlines, and real subprocesses (scripts, the
watcher, the command line) whose output is read as it comes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nbmonitor.repo import Repo

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Wall and monotonic clocks that move only when told to."""

    def __init__(self, wall: float = 1_800_000_000.0, mono: float = 1000.0) -> None:
        self._wall, self._mono = wall, mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def jump_wall(self, seconds: float) -> None:
        """Move the wall clock only, as an NTP step or a user's date change does."""
        self._wall += seconds


def wait_until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def child_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ, NBMONITOR_REPO=str(repo), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Proc:
    """A real subprocess whose combined output is collected line by line as it comes."""

    def __init__(
        self, args: Sequence[str], repo: Path, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.popen = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(repo) | (env or {}),
            cwd=cwd,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def python(cls, script: Path | str, *args: str, repo: Path) -> Proc:
        return cls([sys.executable, str(script), *args], repo)

    @classmethod
    def watcher(cls, repo: Path, *args: str) -> Proc:
        return cls([sys.executable, "-m", "nbmonitor", "--repo", str(repo), "start", *args], repo)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def matching(self, *parts: str) -> list[str]:
        return [line for _, line in self.lines if all(p in line for p in parts)]

    def wait_for(self, *parts: str, timeout: float = 10.0) -> float:
        """Wait for an output line containing every part; returns when (monotonic) it came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for at, line in self.lines:
                    if all(p in line for p in parts):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line with {parts} within {timeout} s; output:\n{self.text}")
                self._changed.wait(left)

    def wait_exit(self, timeout: float = 10.0) -> int:
        rc = self.popen.wait(timeout)
        self._reader.join(timeout)
        return rc

    def stop(self) -> None:
        terminate(self.popen, 5)
        self._reader.join(5)


def terminate(process: subprocess.Popen[Any], grace: float) -> None:
    """Stop ``process`` as a person would: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def watching(repo: Path, interval: float) -> Iterator[Proc]:
    """A real ``nbmonitor-watcher start`` on ``repo``, polling every ``interval`` s, for the block."""
    proc = Proc.watcher(repo, "--interval", str(interval))
    try:
        proc.wait_for("watching", timeout=30)
        yield proc
    finally:
        proc.stop()


def event_lines(watcher: Proc) -> list[str]:
    """The watcher's event lines (``<date> <time> STALLED ...``), in order."""
    from nbmonitor.rules import EVENTS

    kinds = {kind.upper() for kind in EVENTS}
    return [line for _, line in watcher.lines if line.split()[2:3] and line.split()[2] in kinds]


def ipython_shell() -> Any:
    """IPython's one global test shell (started on first use)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    return start_ipython() or InteractiveShell.instance()


def run_id_from(proc: Proc, marker: str) -> str:
    """The run id a script printed after ``marker`` (``print("started", run.id)``)."""
    proc.wait_for(marker)
    return proc.matching(marker)[0].split()[1]


def nbw(repo: Repo, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``nbmonitor-watcher --repo <repo> <args>``, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), *args],
        env=child_env(repo.path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
