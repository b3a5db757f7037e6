"""Who this process is (host, pid, start time, boot) and whether another one is still alive.

A process is identified by its pid and when it started. On Linux the start
is read as the kernel keeps it, in clock ticks since boot (``/proc/<pid>/stat``,
field 22): a clock no NTP step or suspend moves. psutil's ``create_time()``
adds the boot time, which the kernel derives from the wall clock, so it moves
when the wall clock is stepped; it is the fallback where /proc is not.

psutil is imported on first use, not with nbmonitor.
"""

from __future__ import annotations

import functools
import os
import socket

__all__ = ["boot_id", "exit_status", "host", "is_alive", "process_start", "start_ticks"]

# psutil's create_time() is derived from boot time and clock ticks; two reads of the
# same process agree far closer than this, a reused pid differs by far more.
_START_TOLERANCE = 0.05


@functools.cache
def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 99`` for a number that names none."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def elsewhere(run_host: str, via: str | None, here: str | None = None) -> bool:
    """Whether a run written on ``run_host`` runs on another host than this one (or ``here``),
    where its pid cannot be asked about; a run that reports over HTTP (``via``) always does (a
    container may share the host's name and boot)."""
    return via is not None or run_host != (here if here is not None else host())


def host() -> str:
    """This machine's host name, as recorded in run files."""
    return socket.gethostname()


@functools.cache
def boot_id() -> str | None:
    """An id of the current boot (Linux), so monotonic times and start ticks are compared only within one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def process_start(pid: int | None = None) -> float | None:
    """Start time of process ``pid`` (default: this one) in epoch seconds, or None if it cannot be read."""
    import psutil

    try:
        return psutil.Process(os.getpid() if pid is None else pid).create_time()
    except (psutil.Error, OSError):
        return None


def start_ticks(pid: int | None = None) -> int | None:
    """Start of process ``pid`` (default: this one) in clock ticks since boot; None without /proc."""
    stat = _stat(os.getpid() if pid is None else pid)
    return None if stat is None else stat[1]


def exit_status(pid: int, ticks: int | None) -> int | None:
    """How a process that has ended but is not reaped yet (a zombie) ended, as ``waitpid()``
    says it (``os.waitstatus_to_exitcode`` reads it); None if it is reaped, or no zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        if fields[0] != b"Z" or (ticks is not None and int(fields[19]) != ticks):
            return None
        return int(fields[49])  # field 52: exit_code (Linux 3.5 and later)
    except (OSError, ValueError, IndexError):
        return None


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start ticks) from ``/proc/<pid>/stat``; None if there is no such process
    or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name (field 2) is in parentheses and may hold anything, ")" included.
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def is_alive(pid: int, start: float | None, ticks: int | None = None) -> bool:
    """True if ``pid`` runs and is the process that started at ``start`` (epoch seconds), or at
    ``ticks`` (clock ticks since this boot; preferred, since the wall clock can be stepped).

    A zombie (killed, not yet reaped) counts as dead; so does a pid that was
    reused by a process with another start time.
    """
    if ticks is not None:
        stat = _stat(pid)
        if stat is not None:
            return stat[1] == ticks and stat[0] not in (b"Z", b"X")
        if not os.path.isdir("/proc/self"):
            return _alive_by_psutil(pid, start)  # no /proc here: the ticks came from elsewhere
        return os.path.exists(f"/proc/{pid}") and _alive_by_psutil(pid, start)
    return _alive_by_psutil(pid, start)


def _alive_by_psutil(pid: int, start: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if start is not None and abs(proc.create_time() - start) > _START_TOLERANCE:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        # It exists (another user's process, say); we cannot tell more.
        return True
