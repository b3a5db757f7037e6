"""A stalled run's stack from outside its process, when the process cannot say it itself.

A run's own writer thread takes its stack when it turns late or stalled
(nbmonitor._stacks). One long C call that holds the GIL (a regular
expression, a C extension without ``Py_BEGIN_ALLOW_THREADS``) freezes that
thread too; then the watcher on the same host reads the stack from outside
with py-spy (``pip install 'nbmonitor[stacks]'``), which needs the right to
ptrace the process (the same user, and ``kernel.yama.ptrace_scope`` 0, or
root). Code locations only: py-spy is not asked for local variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from . import _process
from .record import RunRecord, StackFrame

__all__ = ["TIMEOUT", "outside_stack"]

TIMEOUT = 10.0  # seconds py-spy may take
_DEPTH = 12
_CODE = 160


def _py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")  # the watcher's own venv first
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


def outside_stack(run: RunRecord) -> RunRecord:
    """``run`` with the stack py-spy reads of its process, if the run is stalled on this host
    with no stack of its own since its last progress; else as it is. When py-spy is missing or
    fails, ``stack_error`` says so."""
    if run.stuck_in is not None or _process.elsewhere(run.host, run.via):
        return run
    program = _py_spy()
    if program is None:
        return run.with_changes(stack_error="py-spy is not installed (pip install 'nbmonitor[stacks]')")
    try:
        done = subprocess.run(
            [program, "dump", "--pid", str(run.pid), "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return run.with_changes(stack_error=f"py-spy could not read pid {run.pid}: {e}")
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1][:200]
        return run.with_changes(stack_error=f"py-spy could not read pid {run.pid}: {reason}")
    try:
        threads = json.loads(done.stdout)
        thread = _thread_of(run, threads)
        stack = tuple(
            StackFrame(
                str(f["name"]),
                str(f["filename"]),
                int(f["line"]),
                _source(str(f["filename"]), int(f["line"])),
            )
            for f in thread["frames"][:_DEPTH]
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return run.with_changes(stack_error=f"py-spy's answer for pid {run.pid} could not be read")
    return run.with_changes(stack=stack, stack_state="stalled", stack_at=time.time(), stack_from="py-spy")


def _thread_of(run: RunRecord, threads: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's own thread (by its native id), else the one holding the GIL, else the first."""
    for thread in threads:
        if run.thread_id is not None and thread.get("os_thread_id") == run.thread_id:
            return thread
    return next((t for t in threads if t.get("owns_gil")), threads[0])


def _source(path: str, line: int) -> str:
    import linecache

    return linecache.getline(path, line).strip()[:_CODE]
