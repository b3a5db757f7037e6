"""Liveness of processes, checked against real ones."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from nbmonitor import _process

from .helpers import wait_until


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_running_process_with_its_start_time_is_alive() -> None:
    proc = sleeper()
    try:
        assert _process.is_alive(proc.pid, _process.process_start(proc.pid))
        ticks = _process.start_ticks(proc.pid)
        assert ticks is not None
        assert _process.is_alive(proc.pid, None, ticks)
        # A start time that is off (read through a stepped wall clock) loses to the ticks.
        assert _process.is_alive(proc.pid, (_process.process_start(proc.pid) or 0) + 2, ticks)
    finally:
        proc.kill()
        proc.wait()


def test_start_ticks_count_from_boot_and_survive_odd_command_names(tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", "import time; time.sleep(60)"])
    try:
        ticks = _process.start_ticks(proc.pid)
        own = _process.start_ticks()
        assert ticks is not None
        assert own is not None
        assert ticks >= own  # started after this process
        assert _process.is_alive(proc.pid, None, ticks)
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_but_unreaped_process_is_dead() -> None:
    import psutil

    proc = sleeper()
    start = _process.process_start(proc.pid)
    proc.send_signal(signal.SIGKILL)
    try:
        wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 10, "a zombie")
        assert psutil.pid_exists(proc.pid)  # what a naive check would believe
        assert not _process.is_alive(proc.pid, start)
        assert not _process.is_alive(proc.pid, start, _process.start_ticks(proc.pid))
    finally:
        proc.wait()


def test_a_reaped_process_is_dead() -> None:
    proc = sleeper()
    start, ticks = _process.process_start(proc.pid), _process.start_ticks(proc.pid)
    proc.kill()
    proc.wait()
    assert not _process.is_alive(proc.pid, start)
    assert not _process.is_alive(proc.pid, start, ticks)


def test_a_pid_used_by_another_process_is_not_the_run_s_process() -> None:
    proc = sleeper()
    try:
        start = _process.process_start(proc.pid)
        assert start is not None
        assert not _process.is_alive(proc.pid, start - 3600)
        ticks = _process.start_ticks(proc.pid)
        assert ticks is not None
        assert not _process.is_alive(proc.pid, start, ticks - 100)
    finally:
        proc.kill()
        proc.wait()
