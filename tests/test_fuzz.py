"""Bad input on purpose, generated (hypothesis): a clear, specific error or a valid result, never a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbmonitor import cli, templates
from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.errors import CorruptRecordError
from nbmonitor.events import Event
from nbmonitor.notifiers import ConfigError
from nbmonitor.record import RunRecord
from nbmonitor.repo import Repo, read_record

from .test_record import sample

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

    from nbmonitor.magics import CELL

    line = " ".join(words)
    try:
        args = CELL.parse_args(line.split())  # as the magic splits its line
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
        assert f"'{field}" in str(e) or "format" in str(e) or "run id" in str(e)
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
        assert store.load() == [] or data.strip()
    except CorruptRecordError as e:
        assert e.path == str(store.path)


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
