"""Run records: what a run file holds and how bad ones are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nbmonitor.record import FORMAT, ErrorInfo, Origin, RunRecord, RunUsage

from .records import sample


def test_a_record_survives_a_json_round_trip() -> None:
    record = sample(
        status="failed",
        error=ErrorInfo("ValueError", "bad", "x.py:3 in f"),
        ended_at=2020.0,
        usage=RunUsage(95.5, 2**30, None),
    )
    assert RunRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.to_dict()["format"] == FORMAT


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = sample().to_dict() | {"added_in_a_later_version": [1, 2]}
    assert RunRecord.from_dict(data) == sample()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 99}, "format 99 is newer"),
        ({"format": "1"}, "'format' must be an integer"),
        ({"id": "../../etc/passwd"}, "not a run id"),
        ({"status": "stalled"}, "'status' must be one of"),
        ({"pid": -1}, "'pid' must be a non-negative integer"),
        ({"eta": 0}, "'eta' must be > 0"),
        ({"eta": "3"}, "'eta' must be a finite number"),
        ({"grace": -1}, "'grace' must be >= 0"),
        ({"step": 1.5}, "'step' must be a non-negative integer"),
        ({"origin": []}, "'origin' must be an object"),
        ({"error": "boom"}, "'error' must be an object or null"),
        ({"usage": [1]}, "'usage' must be an object or null"),
        ({"usage": {"cpu_percent": "high", "rss": 1}}, "'usage.cpu_percent' must be a finite number"),
    ],
)
def test_bad_fields_are_named_in_the_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunRecord.from_dict(sample().to_dict() | change)


def test_a_missing_field_is_named() -> None:
    data = sample().to_dict()
    del data["last_progress_mono"]
    with pytest.raises(ValueError, match="'last_progress_mono' is missing"):
        RunRecord.from_dict(data)


def test_nan_is_refused_even_though_python_json_accepts_it() -> None:
    text = json.dumps(sample().to_dict()).replace('"eta": 3.0', '"eta": NaN')
    assert "NaN" in text
    data = json.loads(text)
    with pytest.raises(ValueError, match="'eta' must be a finite number"):
        RunRecord.from_dict(data)


@pytest.mark.parametrize(
    ("origin", "text"),
    [
        (Origin("script", path="/home/u/train.py", argv=("--lr", "3")), "train.py --lr 3"),
        (Origin("notebook", path="work/quickstart.ipynb", cell=4), "work/quickstart.ipynb, cell 4"),
        (Origin("notebook"), "notebook"),
        (Origin("interactive"), "interactive"),
    ],
)
def test_origins_describe_themselves_briefly(origin: Origin, text: str) -> None:
    assert origin.describe() == text
