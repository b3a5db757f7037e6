"""``nbmonitor-watcher`` (also ``python -m nbmonitor``): start, stop and ask about the watcher."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import _format, _notifiers_cli, _process, _sender, logtail, retention
from ._values import seconds_arg
from ._version import version
from .errors import CorruptRecordError, NbmonitorError
from .groups import GroupObservation, gather, role
from .logtail import LogLine
from .observe import Observation, Observer, watcher_info
from .record import RunRecord, StackFrame
from .remote import RemoteRepo
from .repo import Repo, make_private
from .rules import TERMINAL
from .templates import job_label, peaks_text
from .watcher import serve

__all__ = ["main"]

PROG = "nbmonitor-watcher"
_STARTUP_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_RECENT_ENDED = 10
_PRUNE_LISTED = 20  # runs named by a prune; the rest counted
_WORKERS_SHOWN = 8
#: How the watcher's output stamps each line.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        repo = Repo(args.repo)
        repo.check()
        if isinstance(repo, RemoteRepo) and args.func not in (_run, _send):
            raise NbmonitorError(
                f"{args.command} needs a repo directory, and {repo.server.base} is a Jupyter server: "
                "its runs are watched, listed and shown beside it (run this there)"
            )
        return int(args.func(repo, args))
    except NbmonitorError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader took what it wanted and left (status | head -1): not an error of ours.
        # Point stdout at /dev/null, so the flush at exit has nowhere to fail either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Watch every nbmonitor run of a repo and report stalls, crashes and failures.",
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "--repo",
        metavar="PATH|URL",
        help="repo directory, or a Jupyter server's URL for run and send "
        "(default: $NBMONITOR_REPO, else ~/.nbmonitor)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser("start", help="watch the repo (in the foreground unless --detach)")
    start.add_argument("--detach", action="store_true", help="run in the background, log to watcher.log")
    start.add_argument(
        "--interval",
        type=seconds_arg("interval", within=(0.05, 3600)),
        default=1.0,
        metavar="SECONDS",
        help="seconds between looks at what change notices cannot tell (default: 1)",
    )
    start.add_argument(
        "--poll",
        action="store_true",
        help="look at every run every --interval rather than be told of changes "
        "(as it does by itself on NFS and other filesystems that do not tell)",
    )
    start.add_argument(
        "--grace",
        type=seconds_arg("grace", within=(0, 86400)),
        metavar="SECONDS",
        help="grace after a missed ETA for runs that set none (default: 10%% of the ETA, 2 s to 60 s)",
    )
    start.set_defaults(func=_start)

    stop = commands.add_parser("stop", help="stop the watcher of the repo")
    stop.set_defaults(func=_stop)

    status = commands.add_parser(
        "status", help="say whether a watcher runs, and list the runs (or tell of one: where it is stuck)"
    )
    status.add_argument("--all", action="store_true", help="list every ended run, not only the latest")
    status.add_argument(
        "run", metavar="RUN", nargs="?", help="one run: its id (or the first 8 of it) or name"
    )
    status.set_defaults(func=_status)
    usage = commands.add_parser(
        "usage", help="a run's usage per process: peaks and means, or an interactive page (--html)"
    )
    usage.add_argument("run", metavar="RUN", help="a run or group: its id (or the first 8 of it) or its name")
    usage.add_argument("--html", metavar="FILE", help="write one self-contained page with the plot")
    usage.set_defaults(func=_usage)
    run = commands.add_parser(
        "run",
        help="run a command as a job, and again when it crashes, fails or stalls: run [options] -- CMD ...",
    )
    run.add_argument(
        "--max-restarts", type=_restarts, default=5, metavar="N", help="restarts at most (default 5)"
    )
    run.add_argument(
        "--restart-on",
        type=_restart_on,
        default=("crashed", "failed", "stalled"),
        metavar="WAYS",
        help="how an attempt may end to be restarted: crashed,failed,stalled (the default), or some",
    )
    run.add_argument(
        "--no-restart-on",
        type=_pattern,
        metavar="REGEX",
        help="no restart when a line of the job's log tail matches (e.g. 'CUDA out of memory|SyntaxError')",
    )
    run.add_argument(
        "--term-grace",
        type=seconds_arg("term-grace", zero_ok=True, within=(0, 3600)),
        default=10.0,
        metavar="SECONDS",
        help="between SIGTERM and SIGKILL when a stalled attempt is stopped (default 10)",
    )
    run.add_argument(
        "--pause",
        type=seconds_arg("pause", zero_ok=True, within=(0, 3600)),
        default=1.0,
        metavar="SECONDS",
        help="before the first restart, doubling for each next one, at most a minute (default 1)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command, after --")
    run.set_defaults(func=_run)
    logs = commands.add_parser("logs", help="the last lines a run (or a group's members) logged and printed")
    logs.add_argument("run", metavar="RUN", help="a run or group: its id (or the first 8 of it) or its name")
    logs.add_argument("--lines", "-n", type=int, default=20, metavar="N", help="how many (default 20)")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="then print new lines as they come, until the run ends"
    )
    logs.set_defaults(func=_logs)
    prune = commands.add_parser(
        "prune",
        help="remove ended runs (their claims, usage and logs) past the repo's retention, or --older-than",
    )
    prune.add_argument(
        "--older-than",
        type=_period,
        metavar="PERIOD",
        help="ended longer ago than this: 7d, 12h, 2w (default: the repo's retention)",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    prune.set_defaults(func=_prune)
    keep = commands.add_parser(
        "retention", help="say or set how long ended runs are kept in the repo (30 days unless set)"
    )
    keep.add_argument("period", metavar="PERIOD", nargs="?", type=_keep_for, help="30d, 12h, 2w, or never")
    keep.set_defaults(func=_retention)
    send = commands.add_parser(
        "send", help="with --repo URL: send the records this host still holds for that Jupyter server"
    )
    send.add_argument(
        "--timeout",
        type=seconds_arg("timeout", within=(0.1, 3600)),
        default=30.0,
        metavar="SECONDS",
        help="give up after this long (default 30)",
    )
    send.set_defaults(func=_send)
    token = commands.add_parser(
        "token",
        help="the token with which far hosts send runs' records to this repo's Jupyter server, only",
    )
    token.add_argument("--new", action="store_true", help="replace it: the old one stops working")
    token.set_defaults(func=_token)
    _notifiers_cli.add_parser(commands)
    return parser


def _period(text: str) -> float:
    try:
        seconds = retention.parse_period(text)
    except retention.RetentionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds is None:
        raise argparse.ArgumentTypeError("a prune needs a period, as 7d or 12h ('never' removes nothing)")
    return seconds


def _keep_for(text: str) -> float | str:
    try:
        seconds = retention.parse_period(text)
    except retention.RetentionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "never" if seconds is None else seconds


def _prune(repo: Repo, args: argparse.Namespace) -> int:
    repo.check()
    older_than = args.older_than
    if older_than is None:
        older_than = retention.period(repo)
        if older_than is None:
            change = f"'{PROG} retention 30d' to change"
            print(f"nothing to prune: {repo.path} keeps ended runs for ever ({change})")
            return 0
    done = retention.prune(repo, older_than, dry_run=args.dry_run)
    ago = retention.describe(older_than)
    verb = "would remove" if args.dry_run else "removed"
    size = _format.human_bytes(done.bytes)
    print(f"{verb} {len(done.runs)} run(s) that ended over {ago} ago ({size})")
    shown = sorted(done.runs, key=lambda r: r.started_at)
    for run in shown[:_PRUNE_LISTED]:
        ended = run.ended_at or run.updated_at
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ended))
        print(f"  {run.id[:8]}  {_format.clip(_format.one_line(run.name), 40)}  {run.status}, ended {when}")
    if len(shown) > _PRUNE_LISTED:
        print(f"  ... and {len(shown) - _PRUNE_LISTED} more")
    if done.waiting:
        print(f"kept {len(done.waiting)} run(s) whose notifications are still waiting to be delivered")
    if done.finished:
        print(f"finished removing {done.finished} run(s) an interrupted prune had begun")
    if done.orphans:
        print(f"{verb} {done.orphans} part(s) of runs no longer in the repo")
    if done.checkpoint_records:
        print(f"{verb} {done.checkpoint_records} record(s) of checkpoints whose files are gone")
    return 0


def _retention(repo: Repo, args: argparse.Namespace) -> int:
    if args.period is None:
        print(f"{repo.path} keeps ended runs {_kept(retention.period(repo))}")
        return 0
    seconds = None if args.period == "never" else float(args.period)
    retention.set_period(repo, seconds)
    print(f"{repo.path} now keeps ended runs {_kept(seconds)}; a running watcher prunes within the hour")
    return 0


def _kept(seconds: float | None) -> str:
    return "for ever" if seconds is None else f"{retention.describe(seconds)} after they end"


class _Version(argparse.Action):
    """``--version``, read only when asked for (the installed metadata is slow to read)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def _start(repo: Repo, args: argparse.Namespace) -> int:
    repo.ensure()
    running = watcher_info(repo)
    if running is not None:
        print(
            f"{PROG}: error: a watcher is already running for {repo.path} "
            f"(pid {running['pid']}); stop it with '{PROG} stop' first",
            file=sys.stderr,
        )
        return 1
    if args.detach:
        return _start_detached(repo, args)
    _log_to(sys.stdout)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(repo, interval=args.interval, grace=args.grace, stop=stop, notices_on=not args.poll)
    return 0


def _start_detached(repo: Repo, args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "start"]
    command += ["--interval", repr(args.interval)] + (["--poll"] if args.poll else [])
    if args.grace is not None:
        command += ["--grace", repr(args.grace)]
    log_fd = os.open(repo.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    make_private(repo.log_file, os.fstat(log_fd), 0o600)
    with open(log_fd, "ab") as log_file:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        info = watcher_info(repo)
        if info is not None and info.get("pid") == child.pid:
            print(f"{PROG} started (pid {child.pid}), watching {repo.path}; log: {repo.log_file}")
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.05)
    print(f"{PROG}: error: the watcher did not start; see {repo.log_file}:", file=sys.stderr)
    print(_tail(repo.log_file), file=sys.stderr)
    if child.poll() is None:
        child.terminate()
    return 1


def _stop(repo: Repo, args: argparse.Namespace) -> int:
    info = watcher_info(repo)
    if info is None:
        print(f"no watcher is running for {repo.path}")
        return 0
    pid = int(info["pid"])
    start, ticks = info.get("process_start"), info.get("process_start_ticks")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while _process.is_alive(
        pid, start if isinstance(start, float) else None, ticks if type(ticks) is int else None
    ):
        if time.monotonic() > deadline:
            print(f"{PROG}: error: pid {pid} did not stop within {_STOP_TIMEOUT:g} s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"stopped the watcher (pid {pid}) of {repo.path}")
    return 0


def _status(repo: Repo, args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.run is not None:
        return _one_run(repo, args.run)
    info = watcher_info(repo)
    if info is None:
        print(f"watcher: not running for {repo.path}; start one with '{PROG} start --detach'")
    else:
        uptime = _format.duration(time.time() - float(info.get("started_at", time.time())))
        print(f"watcher: running, pid {info['pid']}, up {uptime}, repo {repo.path}")
        polling = info.get("notices")
        if isinstance(polling, str):
            interval = info.get("interval")
            every = f" every {interval:g} s" if isinstance(interval, int | float) else ""
            print(f"watcher: polling{every}, since {_format.one_line(polling)}")
    alone, groups = gather(Observer(repo).glance())
    rows: list[tuple[str, ...]] = [
        ("NAME", "ORIGIN", "STATUS", "STEP", "SINCE PROGRESS", "PEAK MEMORY", "ID")
    ]
    # A group is one row, its members under it; newest first, ended ones after the others.
    entries: list[Observation | GroupObservation] = [*alone, *groups]
    entries.sort(key=_started, reverse=True)
    ended = [e for e in entries if e.state in TERMINAL]
    shown = [e for e in entries if e.state not in TERMINAL]
    shown += ended if args.all else ended[:_RECENT_ENDED]
    if not shown:
        print("no runs yet")
        return 0
    for entry in shown:
        if isinstance(entry, GroupObservation):
            rows += _group_rows(entry)
        else:
            run = entry.run
            origin = run.origin.describe()
            if _process.elsewhere(run.host, run.via):
                origin = f"{origin} on {run.host}"
            rows.append(_row(run.name, origin, entry, run.id))
            rows += _worker_rows(entry)
    print(_format.table(rows))
    for group in shown:
        if isinstance(group, GroupObservation):
            for problem in group.problems:
                print(f"group {group.id[:8]} ({_format.one_line(group.name)}): {problem}")
    hidden = len(ended) - _RECENT_ENDED
    if hidden > 0 and not args.all:
        print(f"({hidden} older ended runs not shown; --all lists them)")
    return 0


def _usage(repo: Repo, args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(message)s", stream=sys.stderr)
    from . import plot
    from .history import combine

    label, members = _find(repo, args.run)
    histories = repo.read_usages([(tag, record.id) for tag, record in members])
    if not histories:
        raise NbmonitorError(
            f"{label} has no usage history (a run made with usage=False, or by an older nbmonitor)"
        )
    kept = histories[0][1] if len(members) == 1 else combine(histories)
    kept.name = label
    if args.html:
        page = plot.report_html(kept, title=label)
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as e:
            raise NbmonitorError(f"cannot write {args.html}: {e.strerror}") from None
        print(f"wrote {args.html}: the usage of {_format.one_line(label)}, {len(kept.processes)} processes")
        return 0
    print(f"{_format.one_line(label)}: {_format.duration(kept.duration)} of usage")
    for line in plot.peak_lines(kept):
        print(_format.one_line(line))
    rows: list[tuple[str, ...]] = [
        ("PROCESS", "PID", "MEAN CPU", "PEAK CPU", "MEAN MEMORY", "PEAK MEMORY", "PEAK GPU")
    ]
    for p in plot.summary(kept):
        rows.append(
            (
                _format.clip(_format.one_line(p.name), 40),
                str(p.pid),
                f"{p.cpu_mean:.0f}%",
                f"{p.cpu_peak:.0f}%",
                _format.human_bytes(p.memory_mean),
                _format.human_bytes(p.memory_peak),
                _format.human_bytes(p.gpu_peak) if p.gpu_peak else "-",
            )
        )
    print(_format.table(rows))
    marks = [m for m in kept.marks if m.by == "user"]
    if marks:
        print("marks: " + ", ".join(f"{_format.one_line(m.text)} at {_format.duration(m.t)}" for m in marks))
    return 0


_NO_TAIL = "has no log tail (made with logs=False, or by an older nbmonitor)"


def _restarts(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of restarts >= 0, got {text!r}")
    return int(text)


def _restart_on(text: str) -> tuple[str, ...]:
    from .supervisor import RESTART_ON

    ways = tuple(w.strip() for w in text.split(",") if w.strip())
    wrong = [w for w in ways if w not in RESTART_ON]
    if not ways or wrong:
        raise argparse.ArgumentTypeError(
            f"expected some of {','.join(RESTART_ON)}, got {(wrong or [text])[0]!r}"
        )
    return ways


def _pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"not a regular expression: {e}") from None


def _run(repo: Repo, args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise NbmonitorError("no command to run: nbmonitor-watcher run [options] -- python train.py ...")
    if shutil.which(command[0]) is None:
        raise NbmonitorError(f"no command {command[0]!r} found (not a file, not on PATH)")
    repo.ensure()
    supervisor = Supervisor(
        repo,
        command,
        max_restarts=args.max_restarts,
        restart_on=args.restart_on,
        no_restart_on=args.no_restart_on,
        term_grace=args.term_grace,
        pause=args.pause,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stop())
    return supervisor.run()


def _token(repo: Repo, args: argparse.Namespace) -> int:
    from .ingest import token

    print(token(repo, new=args.new))
    if sys.stdout.isatty():
        print(
            "far hosts: NBMONITOR_TOKEN=<this> NBMONITOR_REPO=https://<this server>:<port>/ python train.py\n"
            "(it can send runs' records to this repo's Jupyter server, nothing else; --new replaces it)",
            file=sys.stderr,
        )
    return 0


def _send(repo: Repo, args: argparse.Namespace) -> int:
    if not isinstance(repo, RemoteRepo):
        raise NbmonitorError("send is for a --repo that is a Jupyter server's URL (https://host:8888/)")
    sender = _sender.sender(repo)
    if sender.flush(args.timeout):
        if not sender.leading:
            print(f"another process of this host sends what waits for {repo.server.base}")
        elif sender.sent_files:
            print(f"sent {sender.sent_files} file(s) to {repo.server.base}")
        else:
            print(f"nothing waits for {repo.server.base} in {repo.path}")
        return 0
    print(
        f"{PROG}: {sender.waiting()} file(s) could not reach {repo.server.base} in {args.timeout:g} s; "
        f"they wait in {repo.path}",
        file=sys.stderr,
    )
    return 1


#: Seconds between two looks at a followed tail (its run writes it at most once a second).
FOLLOW_EVERY = 0.5


def _logs(repo: Repo, args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise NbmonitorError(f"--lines must be 0 or more, got {args.lines}")
    label, members = _find(repo, args.run)
    lines = _tail_of(repo, members)
    if not lines and not args.follow:
        had = any(repo.log_path(record.id).exists() for _, record in members)
        say = "has logged and printed nothing yet" if had else _NO_TAIL
        print(f"{_format.one_line(label)} {say}", file=sys.stderr)
        return 0
    shown = lines[-args.lines :] if args.lines else []
    for line in shown:
        print(line.shown(logtail.CLIP + 80), flush=args.follow)
    if not args.follow:
        return 0
    last = lines[-1] if lines else None
    while True:
        ended = all(Observer(repo).glance([r])[0].state in TERMINAL for _, r in _reread(repo, members))
        lines = _tail_of(repo, members, say=False)
        new = _after(lines, last)
        for line in new:
            print(line.shown(logtail.CLIP + 80), flush=True)
        if new:
            last = new[-1]
        if ended:
            return 0
        time.sleep(FOLLOW_EVERY)


def _tail_of(repo: Repo, members: list[tuple[str, RunRecord]], *, say: bool = True) -> list[LogLine]:
    """The tails of ``members`` in one, by time; a group's members' lines say which it is."""
    tagged = [(tag if len(members) > 1 else "", record.id) for tag, record in members]
    lines, _, problems = repo.read_logs(tagged)
    for problem in problems if say else ():
        print(f"{PROG}: left out {problem}", file=sys.stderr)
    return lines


def _reread(repo: Repo, members: list[tuple[str, RunRecord]]) -> list[tuple[str, RunRecord]]:
    fresh = []
    for tag, record in members:
        try:
            fresh.append((tag, repo.read_run(record.id)))
        except (OSError, CorruptRecordError):
            fresh.append((tag, record))
    return fresh


def _after(lines: list[LogLine], last: LogLine | None) -> list[LogLine]:
    """The lines after ``last`` (the last one shown); all that are newer when it was cut since."""
    if last is None:
        return lines
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == last:
            return lines[i + 1 :]
    return [x for x in lines if x.t > last.t]


def _one_run(repo: Repo, wanted: str) -> int:
    """``status RUN``: one run's state, its peaks, and the stack it was last seen stuck in."""
    _, members = _find(repo, wanted, groups=False)
    (_, record), *_ = members
    (seen,) = Observer(repo).glance([record])
    print(f"{_format.one_line(record.name)}  [run {record.id}]")
    print(f"  {record.origin.describe()} on {record.host}, pid {record.pid}")
    since = "" if seen.state in TERMINAL else f", last progress {_format.duration(seen.since_progress)} ago"
    print(f"  {seen.state.value}, step {_format.steps(record.step, record.total)}{since}")
    if record.error is not None:
        print(f"  {_format.one_line(record.error.summary())}")
    peaks = peaks_text(record)
    if peaks:
        print(f"  {peaks}")
    if record.attempt:
        print(f"  attempt {record.attempt + 1} of its job (restarted {record.attempt} time(s))")
    if record.job is not None:
        from . import checkpoints

        latest = checkpoints.latest(repo, record.job)
        if latest is not None:
            ago = _format.duration(max(0.0, time.time() - latest.at))
            step = f"at step {latest.step} " if latest.step is not None else ""
            print(f"  latest checkpoint: {step}saved {ago} ago, {_format.one_line(str(latest.path))}")
    if record.stack:
        when = time.strftime(TIME_FORMAT, time.localtime(record.stack_at)) if record.stack_at else "?"
        now = "stuck" if record.stuck_in is not None else "last seen stuck"
        by = " (read by py-spy)" if record.stack_from == "py-spy" else ""
        print(f"  {now} at {when}, when {record.stack_state or 'late'}{by}, innermost first:")
        _print_frames(record.stack)
        for thread in record.threads:
            print(f"  thread {_format.one_line(thread.name)}, innermost first:")
            _print_frames(thread.frames)
    return 0


def _print_frames(frames: tuple[StackFrame, ...]) -> None:
    for frame in frames:
        print(f"    {_format.one_line(frame.function)}  {_format.one_line(frame.file)}:{frame.line}")
        if frame.code:
            print(f"      {_format.one_line(frame.code)}")


def _find(repo: Repo, wanted: str, *, groups: bool = True) -> tuple[str, list[tuple[str, RunRecord]]]:
    """The runs ``wanted`` names (a run id, its first 8 or more digits, a name, a group id):
    a label and (member label, record) for each, by rank for a group."""
    records = repo.runs()  # newest first
    _, found_groups = gather(Observer(repo).glance()) if groups else ((), [])
    for group in found_groups:
        if group.id == wanted or (len(wanted) >= 8 and group.id.startswith(wanted)) or group.name == wanted:
            tagged = [(role(m), m.run) for m in group.members]
            return f"{group.name} (group of {len(tagged)})", tagged
    exact = [r for r in records if r.id == wanted]
    prefixed = [r for r in records if len(wanted) >= 8 and r.id.startswith(wanted)]
    named = [r for r in records if r.name == wanted]
    for found in (exact, prefixed, named):
        if found:
            return found[0].name, [("", found[0])]
    raise NbmonitorError(f"no run or group {wanted!r} in {repo.path}; '{PROG} status' lists them")


def _started(entry: Observation | GroupObservation) -> float:
    if isinstance(entry, GroupObservation):
        return min(m.run.started_at for m in entry.members)
    return entry.run.started_at


def _row(name: str, origin: str, seen: Observation | GroupObservation, ident: str) -> tuple[str, ...]:
    since = "-" if seen.state in TERMINAL else _format.duration(seen.since_progress)
    step, total = (
        (seen.step, seen.total) if isinstance(seen, GroupObservation) else (seen.run.step, seen.run.total)
    )
    return (
        _format.clip(_format.one_line(name), 56),
        _format.clip(_format.one_line(origin), 40),
        seen.state.value,
        _format.steps(step, total),
        since,
        _peak_memory(seen),
        ident[:8],
    )


def _peak_memory(seen: Observation | GroupObservation) -> str:
    """``3.2 GB, most DataLoader worker 2``: the run's peak memory and who held most of it."""
    usage = seen.run.usage if isinstance(seen, Observation) else None
    peak = next((p for p in usage.peaks if p.resource == "memory"), None) if usage else None
    if peak is None:
        return "-"
    return _format.clip(f"{_format.human_bytes(peak.total)}, most {_format.one_line(peak.process)}", 36)


def _group_rows(group: GroupObservation) -> list[tuple[str, ...]]:
    """The group's row, then one per member: ``  rank 1 on node3, pid 812``."""
    info = group.info()
    rows = [
        _row(f"{group.name} [{job_label(info)}]", group.members[0].run.origin.describe(), group, group.id)
    ]
    blamed = {m.run.id for m in group.blamed}
    for member in group.members:
        run = member.run
        label = f"  {role(member)} on {run.host}, pid {run.pid}"
        if run.id in blamed:
            label += " (to blame)"
        elif run.waiting and member.state not in TERMINAL:
            label += f" (in {run.waiting})"
        rows.append(_row(label, "", member, run.id))
    return rows


def _worker_rows(obs: Observation) -> list[tuple[str, ...]]:
    """A run's multiprocessing workers, under it: name, pid, their own progress and state."""
    rows: list[tuple[str, ...]] = []
    for worker in obs.run.workers[:_WORKERS_SHOWN]:
        state = worker.state if worker.exit is None else f"{worker.state}: {worker.exit}"
        step = worker.step if worker.step is not None else worker.progress
        label = f"  {worker.name}, pid {worker.pid}"
        rows.append((_format.clip(_format.one_line(label), 40), "", state, str(step), "", "", ""))
    if len(obs.run.workers) > _WORKERS_SHOWN:
        rows.append((f"  ... {len(obs.run.workers) - _WORKERS_SHOWN} more workers", "", "", "", "", "", ""))
    return rows


class _EventFormatter(logging.Formatter):
    """Time stamp, then the level only when it is worth attention, then the message."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging names it so
        level = f"{record.levelname} " if record.levelno >= logging.WARNING else ""
        return f"{record.asctime} {level}{record.message}"


def _log_to(stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_EventFormatter("%(asctime)s %(message)s", TIME_FORMAT))
    root = logging.getLogger("nbmonitor")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)


def _tail(path: os.PathLike[str], lines: int = 10) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError as e:
        return f"(cannot read the log: {e})"
