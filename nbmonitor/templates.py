"""Message texts: the default one per event, and safe rendering of user templates.

A template names fields in braces, ``{name} stalled at {step}``. Only a known
field name alone between braces is replaced; anything else (an unknown
field, a format spec, ``{run.__class__}``, ``{0[1]}``, a stray brace) stays
exactly as written. Values are inserted once and never read as templates, so
braces in a run's name or error cannot break or steer rendering. Pure
functions, no I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from . import _format, logtail
from .events import Event, GroupInfo, RestartInfo
from .record import RunRecord

__all__ = [
    "DEFAULTS",
    "FIELDS",
    "GROUP_DEFAULTS",
    "SAMPLE",
    "attempt_text",
    "blame",
    "describe",
    "fields",
    "job_label",
    "render",
    "test_event",
    "text_for",
]

#: The fields a template may use, and what each holds.
FIELDS: Mapping[str, str] = {
    "name": "the run's name",
    "id": "the run's id",
    "event": "stalled, recovered, crashed, lost, failed, finished, interrupted, restarting or gave-up",
    "status": "the run's state when the event was seen",
    "host": "host of the run's process",
    "pid": "pid of the run's process",
    "origin": "script and arguments, or notebook and cell",
    "step": "last step reported",
    "total": "step count at completion, or ?",
    "steps": "step/total, or the step alone",
    "elapsed": "time since the run started",
    "since_progress": "time since the last progress",
    "eta": "promised time between progress reports",
    "error": "exception type and message of a failed run",
    "last_progress_at": "wall-clock time of the last progress",
    "group": "the job a group event is of: launcher and size (empty for a run of its own)",
    "blame": "the members a group event blames: rank, host, pid, step, how far behind",
    "members": "how many members of the group are in which state",
    "workers": "the run's multiprocessing workers that failed or crashed, and how (empty if none)",
    "peaks": "the run's peak memory, CPU and GPU memory, each with the process that held most (or nothing)",
    "stack": "where a stalled run's code is stuck, innermost first (or why that is not known)",
    "ended": "how an attempt of a restarted job ended: stalled, crashed (killed by SIGKILL), failed (error)",
    "restart": (
        "which restart comes and from where: 2 of 3 from the checkpoint at step 1200 saved 4 min ago; "
        "about 34 steps lost"
    ),
    "attempts": "how many attempts a job that gave up made: 3 attempts",
    "reason": "why a job gave up: no restarts left, or the log line that matched --no-restart-on",
    "log_tail": (
        "the last lines the run logged and printed (a traceback's last lines for a failure), on lines "
        "of their own: 5 in chat messages, 20 in e-mail and webhooks, none in log lines"
    ),
}

#: Default text per event: which run, where, what happened, for how long, which step.
DEFAULTS: Mapping[str, str] = {
    "stalled": (
        "{name} stalled: no progress for {since_progress} (promised within {eta}). "
        "{origin} on {host}, pid {pid}, step {steps}.{stack}{workers}{peaks}{log_tail}"
    ),
    "recovered": "{name} recovered: making progress again. {origin} on {host}, step {steps}.",
    "crashed": (
        "{name} crashed: process {pid} on {host} is gone without finishing, "
        "{since_progress} after its last progress. {origin}, step {steps}.{workers}{peaks}{log_tail}"
    ),
    "lost": (
        "{name} lost: its host {host} stopped answering (no sign of life for three heartbeats), "
        "{since_progress} after its last progress. {origin}, pid {pid}, step {steps}.{log_tail}"
    ),
    "failed": (
        "{name} failed: {error}. {origin} on {host}, after {elapsed}, step {steps}.{workers}{peaks}{log_tail}"
    ),
    "finished": "{name} finished in {elapsed}. {origin} on {host}, step {steps}.{workers}{peaks}",
    "interrupted": "{name} was interrupted after {elapsed}. {origin} on {host}, step {steps}.{workers}",
    "restarting": "{name} {ended} at step {steps}, restarting {restart}. {origin} on {host}.{log_tail}",
    "gave-up": (
        "{name} gave up after {attempts}: {ended} at step {steps}; {reason}. {origin} on {host}.{log_tail}"
    ),
    "test": "Test message from nbmonitor on {host}: this notifier works.",
}

#: Default text per event of a group (a job's ranks): which job, whom to blame, the others.
GROUP_DEFAULTS: Mapping[str, str] = {
    "stalled": "{name} stalled: {blame}. {group}: {members}.{log_tail}",
    "recovered": "{name} recovered: making progress again, step {steps}. {group}: {members}.",
    "crashed": "{name} crashed: {blame}, gone without finishing. {group}: {members}.{log_tail}",
    "lost": "{name} lost: {blame}, whose host stopped answering. {group}: {members}.{log_tail}",
    "failed": "{name} failed: {blame}: {error}. {group}: {members}.{log_tail}",
    "finished": "{name} finished in {elapsed}, step {steps}. {group}: {members}.",
    "interrupted": "{name} was interrupted after {elapsed}, step {steps}. {group}: {members}.",
    "restarting": "{name} {ended}: {blame}; restarting {restart}. {group}: {members}.{log_tail}",
    "gave-up": "{name} gave up after {attempts}: {ended}: {blame}; {reason}. {group}: {members}.{log_tail}",
}

_FIELD = re.compile(r"\{([a-z_]+)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace each ``{field}`` whose name is in ``values``; leave everything else as written."""

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        return match.group(0) if value is None else value

    return _FIELD.sub(replace, template)


#: Lines of ``{log_tail}`` a message shows when its notifier does not say.
TAIL_LINES = 5


def fields(event: Event, tail_lines: int = TAIL_LINES) -> dict[str, str]:
    """The template fields of an event, as text; ``{log_tail}`` with the last ``tail_lines``."""
    run = event.run
    end = run.ended_at if run.ended_at is not None else event.at
    error = run.error.summary() if run.error else ""
    if run.error and run.error.where:
        error += f" at {run.error.where}"
    values = {
        "name": run.name,
        "id": run.id,
        "event": event.kind,
        "status": _status(event.kind),
        "host": run.host,
        "pid": str(run.pid),
        "origin": run.origin.describe(),
        "step": str(run.step),
        "total": str(run.total) if run.total is not None else "?",
        "steps": _format.steps(run.step, run.total),
        "elapsed": _format.duration(end - run.started_at),
        "since_progress": _format.duration(event.since_progress),
        "eta": _format.duration(run.eta) if run.eta is not None else "no ETA",
        "error": error or "no error recorded",
        "last_progress_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.last_progress_at)),
        "group": "",
        "blame": "",
        "members": "",
        "workers": _workers(run),
        "peaks": f" {peaks_text(run)}." if run.usage is not None and run.usage.peaks else "",
        "stack": _stack(event.kind, run),
        "log_tail": logtail.text(event.log_tail, tail_lines),
        "ended": "",
        "restart": "",
        "attempts": "",
        "reason": "",
    }
    if event.restart is not None:
        step = event.group.step if event.group is not None else run.step
        values |= _restart(event.restart, step, event.at)
    group = event.group
    if group is not None:
        values |= {
            "id": group.id,
            "steps": _format.steps(group.step, group.total),
            "step": str(group.step),
            "total": str(group.total) if group.total is not None else "?",
            "group": job_label(group),
            "blame": blame(group),
            "members": ", ".join(f"{n} {state}" for state, n in group.states),
        }
    return values


def _restart(info: RestartInfo, step: int, now: float) -> dict[str, str]:
    """The fields of a *restarting* or *gave-up* event."""
    why = f" ({_format.one_line(info.why)})" if info.why else ""
    if info.checkpoint_at is None:
        source = "from the start (no checkpoint yet)"
    else:
        ago = _format.duration(max(0.0, now - info.checkpoint_at))
        at_step = f" at step {info.checkpoint_step}" if info.checkpoint_step is not None else ""
        source = f"from the checkpoint{at_step} saved {ago} ago"
        if info.checkpoint_step is not None and step >= info.checkpoint_step:
            lost = step - info.checkpoint_step
            source += f"; about {lost} step{'s' if lost != 1 else ''} lost"
    made = info.attempt + 1
    return {
        "ended": info.ended + why,
        "restart": f"{made} of {info.max_restarts} {source}",
        "attempts": f"{made} attempt{'s' if made != 1 else ''}",
        "reason": _format.one_line(info.reason) or "no restart",
    }


_WORKERS_NAMED = 4


def _workers(run: RunRecord) -> str:
    """`` Worker ForkPoolWorker-3, pid 812: crashed, killed by SIGKILL.``, or nothing."""
    bad = [w for w in run.workers if w.state in ("failed", "crashed")]
    if not bad:
        return ""
    named = [f"{w.name}, pid {w.pid}: {w.state}" + (f", {w.exit}" if w.exit else "") for w in bad]
    more = f"; and {len(bad) - _WORKERS_NAMED} more" if len(bad) > _WORKERS_NAMED else ""
    return f" {'Worker' if len(bad) == 1 else 'Workers'} " + "; ".join(named[:_WORKERS_NAMED]) + more + "."


def _stack(kind: str, run: RunRecord) -> str:
    """`` Stuck in wait_for_batch (data.py:42) ← train (train.py:88).`` for a stall; when the run's
    process never said (its writer thread could not run), that it is not known and why."""
    if kind != "stalled":
        return ""
    where = run.stuck_in
    if where is not None:
        seen = " (read by py-spy: its process could not say)" if run.stack_from == "py-spy" else ""
        return f" Stuck in {_format.one_line(where)}{seen}."
    if run.heartbeat is None:
        return ""  # an older writer, which never takes stacks
    why = f"; {_format.one_line(run.stack_error)}" if run.stack_error else ""
    return (
        " Where it is stuck is not known: its process did not say (one long C call holding the GIL "
        f"stops its monitor thread too){why}."
    )


_PEAK_NAMES = (("memory", "peak memory"), ("cpu", "peak CPU"), ("gpu_memory", "peak GPU memory"))


def peaks_text(run: RunRecord) -> str:
    """``Peak memory 3.2 GB (most: DataLoader worker 2, 1.9 GB); peak CPU 190% (most: main, 99%)``,
    or nothing when the run recorded no usage."""
    if run.usage is None:
        return ""
    found = {p.resource: p for p in run.usage.peaks}
    parts = []
    for resource, what in _PEAK_NAMES:
        peak = found.get(resource)
        if peak is None:
            continue
        show = (lambda v: f"{v:.0f}%") if resource == "cpu" else _format.human_bytes
        who = _format.clip(_format.one_line(peak.process), 40)
        parts.append(f"{what} {show(peak.total)} (most: {who}, {show(peak.process_value)})")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def attempt_text(run: RunRecord, now: float) -> str:
    """``attempt 2 · resumed from the checkpoint at step 1200, saved 4 min ago``, or ``checkpoint
    at step 1400, saved 12 s ago``: which attempt of its job a run is, and its latest checkpoint;
    nothing for a first attempt that saved none."""
    parts = [f"attempt {run.attempt + 1}"] if run.attempt else []
    saved = run.checkpoint
    if saved is not None:
        at_step = f" at step {saved.step}" if saved.step is not None else ""
        ago = _format.duration(max(0.0, now - saved.at))
        what = "resumed from the checkpoint" if saved.resumed else "checkpoint"
        parts.append(f"{what}{at_step}, saved {ago} ago")
    return " · ".join(parts)


def blame(group: GroupInfo) -> str:
    """The members a group event blames, in one phrase: ``rank 5 on node3, pid 812: step 1200,
    40 behind the median, no progress for 95 s``."""
    parts = []
    for member in group.blamed:
        phrase = f"{member.role} on {member.host}, pid {member.pid}: step {member.step}"
        behind = group.median_step - member.step
        if behind >= 1:
            phrase += f", {behind:g} behind the median"
        if member.state in ("stalled", "late"):
            phrase += f", no progress for {_format.duration(member.since_progress)}"
            if member.stuck:
                phrase += f", stuck in {_format.one_line(member.stuck)}"
        parts.append(phrase)
    return "; ".join(parts) or "no member in particular"


def job_label(group: GroupInfo) -> str:
    """``torchrun job 1a2b3c, 8 ranks`` (or ``3 of 8 ranks`` while some have not started)."""
    job = group.job if len(group.job) <= 12 else group.job[:8] + "…"
    world = (
        f"{group.size} of {group.world_size}" if group.world_size not in (None, group.size) else group.size
    )
    return f"{group.launcher} job {job}, {world} {'ranks' if group.launcher != 'manual' else 'members'}"


def text_for(
    event: Event,
    templates: Mapping[str, str] | None = None,
    message: str | None = None,
    tail_lines: int = TAIL_LINES,
) -> str:
    """The text of an event: the notifier's template for it, else its catch-all message, else the
    default; ``tail_lines`` of the run's log tail where it says ``{log_tail}``."""
    defaults = GROUP_DEFAULTS if event.group is not None else DEFAULTS
    chosen = (templates or {}).get(event.kind) or message or defaults.get(event.kind, "{name}: {event}")
    return render(chosen, fields(event, tail_lines))


def describe(event: Event) -> str:
    """The watcher's own line for an event: ``STALLED <default text> [run 1a2b3c4d]``, always
    one line (whatever a run's name or error holds, shown escaped)."""
    which = "group" if event.group is not None else "run"
    text = _format.one_line(text_for(event, tail_lines=0))
    return f"{event.kind.upper()} {text} [{which} {event.subject[:8]}]"


def test_event(host: str) -> Event:
    """The event a ``test`` sends: the sample run, on this host."""
    return Event("test", "test", SAMPLE.run.with_changes(host=host), time.time(), 95.0, None, "test")


def _status(kind: str) -> str:
    return "running" if kind == "recovered" else kind


def _sample() -> Event:
    from .record import Origin, RunRecord, StackFrame

    now = time.time()
    stack = (
        StackFrame("wait_for_batch", "/home/me/experiments/data.py", 42, "batch = queue.get()"),
        StackFrame("train", "/home/me/experiments/train.py", 88, "batch = wait_for_batch()"),
    )
    run = RunRecord(
        id="0123456789abcdef0123456789abcdef",
        name="train-resnet",
        origin=Origin("notebook", path="experiments/train.ipynb", cell=12),
        host="gpu-box",
        pid=4242,
        process_start=now - 4000,
        boot_id=None,
        started_at=now - 3600,
        status="running",
        eta=30.0,
        grace=None,
        step=1200,
        total=5000,
        progress=1200,
        last_progress_at=now - 95,
        last_progress_mono=0.0,
        updated_at=now - 95,
        stack=stack,
        stack_state="stalled",
        stack_at=now - 60,
    )
    return Event("stalled", "stalled-1200", run, now, 95.0, 3.0, "sample")


#: A made-up stalled run, for previews of templates and for test messages.
SAMPLE = _sample()
