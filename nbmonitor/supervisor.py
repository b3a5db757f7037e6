"""``nbmonitor-watcher run -- cmd``: run a command as a job, and run it again when it crashes,
fails or stalls, up to a number of times, on this machine.

Each attempt is the command in a process group of its own, with ``NBMONITOR_JOB_ID`` (the same
for every attempt: its runs' checkpoints are the job's, so ``latest_checkpoint()`` resumes) and
``NBMONITOR_RESTART_COUNT`` (0, 1, ...) in its environment. The supervisor polls: the process's
exit, and the state of the job's runs in the repo as the watcher's rules see it. A stalled run
gets its process group stopped (SIGTERM, then SIGKILL after a grace). Then, if the way it ended
is one to restart on, the job's last lines do not match ``--no-restart-on``, and attempts are
left, it waits (1 s, doubling, at most a minute) and starts the command again. SIGTERM or
Ctrl-C to the supervisor stops the job for good; the supervisor's exit status is the job's.

It never schedules anything elsewhere: one machine, one command (which may be a launcher,
torchrun, whose own restarts go on inside an attempt).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _format, _process
from .errors import NbmonitorError
from .observe import Observer
from .record import RunRecord
from .repo import Repo, Scanner
from .rules import State

__all__ = ["RESTART_ON", "Supervisor"]

#: How an attempt may end that makes another: its process died, failed, or a run of it stalled.
RESTART_ON = ("crashed", "failed", "stalled")
POLL = 0.5  # seconds between looks
PAUSE_MAX = 60.0


def say(text: str) -> None:
    """One line of the supervisor's own, on stderr (the job's output is the job's)."""
    print(f"nbmonitor-watcher run: {text}", file=sys.stderr, flush=True)


@dataclass
class Attempt:
    number: int  # 0 for the first
    process: subprocess.Popen[bytes]
    ended: str | None = None  # finished, failed, crashed, stalled or stopped
    why: str = ""


class Supervisor:
    """Runs ``command`` as a job until it finishes, gives up, or is stopped."""

    def __init__(
        self,
        repo: Repo,
        command: Sequence[str],
        *,
        max_restarts: int = 5,
        restart_on: Sequence[str] = RESTART_ON,
        no_restart_on: re.Pattern[str] | None = None,
        term_grace: float = 10.0,
        pause: float = 1.0,
        poll: float = POLL,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not command:
            raise NbmonitorError("no command to run: nbmonitor-watcher run [options] -- python train.py ...")
        self.repo = repo
        self.command = list(command)
        self.max_restarts = max_restarts
        self.restart_on = tuple(restart_on)
        self.no_restart_on = no_restart_on
        self.term_grace = term_grace
        self.pause = pause
        self.poll = poll
        self.sleep = sleep
        self.job_id = uuid.uuid4().hex
        self._stop = threading.Event()
        self._observer = Observer(repo)
        self._scanner = Scanner(repo)  # every poll: only the run files that changed are read

    def stop(self) -> None:
        """Stop the job for good (SIGTERM or Ctrl-C to the supervisor)."""
        self._stop.set()

    def run(self) -> int:
        """Attempts until one finishes or none is left; the job's exit status."""
        number = 0
        while True:
            attempt = self._start(number)
            status = self._follow(attempt)
            if attempt.ended == "finished":
                say(f"{self._what(attempt)} finished")
                return 0
            if attempt.ended == "stopped":
                say(f"{self._what(attempt)} stopped; no restart")
                return status
            hopeless = self._hopeless(attempt)
            if attempt.ended not in self.restart_on or hopeless is not None or number >= self.max_restarts:
                reason = (
                    f"its last lines match --no-restart-on: {_format.one_line(hopeless)}"
                    if hopeless is not None
                    else "not restarted on that"
                    if attempt.ended not in self.restart_on
                    else f"no restarts left (--max-restarts {self.max_restarts})"
                )
                say(f"{self._what(attempt)} {attempt.ended}{attempt.why}; gave up: {reason}")
                return status
            wait = min(self.pause * 2**number, PAUSE_MAX)
            say(
                f"{self._what(attempt)} {attempt.ended}{attempt.why}; restarting "
                f"({number + 1} of {self.max_restarts}) in {wait:g} s"
            )
            if self._stop.wait(wait):
                say("stopped while waiting to restart")
                return status
            number += 1

    def _what(self, attempt: Attempt) -> str:
        return f"attempt {attempt.number + 1} (pid {attempt.process.pid})"

    def _start(self, number: int) -> Attempt:
        # Its runs go to the repo this supervisor looks at, whatever the environment said.
        env = dict(
            os.environ,
            NBMONITOR_JOB_ID=self.job_id,
            NBMONITOR_RESTART_COUNT=str(number),
            NBMONITOR_REPO=str(self.repo.path),
        )
        try:
            process = subprocess.Popen(self.command, env=env, start_new_session=True)
        except OSError as e:
            raise NbmonitorError(f"cannot run {self.command[0]!r}: {e.strerror or e}") from None
        return Attempt(number, process)

    def _follow(self, attempt: Attempt) -> int:
        """Poll the attempt until it ends (or is stopped); its exit status."""
        process = attempt.process
        while True:
            status = process.poll()
            if status is not None:
                attempt.ended, attempt.why = _ended(status)
                return _exit_status(status)
            if self._stop.is_set():
                attempt.ended = "stopped"
                return _exit_status(self._end(process))
            stalled = self._stalled(attempt)
            if stalled is not None:
                attempt.ended, attempt.why = "stalled", f" ({stalled})"
                say(f"{self._what(attempt)} stalled ({stalled}); stopping it")
                return _exit_status(self._end(process))
            self._stop.wait(self.poll)

    def _runs(self, attempt: Attempt) -> list[RunRecord]:
        prefix = f"nbmonitor:{self.job_id}:"
        runs = self._scanner.scan()
        return [r for r in runs if (r.job or "").startswith(prefix) and r.attempt == attempt.number]

    def _stalled(self, attempt: Attempt) -> str | None:
        """``run 'train' at step 1234`` when a run of this attempt is stalled, else None."""
        runs = self._runs(attempt)
        if not runs:
            return None
        for seen in self._observer.glance(runs):
            if seen.state == State.STALLED:
                return f"run {seen.run.name!r} at step {seen.run.step}"
        return None

    def _hopeless(self, attempt: Attempt) -> str | None:
        """The last line of the attempt's runs that matches --no-restart-on, if any."""
        if self.no_restart_on is None:
            return None
        for run in self._runs(attempt):
            for line in reversed(self.repo.log_tail(run.id, 200)):
                if self.no_restart_on.search(line.text):
                    return line.text
        return None

    def _end(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM to the attempt's process group, SIGKILL after the grace; its exit status."""
        _signal_group(process, signal.SIGTERM)
        try:
            return process.wait(self.term_grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            return process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _ended(status: int) -> tuple[str, str]:
    """How an attempt ended, from its exit status: finished, failed (status), crashed (signal)."""
    if status == 0:
        return "finished", ""
    if status < 0:
        return "crashed", f" (killed by {_process.signal_name(-status)})"
    return "failed", f" (exit status {status})"


def _exit_status(status: int) -> int:
    """As a shell says it: 128 + the signal for a process killed by one."""
    return 128 - status if status < 0 else status
