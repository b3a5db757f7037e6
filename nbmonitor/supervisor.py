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

It tells what happened as a watcher would (claiming its job's events, and delivering them when
no watcher does), and says how each attempt ended itself: its runs carry its pid
(``NBMONITOR_SUPERVISOR``), and while it lives watchers leave their crash or failure to it. One
*restarting* (with the checkpoint the next attempt resumes from) or *gave-up* event per attempt
takes the place of the crashed or failed one. The attempt's stderr passes through it, its last
lines kept, so a job that fails before it makes a run (a SyntaxError) is told and judged too.

It never schedules anything elsewhere: one machine, one command (which may be a launcher,
torchrun, whose own restarts go on inside an attempt).
"""

from __future__ import annotations

import codecs
import collections
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
from pathlib import Path
from typing import IO

from . import _format, _onstall, _process, logtail, rules
from .claims import restart_info
from .errors import NbmonitorError
from .events import TAIL_LINES, Event
from .groups import GroupObservation, gather
from .observe import Observation, Observer
from .outbox import Sender, claim_event
from .record import ErrorInfo, Origin, RunRecord
from .repo import Repo, Scanner
from .rules import State
from .watcher import Watcher

__all__ = ["RESTART_ON", "Supervisor"]

#: How an attempt may end that makes another: its process died, failed, or a run of it stalled.
RESTART_ON = ("crashed", "failed", "stalled")
POLL = 0.5  # seconds between looks
PAUSE_MAX = 60.0
BY = "nbmonitor-watcher run"
SELF_EXIT_MARGIN = 5.0  # seconds more a run with on_stall="exit" gets to end itself
_STDERR_KEPT = 200  # lines of the attempt's stderr kept, for --no-restart-on and the last event


def say(text: str) -> None:
    """One line of the supervisor's own, on stderr (the job's output is the job's)."""
    print(f"nbmonitor-watcher run: {text}", file=sys.stderr, flush=True)


@dataclass
class Attempt:
    number: int  # 0 for the first
    process: subprocess.Popen[bytes]
    started_at: float
    stderr: _Stderr
    ended: str | None = None  # finished, failed, crashed, stalled or stopped
    why: str = ""  # "killed by SIGKILL", "exit status 1", "run 'train' at step 1234"


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
        self._named: RunRecord | None = None  # the job's latest run: what it is called
        self._sender = Sender(repo)
        # Claims its job's events as a watcher would; leaves their crashes to this supervisor.
        self._watcher = Watcher(
            repo, notifiers=self._sender.configs, emit=lambda event: None, role="supervisor", interval=poll
        )

    def stop(self) -> None:
        """Stop the job for good (SIGTERM or Ctrl-C to the supervisor)."""
        self._stop.set()

    def run(self) -> int:
        """Attempts until one finishes or none is left; the job's exit status."""
        self.repo.ensure()
        self._sender.start(self.poll)
        try:
            return self._attempts()
        finally:
            self._sender.stop()
            self._sender.deliver()  # the last event, when no watcher is there to send it

    def _attempts(self) -> int:
        number = 0
        while True:
            attempt = self._start(number)
            status = self._follow(attempt)
            if attempt.ended == "finished":
                say(f"{self._what(attempt)} finished")
                self._look(attempt)
                return 0
            if attempt.ended == "stopped":
                say(f"{self._what(attempt)} stopped; no restart")
                self._tell(attempt, "interrupted")
                return status
            hopeless = self._hopeless(attempt)
            ended = f"{attempt.ended} ({attempt.why})" if attempt.why else str(attempt.ended)
            if attempt.ended not in self.restart_on or hopeless is not None or number >= self.max_restarts:
                reason = (
                    f"its last lines match --no-restart-on: {_format.one_line(hopeless)}"
                    if hopeless is not None
                    else f"not restarted on {attempt.ended}"
                    if attempt.ended not in self.restart_on
                    else f"no restarts left (--max-restarts {self.max_restarts})"
                )
                say(f"{self._what(attempt)} {ended}; gave up: {reason}")
                self._tell(attempt, "gave-up", reason)
                return status
            wait = min(self.pause * 2**number, PAUSE_MAX)
            next_one = f"({number + 1} of {self.max_restarts}) in {wait:g} s"
            say(f"{self._what(attempt)} {ended}; restarting {next_one}")
            self._tell(attempt, "restarting")
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
            **self.repo.environ(),
            NBMONITOR_JOB_ID=self.job_id,
            NBMONITOR_RESTART_COUNT=str(number),
            NBMONITOR_SUPERVISOR=f"{os.getpid()}:{_process.start_ticks() or ''}".rstrip(":"),
        )
        try:
            process = subprocess.Popen(self.command, env=env, start_new_session=True, stderr=subprocess.PIPE)
        except OSError as e:
            raise NbmonitorError(f"cannot run {self.command[0]!r}: {e.strerror or e}") from None
        assert process.stderr is not None
        return Attempt(number, process, time.time(), _Stderr(process.stderr))

    def _follow(self, attempt: Attempt) -> int:
        """Poll the attempt until it ends (or is stopped); its exit status."""
        process = attempt.process
        try:
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
                    attempt.ended, attempt.why = "stalled", stalled
                    say(f"{self._what(attempt)} stalled ({stalled}); stopping it")
                    return _exit_status(self._end(process))
                self._stop.wait(self.poll)
        finally:
            attempt.stderr.close()

    def _runs(self, attempt: Attempt) -> list[RunRecord]:
        prefix = f"nbmonitor:{self.job_id}:"
        runs = [r for r in self._scanner.scan() if (r.job or "").startswith(prefix)]
        if runs:
            self._named = max(runs, key=lambda r: r.updated_at)
        return [r for r in runs if r.attempt == attempt.number]

    def _look(self, attempt: Attempt) -> list[RunRecord]:
        """The attempt's runs now, with what their states make due claimed (and sent soon)."""
        runs = self._runs(attempt)
        if runs and self._watcher.check(runs):
            self._sender.wake()
        return runs

    def _stalled(self, attempt: Attempt) -> str | None:
        """``run 'train' at step 1234`` when a run of this attempt is stalled, else None."""
        runs = self._look(attempt)
        if not runs:
            return None
        for seen in self._observer.glance(runs):
            if seen.state == State.STALLED and not self._ends_itself(seen):
                return f"run {seen.run.name!r} at step {seen.run.step}"
        return None

    @staticmethod
    def _ends_itself(seen: Observation) -> bool:
        """A run made with on_stall="exit" ends its own process (so that torchrun, inside the
        attempt, restarts it): left to it for a while, then stopped like any other."""
        run = seen.run
        if run.on_stall != "exit" or run.eta is None or seen.grace is None:
            return False
        return seen.since_progress < run.eta + seen.grace + _onstall.WAIT + SELF_EXIT_MARGIN

    def _hopeless(self, attempt: Attempt) -> str | None:
        """The last line of the attempt's runs (or of its stderr) that matches --no-restart-on."""
        if self.no_restart_on is None:
            return None
        tails = [
            [line.text for line in self.repo.log_tail(run.id, _STDERR_KEPT)] for run in self._runs(attempt)
        ]
        for lines in [*tails, attempt.stderr.lines()]:
            for line in reversed(lines):
                if self.no_restart_on.search(line):
                    return line
        return None

    def _tell(self, attempt: Attempt, kind: str, reason: str = "") -> None:
        """Claim the end of the attempt as ``kind`` (restarting, gave-up or interrupted): for
        each of its runs and groups whose end no one claimed, told once, for the one that went
        on last; for the attempt itself when none of them is left to tell it."""
        runs = self._look(attempt)
        alone, groups = gather(self._watcher.observer.look(runs))
        ends: list[tuple[Observation, GroupObservation | None]] = [(obs, None) for obs in alone]
        ends += [((g.blamed or g.members)[0], g) for g in groups]
        open_ends = [
            (obs, group)
            for obs, group in ends
            if (group.state if group is not None else obs.state) in rules.TERMINAL
            and rules.END_KEY not in self.repo.claims(group.id if group is not None else obs.run.id)
        ]
        open_ends.sort(key=lambda end: end[0].run.updated_at, reverse=True)
        if not open_ends:
            self._claim(attempt, kind, reason, self._attempt_record(attempt), None, None, told=True)
        for i, (obs, group) in enumerate(open_ends):
            self._claim(attempt, kind, reason, obs.run, obs, group, told=i == 0)

    def _claim(
        self,
        attempt: Attempt,
        kind: str,
        reason: str,
        run: RunRecord,
        obs: Observation | None,
        group: GroupObservation | None,
        *,
        told: bool,
    ) -> None:
        tail = self.repo.log_tail(run.id, TAIL_LINES) if obs is not None else ()
        if not tail:
            tail = tuple(attempt.stderr.tail(TAIL_LINES))
        restart = None
        if kind != "interrupted":
            why = attempt.why if attempt.ended != "stalled" else ""
            ended = str(attempt.ended)
            restart = restart_info(
                self.repo,
                run,
                attempt=attempt.number,
                ended=ended,
                why=why,
                by=BY,
                max_restarts=self.max_restarts,
                reason=reason,
            )
        event = Event(
            kind,
            rules.END_KEY,
            run,
            time.time(),
            obs.since_progress if obs is not None else 0.0,
            None,
            self._watcher.claimer.seen_by,
            group.info() if group is not None else None,
            tail,
            restart,
        )
        targets = [n for n in self._sender.configs() if n.wants(kind)] if told else []
        try:
            if claim_event(self.repo, event, targets) and targets:
                self._sender.wake()
        except OSError as e:
            say(f"cannot record the {kind} event in {self.repo.path}: {e.strerror or e}")

    def _attempt_record(self, attempt: Attempt) -> RunRecord:
        """The attempt as a run, for an event of an attempt none of whose runs is left to tell
        it (it failed before it made one, or after they ended): never written as a run file."""
        now = time.time()
        named = self._named  # an earlier attempt's run names the job, and finds its checkpoints
        name = named.name if named is not None else _job_name(self.command)
        origin = (
            named.origin if named is not None else Origin("script", self.command[0], tuple(self.command[1:]))
        )
        status = attempt.process.returncode
        error = ErrorInfo("Exit", attempt.why) if attempt.why else None
        return RunRecord(
            id=uuid.uuid4().hex,
            name=name,
            origin=origin,
            host=_process.host(),
            pid=attempt.process.pid,
            process_start=attempt.started_at,
            boot_id=_process.boot_id(),
            started_at=attempt.started_at,
            status="finished" if status == 0 else "failed",
            eta=None,
            grace=None,
            step=0,
            total=None,
            progress=0,
            last_progress_at=attempt.started_at,
            last_progress_mono=0.0,
            ended_at=now,
            error=error,
            updated_at=now,
            job=named.job if named is not None else f"nbmonitor:{self.job_id}:{name}",
            attempt=attempt.number,
        )

    def _end(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM to the attempt's process group, SIGKILL after the grace; its exit status."""
        _signal_group(process, signal.SIGTERM)
        try:
            return process.wait(self.term_grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            return process.wait()


class _Stderr:
    """The attempt's stderr, passed through to the supervisor's as it comes, its last lines kept."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._kept: collections.deque[logtail.LogLine] = collections.deque(maxlen=_STDERR_KEPT)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="nbmonitor-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._pipe.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        lines = logtail.Lines()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk:
                _write_all(2, chunk)
            text = decoder.decode(chunk, final=not chunk)
            done = lines.feed(text) if chunk else [*lines.feed(text), *lines.flush()]
            now = time.time()
            with self._lock:
                self._kept.extend(logtail.LogLine(now, "", "stderr", logtail.clip(line)) for line in done)
            if not chunk:
                return

    def close(self) -> None:
        """Wait a moment for the rest (a process that left children holding the pipe: not longer)."""
        self._thread.join(1.0)

    def lines(self) -> list[str]:
        with self._lock:
            return [line.text for line in self._kept]

    def tail(self, count: int) -> list[logtail.LogLine]:
        with self._lock:
            return list(self._kept)[-count:]


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the supervisor's own stderr is gone: the job goes on
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def _job_name(command: Sequence[str]) -> str:
    """What a person calls the job: its script (``train.py``), else its program."""
    for arg in command:
        if arg.endswith(".py"):
            return Path(arg).name
    return Path(command[0]).name


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _ended(status: int) -> tuple[str, str]:
    """How an attempt ended, from its exit status: finished, failed (status), crashed (signal)."""
    if status == 0:
        return "finished", ""
    if status < 0:
        return "crashed", f"killed by {_process.signal_name(-status)}"
    return "failed", f"exit status {status}"


def _exit_status(status: int) -> int:
    """As a shell says it: 128 + the signal for a process killed by one."""
    return 128 - status if status < 0 else status
