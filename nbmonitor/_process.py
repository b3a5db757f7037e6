"""Who this process is (host, pid, start time, boot) and whether another one is still alive.

psutil is imported on first use, not with nbmonitor.
"""

from __future__ import annotations

import functools
import os
import socket

__all__ = ["boot_id", "host", "is_alive", "process_start"]

# psutil's create_time() is derived from boot time and clock ticks; two reads of the
# same process agree far closer than this, a reused pid differs by far more.
_START_TOLERANCE = 0.05


@functools.cache
def host() -> str:
    """This machine's host name, as recorded in run files."""
    return socket.gethostname()


@functools.cache
def boot_id() -> str | None:
    """An id of the current boot (Linux), so monotonic times are compared only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def process_start(pid: int | None = None) -> float | None:
    """Start time of process ``pid`` (default: this one), or None if it cannot be read."""
    import psutil

    try:
        return psutil.Process(os.getpid() if pid is None else pid).create_time()
    except (psutil.Error, OSError):
        return None


def is_alive(pid: int, start: float | None) -> bool:
    """True if ``pid`` runs and is the process that started at ``start``.

    A zombie (killed, not yet reaped) counts as dead; so does a pid that was
    reused by a process with another start time.
    """
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
