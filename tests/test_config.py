"""The notifier file: 0600 from the start, validated on every write, safe with hand edits."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from typing import Any

import pytest

from nbmonitor.config import NotifierConfig, NotifierStore, UnknownNotifierError
from nbmonitor.errors import CorruptRecordError
from nbmonitor.fields import ConfigError
from nbmonitor.repo import Repo

SLACK = {"webhook_url": "https://hooks.slack.com/services/T0/B0/abcdefghijklmnop"}


def test_the_file_is_private_from_the_first_write(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a umask that would leave anything world-readable, look at every file as it is created,
    # before a byte is written to it.
    created: list[int] = []
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real(*args, **kwargs)
        created.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    umask = os.umask(0)
    try:
        store = NotifierStore(repo)
        added = store.add(NotifierConfig.create("slack", SLACK))
        store.update(added.id, enabled=False)
    finally:
        os.umask(umask)
    assert created == [0o600, 0o600]  # the add, then the update: each a new file, private at once
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(repo.path.stat().st_mode) == 0o700
    assert json.loads(store.path.read_text())["format"] == 1


def test_what_is_added_reads_back(repo: Repo) -> None:
    store = NotifierStore(repo)
    added = store.add(NotifierConfig.create("slack", SLACK, events="stalled,finished", message="{name}!"))
    assert store.load() == [added]
    assert store.get(added.id[:6]) == added


def test_updates_are_validated_before_anything_is_written(repo: Repo) -> None:
    store = NotifierStore(repo)
    added = store.add(NotifierConfig.create("slack", SLACK))
    before = store.path.read_bytes()
    with pytest.raises(ConfigError, match="unknown event 'soon'"):
        store.update(added.id, events=("soon",))
    assert store.path.read_bytes() == before
    assert store.update(added.id[:4], enabled=False).enabled is False
    assert store.load()[0].enabled is False


def test_ids_are_found_by_unique_prefix(repo: Repo) -> None:
    store = NotifierStore(repo)
    one = store.add(NotifierConfig.create("logger", id="aaaa1111-0000-4000-8000-000000000000"))
    store.add(NotifierConfig.create("logger", id="aaaa2222-0000-4000-8000-000000000000"))
    assert store.get("aaaa1") == one
    with pytest.raises(UnknownNotifierError, match="matches 2 notifiers"):
        store.get("aaaa")
    with pytest.raises(UnknownNotifierError, match="no notifier has an id starting with 'b'"):
        store.remove("b")
    with pytest.raises(UnknownNotifierError):
        store.get("")


def test_concurrent_adds_under_the_lock_lose_nothing(repo: Repo) -> None:
    store = NotifierStore(repo)
    threads = [
        threading.Thread(target=lambda: NotifierStore(repo).add(NotifierConfig.create("logger")))
        for _ in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load()) == 12


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": 1}', "expected"),
        ('{"format": 9, "notifiers": []}', "format 9 is not supported"),
        (
            '{"format": 1, "notifiers": [{"type": "pager"}]}',
            "notifier 1: type: unknown notifier type 'pager'",
        ),
        ('{"format": 1, "notifiers": [{"type": "slack", "args": {}}]}', "notifier 1: webhook_url: "),
        ('{"format": 1, "notifiers": [{"type": "logger", "args": []}]}', "args: must be an object"),
        ('{"format": 1, "notifiers": [{"type": "logger", "enabled": "yes"}]}', "enabled: must be true"),
    ],
)
def test_a_hand_edited_file_gets_an_error_naming_it_and_the_problem(
    repo: Repo, content: str, message: str
) -> None:
    store = NotifierStore(repo)
    repo.ensure()
    store.path.write_text(content)
    with pytest.raises(CorruptRecordError, match=message) as info:
        store.load()
    assert info.value.path == str(store.path)


def test_load_if_changed_reloads_only_after_a_change(repo: Repo) -> None:
    store, other = NotifierStore(repo), NotifierStore(repo)
    assert store.load_if_changed() == []
    assert store.load_if_changed() is None
    other.add(NotifierConfig.create("logger"))
    changed = store.load_if_changed()
    assert changed is not None
    assert len(changed) == 1
    assert store.load_if_changed() is None
