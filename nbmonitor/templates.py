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

from . import _format
from .events import Event

__all__ = ["DEFAULTS", "FIELDS", "SAMPLE", "describe", "fields", "render", "test_event", "text_for"]

#: The fields a template may use, and what each holds.
FIELDS: Mapping[str, str] = {
    "name": "the run's name",
    "id": "the run's id",
    "event": "stalled, recovered, crashed, failed, finished or interrupted",
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
}

#: Default text per event: which run, where, what happened, for how long, which step.
DEFAULTS: Mapping[str, str] = {
    "stalled": (
        "{name} stalled: no progress for {since_progress} (promised within {eta}). "
        "{origin} on {host}, pid {pid}, step {steps}."
    ),
    "recovered": "{name} recovered: making progress again. {origin} on {host}, step {steps}.",
    "crashed": (
        "{name} crashed: process {pid} on {host} is gone without finishing, "
        "{since_progress} after its last progress. {origin}, step {steps}."
    ),
    "failed": "{name} failed: {error}. {origin} on {host}, after {elapsed}, step {steps}.",
    "finished": "{name} finished in {elapsed}. {origin} on {host}, step {steps}.",
    "interrupted": "{name} was interrupted after {elapsed}. {origin} on {host}, step {steps}.",
    "test": "Test message from nbmonitor on {host}: this notifier works.",
}

_FIELD = re.compile(r"\{([a-z_]+)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace each ``{field}`` whose name is in ``values``; leave everything else as written."""

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        return match.group(0) if value is None else value

    return _FIELD.sub(replace, template)


def fields(event: Event) -> dict[str, str]:
    """The template fields of an event, as text."""
    run = event.run
    end = run.ended_at if run.ended_at is not None else event.at
    error = run.error.summary() if run.error else ""
    if run.error and run.error.where:
        error += f" at {run.error.where}"
    return {
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
    }


def text_for(event: Event, templates: Mapping[str, str] | None = None, message: str | None = None) -> str:
    """The text of an event: the notifier's template for it, else its catch-all message, else the default."""
    chosen = (templates or {}).get(event.kind) or message or DEFAULTS.get(event.kind, "{name}: {event}")
    return render(chosen, fields(event))


def describe(event: Event) -> str:
    """The watcher's own line for an event: ``STALLED <default text> [run 1a2b3c4d]``, always
    one line (whatever a run's name or error holds, shown escaped)."""
    return f"{event.kind.upper()} {_format.one_line(text_for(event))} [run {event.run.id[:8]}]"


def test_event(host: str) -> Event:
    """The event a ``test`` sends: the sample run, on this host."""
    return Event("test", "test", SAMPLE.run.with_changes(host=host), time.time(), 95.0, None, "test")


def _status(kind: str) -> str:
    return "running" if kind == "recovered" else kind


def _sample() -> Event:
    from .record import Origin, RunRecord

    now = time.time()
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
    )
    return Event("stalled", "stalled-1200", run, now, 95.0, 3.0, "sample")


#: A made-up stalled run, for previews of templates and for test messages.
SAMPLE = _sample()
