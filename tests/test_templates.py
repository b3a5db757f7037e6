"""Message templates: known fields only, nothing else interpreted."""

from __future__ import annotations

import pytest

from nbmonitor import templates
from nbmonitor.events import Event, RestartInfo
from nbmonitor.record import CheckpointField, ErrorInfo, RunUsage, UsagePeak

VALUES = {"name": "train", "step": "40", "error": "KeyError: '{x}'"}


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("{name} at {step}", "train at 40"),
        ("{unknown} {name}", "{unknown} train"),
        ("{step:>5} {name!r}", "{step:>5} {name!r}"),
        ("{name.__class__} {name[0]} {0}", "{name.__class__} {name[0]} {0}"),
        ("{ {name} }}}", "{ train }}}"),
        ("{{name}}", "{train}"),
        ("{", "{"),
        ("}{", "}{"),
        ("{error}", "KeyError: '{x}'"),
    ],
)
def test_render_replaces_known_fields_and_leaves_the_rest_as_written(template: str, text: str) -> None:
    assert templates.render(template, VALUES) == text


def test_values_are_never_read_as_templates() -> None:
    assert templates.render("{name}", {"name": "{step}", "step": "9"}) == "{step}"


def test_templates_cannot_reach_the_environment_or_globals() -> None:
    for probe in ("{__globals__}", "{os.environ}", "{run.__init__.__globals__}", "{self}", "{__class__}"):
        assert templates.text_for(templates.SAMPLE, {"stalled": probe}) == probe


def test_every_documented_field_is_filled() -> None:
    values = templates.fields(templates.SAMPLE)
    assert set(values) == set(templates.FIELDS)
    assert values["steps"] == "1200/5000"
    assert values["since_progress"] == "1 min 35 s"
    assert values["origin"] == "experiments/train.ipynb, cell 12"


def test_default_texts_say_which_run_where_what_and_how_far() -> None:
    text = templates.text_for(templates.SAMPLE)
    for part in (
        "train-resnet",
        "stalled",
        "1 min 35 s",
        "30 s",
        "experiments/train.ipynb, cell 12",
        "gpu-box",
    ):
        assert part in text
    assert "1200/5000" in text


def test_a_notifier_template_wins_then_its_message_then_the_default() -> None:
    event = templates.SAMPLE
    assert templates.text_for(event, {"stalled": "S {name}"}, "M {name}") == "S train-resnet"
    assert templates.text_for(event, {"failed": "F"}, "M {name}") == "M train-resnet"
    assert templates.text_for(event, {}, None) == templates.render(
        templates.DEFAULTS["stalled"], templates.fields(event)
    )


def test_a_failed_runs_error_and_location_are_in_its_text() -> None:
    run = templates.SAMPLE.run.with_changes(
        status="failed", error=ErrorInfo("ValueError", "bad", "t.py:3 in f")
    )
    event = templates.SAMPLE.__class__("failed", "end", run, run.started_at + 60, 1.0, None, "x")
    assert "ValueError: bad at t.py:3 in f" in templates.text_for(event)


def test_a_crash_names_the_peaks_and_the_process_that_held_most() -> None:
    peaks = (
        UsagePeak("cpu", 190.0, "main", 99.0),
        UsagePeak("memory", 3.2 * 2**30, "DataLoader worker 2\n<b>", 1.9 * 2**30),
    )
    run = templates.SAMPLE.run.with_changes(usage=RunUsage(12.0, 2**30, None, peaks))
    event = templates.SAMPLE.__class__("crashed", "end", run, run.started_at + 60, 1.0, None, "x")
    text = templates.text_for(event)
    assert text.endswith(
        " Peak memory 3.2 GB (most: DataLoader worker 2\\n<b>, 1.9 GB); peak CPU 190% (most: main, 99%)."
    )
    assert "\n" not in text
    plain = templates.SAMPLE.run.with_changes(usage=None)
    assert (
        templates.fields(templates.SAMPLE.__class__("crashed", "end", plain, 0.0, 1.0, None, "x"))["peaks"]
        == ""
    )


def test_a_stall_says_where_the_code_is_stuck_or_why_that_is_not_known() -> None:
    text = templates.text_for(templates.SAMPLE)
    assert " Stuck in wait_for_batch (data.py:42) ← train (train.py:88)." in text
    run = templates.SAMPLE.run
    silent = run.with_changes(stack=(), stack_state=None, stack_at=None, heartbeat=10.0)
    unknown = templates.text_for(
        templates.SAMPLE.__class__("stalled", "stalled-1", silent, 0.0, 9.0, 2.0, "x")
    )
    assert "Where it is stuck is not known: its process did not say" in unknown
    # A stack from before its last progress is not where it is now.
    old = run.with_changes(stack_at=run.last_progress_at - 1)
    assert "Stuck in" not in templates.text_for(
        templates.SAMPLE.__class__("stalled", "s", old, 0.0, 9.0, 2.0, "x")
    )
    crashed = templates.SAMPLE.__class__("crashed", "end", run, 0.0, 9.0, None, "x")
    assert templates.fields(crashed)["stack"] == ""


def test_a_restart_says_how_the_attempt_ended_what_comes_next_and_what_is_lost() -> None:
    run = templates.SAMPLE.run.with_changes(attempt=1, step=1234)
    at = templates.SAMPLE.at
    info = RestartInfo("stalled", "", 1, 3, "nbmonitor-watcher run", "", 1200, at - 240)
    restarting = Event("restarting", "end", run, at, 95.0, None, "test", restart=info)
    assert templates.text_for(restarting).startswith(
        "train-resnet stalled at step 1234/5000, restarting 2 of 3 from the checkpoint at step 1200 "
        "saved 4 min ago; about 34 steps lost. experiments/train.ipynb, cell 12 on gpu-box."
    )
    fresh = RestartInfo("crashed", "killed by SIGKILL", 0, 3, "torchrun")
    text = templates.text_for(Event("restarting", "end", run, at, 1.0, None, "test", restart=fresh))
    assert (
        "crashed (killed by SIGKILL) at step 1234/5000, restarting 1 of 3 from the start (no checkpoint yet)"
        in (text)
    )
    last = RestartInfo(
        "failed", "exit status 1", 2, 2, "torchrun", "no restarts left (torchrun --max-restarts 2)"
    )
    gave_up = templates.text_for(Event("gave-up", "end", run, at, 1.0, None, "test", restart=last))
    assert gave_up.startswith(
        "train-resnet gave up after 3 attempts: failed (exit status 1) at step 1234/5000; "
        "no restarts left (torchrun --max-restarts 2)."
    )


def test_a_run_says_its_attempt_and_latest_checkpoint() -> None:
    run = templates.SAMPLE.run
    now = run.started_at + 600
    assert templates.attempt_text(run, now) == ""  # a first attempt that saved none
    resumed = run.with_changes(attempt=2, checkpoint=CheckpointField(1200, now - 240, resumed=True))
    assert templates.attempt_text(resumed, now) == (
        "attempt 3 · resumed from the checkpoint at step 1200, saved 4 min ago"
    )
    saved = run.with_changes(checkpoint=CheckpointField(None, now - 12))
    assert templates.attempt_text(saved, now) == "checkpoint, saved 12 s ago"
