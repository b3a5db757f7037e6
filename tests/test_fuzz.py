"""Bad input on purpose, generated (hypothesis): a clear, specific error or a valid result, never a crash."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbmonitor import cli, templates
from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.errors import CorruptRecordError
from nbmonitor.events import Event
from nbmonitor.fields import ConfigError
from nbmonitor.notifiers import TYPES
from nbmonitor.record import RunRecord
from nbmonitor.repo import Repo, read_record

from .records import sample

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0", "-0", "", "3s", "½", "0x10", "1_000"]),
    st.text(max_size=8),
)
FLAGS = st.sampled_from(
    ["--eta", "--grace", "--total", "--name", "--no-usage", "--quiet", "--frob", "-x", "--"]
)
WORDS = st.lists(st.one_of(FLAGS, NUMBERS), max_size=6)


@FUZZ
@given(WORDS)
def test_watch_arguments_parse_to_valid_values_or_a_one_line_usage_error(words: list[str]) -> None:
    from IPython.core.error import UsageError

    from nbmonitor.magics import parse_cell

    line = " ".join(words)
    try:
        args = parse_cell(line)  # as the magic parses its line
    except UsageError as e:
        assert str(e).startswith("%%watch: ")
        assert "\n" not in str(e)
        return
    for value in (args.eta, args.grace):
        assert value is None or (math.isfinite(value) and value >= 0)
    assert args.eta is None or args.eta > 0
    assert args.total is None or args.total >= 0


@FUZZ
@given(
    st.lists(
        st.one_of(st.sampled_from(["--interval", "--grace", "--detach", "--bogus"]), NUMBERS), max_size=5
    )
)
def test_watcher_start_arguments_parse_or_exit_2(words: list[str]) -> None:
    try:
        args = cli._parser().parse_args(["start", *words])
    except SystemExit as e:
        assert e.code == 2
        return
    assert 0.05 <= args.interval <= 3600
    assert args.grace is None or 0 <= args.grace <= 86400


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_in_a_run_file_are_a_named_corrupt_record(tmp_path_factory: Any, data: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / f"{'a' * 32}.json"
    path.write_bytes(data)
    with pytest.raises(CorruptRecordError) as info:
        read_record(path)
    assert info.value.path == str(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(st.sampled_from(sorted(sample().to_dict())), JSON)
def test_a_field_of_any_json_value_gives_a_record_or_an_error_naming_the_field(
    field: str, value: Any
) -> None:
    data = sample().to_dict() | {field: value}
    try:
        record = RunRecord.from_dict(json.loads(json.dumps(data)))
    except ValueError as e:
        # The field is named (nested ones with their path, 'origin.kind'); a newer format says so.
        assert f"'{field}" in str(e) or (field == "format" and "is newer than this nbmonitor" in str(e))
        return
    assert record.id == data["id"]


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_in_the_notifier_file_are_an_error_naming_it(tmp_path_factory: Any, data: bytes) -> None:
    repo = Repo(Path(tmp_path_factory.mktemp("fuzz-repo")))
    repo.ensure()
    store = NotifierStore(repo)
    store.path.write_bytes(data)
    try:
        found = store.load()
    except CorruptRecordError as e:
        assert e.path == str(store.path)
        return
    # Only bytes that are a notifier file load, and then as exactly what they hold.
    assert found == [NotifierConfig.from_dict(item) for item in json.loads(data)["notifiers"]]


@FUZZ
@given(st.sampled_from(["slack", "workplace", "webhook", "email", "ntfy", "telegram", "logger"]), JSON)
def test_hand_written_notifier_arguments_are_validated(kind: str, args: Any) -> None:
    try:
        NotifierConfig.from_dict({"type": kind, "args": args})
    except ConfigError as e:
        assert e.field


@FUZZ
@given(st.text(max_size=80), st.text(max_size=30))
def test_any_template_renders_and_only_known_fields_change(template: str, name: str) -> None:
    run = templates.SAMPLE.run.with_changes(name=name)
    event = Event("stalled", "stalled-1", run, run.started_at, 5.0, 2.0, "fuzz")
    text = templates.text_for(event, {"stalled": template})
    if template and "{" not in template:  # an empty template means the default text
        assert text == template
    assert isinstance(text, str)


@FUZZ
@given(
    st.lists(
        st.one_of(st.sampled_from(["auto", "off", "status", "--after", "--frob", "-x"]), NUMBERS), max_size=5
    )
)
def test_watch_line_commands_parse_or_give_a_one_line_usage_error(words: list[str]) -> None:
    from IPython.core.error import UsageError

    from nbmonitor.magics import LINE

    try:
        args = LINE.parse_args(words)
    except UsageError as e:
        assert str(e).startswith("%watch")
        assert "\n" not in str(e)
        return
    assert args.command in ("auto", "off", "status")
    if args.command == "auto":
        assert math.isfinite(args.after)
        assert args.after >= 0


MARK = "s3cr3t9f8e7d"  # in every generated secret: it must never be shown whole
SECRET_VALUES = st.one_of(
    st.builds(lambda s: f"https://hooks.example.org/{MARK}{s}", st.text("abcXYZ019/_-", max_size=12)),
    st.builds(lambda s: f"{MARK}{s}", st.text("abc:019", max_size=6)),
    st.builds(lambda s: f"Authorization: Bearer {MARK}{s}", st.text("abc", max_size=4)),
)
PLAIN_VALUES = st.one_of(
    NUMBERS,
    st.sampled_from(["https://example.org", "ftp://x", "a@b.co", "x@", "stalled,crashed", "bogus", "ssl"]),
    st.sampled_from(["stalled={name} stuck", "nope=x", "=", "{0}", "{name.__class__}", "{run[id]}"]),
)
SECRET_FLAGS = ["--webhook-url", "--url", "--access-token", "--bot-token", "--token", "--password"]
SECRET_FLAGS += ["--header", "--apprise-url"]
PLAIN_FLAGS = ["--group-id", "--chat-id", "--base-url", "--server", "--topic", "--smtp-host", "--smtp-port"]
PLAIN_FLAGS += ["--security", "--username", "--from", "--to", "--file", "--events", "--message", "--template"]
FLAG_VALUES = st.one_of(
    st.tuples(st.sampled_from(SECRET_FLAGS), SECRET_VALUES),
    st.tuples(st.sampled_from(PLAIN_FLAGS), PLAIN_VALUES),
    st.tuples(st.sampled_from(["--disabled", "--frob"]), st.just(None)),
)


@FUZZ
@given(
    st.sampled_from([*sorted(TYPES), "pigeon", ""]),
    st.lists(FLAG_VALUES, max_size=5),
)
def test_notifiers_add_flags_save_a_valid_notifier_or_say_what_is_wrong(
    tmp_path_factory: Any, kind: str, flags: list[tuple[str, str | None]]
) -> None:
    repo = Repo(Path(tmp_path_factory.mktemp("fuzz-cli")))
    argv = ["--repo", str(repo.path), "notifiers", "add", *([kind] if kind else [])]
    for flag, value in flags:
        argv += [flag] if value is None else [flag, value]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code: int | str | None
        try:
            code = cli.main([*argv, "--yes"])
        except SystemExit as e:  # argparse: a bad flag or type
            code = e.code
    shown = out.getvalue() + err.getvalue()
    assert MARK not in shown
    saved = NotifierStore(repo).load() if NotifierStore(repo).path.exists() else []
    if code == 0:
        (config,) = saved
        assert config.type == kind
        return
    assert saved == []  # nothing written half
    assert code in (1, 2)
    last = err.getvalue().strip().splitlines()[-1]
    assert last.startswith("nbmonitor-watcher")
    assert "error:" in last


def _a_claimed_delivery(repo: Repo) -> Path:
    """A pending delivery with its claim, for a webhook at an unreachable port."""
    from nbmonitor.outbox import claim_event

    config = NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": "http://127.0.0.1:9/h"}))
    event = Event("crashed", "end", sample(id="c" * 32), 2000.0, 1.0, None, "fuzz")
    assert claim_event(repo, event, [config])
    (pending,) = repo.outbox_dir.rglob("*.json")
    return pending


@FUZZ
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_in_a_claim_file_never_break_a_watcher_or_lose_the_delivery(
    tmp_path_factory: Any, data: bytes
) -> None:
    from nbmonitor.outbox import Sender
    from nbmonitor.watcher import Watcher

    repo = Repo(Path(tmp_path_factory.mktemp("fuzz-claim")))
    repo.ensure()
    _a_claimed_delivery(repo)
    (repo.events_dir / ("c" * 32) / "end.json").write_bytes(data)
    repo.write_run(sample(id="c" * 32))
    Watcher(repo, alive=lambda pid, start, ticks: False).poll()  # a claim exists: nothing to report
    (result,) = Sender(repo, timeout=0.2).deliver(now=2001.0)
    assert "cannot reach" in result.answer  # tried, not dropped: nothing lost
    assert list(repo.outbox_dir.rglob("*.json"))


def _payload_with(field: str, value: Any) -> bytes:
    event = Event("crashed", "end", sample(id="d" * 32), 2000.0, 1.0, None, "fuzz")
    data = event.to_dict() | {"nonce": "0" * 32}
    if field.startswith("run."):
        data["run"] = data["run"] | {field[4:]: value}
    else:
        data[field] = value
    return json.dumps(data).encode()


PAYLOAD_FIELDS = [*Event("crashed", "end", sample(), 0.0, 0.0, None, "").to_dict(), "nonce"]
PAYLOAD_FIELDS += [f"run.{name}" for name in sample().to_dict()]


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.builds(_payload_with, st.sampled_from(PAYLOAD_FIELDS), JSON),
    )
)
def test_any_bytes_in_a_pending_delivery_are_set_aside_or_sent_never_a_crash(
    tmp_path_factory: Any, data: bytes
) -> None:
    from nbmonitor.outbox import Sender

    repo = Repo(Path(tmp_path_factory.mktemp("fuzz-pending")))
    repo.ensure()
    good = _a_claimed_delivery(repo)
    bad = good.with_name(f"{'d' * 32}.end.{'0' * 32}.json")
    bad.write_bytes(data)
    results = Sender(repo, timeout=0.2, orphan_after=0).deliver(now=2001.0)
    assert results  # the good one was tried
    assert good.exists()  # and kept for a retry, since the endpoint is down
    set_aside = repo.set_aside_path(bad)
    verdict = _verdict(data)
    if verdict == "bad":  # set aside, never sent
        assert set_aside.exists()
        assert not bad.exists()
    elif verdict == "newer":  # left for the newer nbmonitor that wrote it
        assert bad.exists()
        assert not set_aside.exists()
    else:  # a delivery like any other: tried (and kept, or dropped for a claim it lost)
        assert not set_aside.exists()


def _verdict(data: bytes) -> str:
    """What a pending delivery holding ``data`` is: a valid event, bad, or of a newer format."""
    from nbmonitor.errors import NewerFormatError

    try:
        Event.from_dict(json.loads(data))
    except NewerFormatError:
        return "newer"
    except (ValueError, UnicodeDecodeError):
        return "bad"
    return "valid"


STATUS_FIELDS = ["at", "ok", "answer", "pending", "events", "pid", "host", "process_start", "started_at"]


def _status_file_with(values: dict[str, Any]) -> bytes:
    from nbmonitor import _process

    # This very process on this host: a watcher file that names it counts as a live watcher.
    good = {"at": 1.0, "ok": True, "answer": "200 ok", "pending": 0, "started_at": 1.0}
    good |= {"pid": os.getpid(), "host": _process.host()}
    return json.dumps(good | values).encode()


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(STATUS_FIELDS), JSON, min_size=1, max_size=3).map(_status_file_with),
    )
)
def test_any_bytes_in_the_watcher_and_delivery_files_leave_status_and_list_working(
    tmp_path_factory: Any, data: bytes
) -> None:
    repo = Repo(Path(tmp_path_factory.mktemp("fuzz-status")))
    repo.ensure()
    config = NotifierStore(repo).add(NotifierConfig.create("logger"))
    repo.write_run(sample(id="e" * 32))
    repo.watcher_file.write_bytes(data)
    (repo.path / "deliveries").mkdir()
    (repo.path / "deliveries" / f"{config.id}.json").write_bytes(data)
    for command in (["status"], ["notifiers", "list"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(["--repo", str(repo.path), *command]) == 0
        assert out.getvalue()


# Not "start" (it would watch on; its arguments have a test of their own), nor "--repo".
COMMAND_WORDS = st.sampled_from(
    [
        "stop",
        "status",
        "--all",
        "notifiers",
        "list",
        "enable",
        "disable",
        "remove",
        "test",
        "add",
        "--yes",
        "--version",
        "--bogus",
        "-h",
        "logger",
        "slack",
        "--events",
        "stalled",
    ]
)


@FUZZ
@given(st.lists(st.one_of(COMMAND_WORDS, NUMBERS, st.sampled_from(["0", "ab", "../x", "\0"])), max_size=5))
def test_any_command_line_but_start_gives_an_exit_status_and_a_one_line_error(
    tmp_path_factory: Any, words: list[str]
) -> None:
    repo = Repo(Path(tmp_path_factory.mktemp("fuzz-argv")))
    NotifierStore(repo).add(NotifierConfig.create("logger"))  # something for the id commands to find
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str | None = cli.main(["--repo", str(repo.path), *words])
        except SystemExit as e:  # argparse: usage errors, --help and --version
            code = e.code
    assert code in (0, 1, 2)
    if code:
        lines = err.getvalue().strip().splitlines()
        assert lines, "a failure says why"
        assert lines[-1].startswith("nbmonitor-watcher")
        assert "Traceback" not in err.getvalue()
