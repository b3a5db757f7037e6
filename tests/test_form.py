"""nbmonitor.configure(): the form built in Python, fields filled, buttons clicked."""

from __future__ import annotations

import html
import json
import stat
from collections.abc import Iterator
from typing import Any

import pytest

import nbmonitor
from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.form import NotifierForm, Row, SecretUrl
from nbmonitor.repo import Repo

from .helpers import nbw
from .servers import Answer, HttpRecorder

SECRET = "xoxb-form-secret-0123456789"


@pytest.fixture
def form(repo: Repo) -> NotifierForm:
    return nbmonitor.configure(repo)  # type: ignore[no-any-return]  # configure() is typed loosely for lazy import


def widgets(root: Any) -> Iterator[Any]:
    yield root
    for child in getattr(root, "children", ()):
        yield from widgets(child)


def shown_text(form: NotifierForm) -> str:
    """Everything the browser receives: values, placeholders, descriptions."""
    parts = []
    for widget in widgets(form.widget):
        for name in ("value", "placeholder", "description"):
            parts.append(str(getattr(widget, name, "")))
    return "\n".join(parts)


def add_slack(form: NotifierForm, url: str) -> NotifierConfig:
    form.editor.type.value = "slack"
    form.editor.inputs["webhook_url"].value = url
    saved = form.editor.submit()
    assert saved is not None, form.editor.status.value
    return saved


def row(form: NotifierForm, config: NotifierConfig) -> Row:
    return next(r for r in form.rows if r.config.id == config.id)


def test_it_says_which_repo_it_edits_and_creates_it(tmp_path: Any) -> None:
    path = tmp_path / "new" / "repo"
    form = nbmonitor.configure(path)
    assert path.is_dir()
    assert str(path / "notifiers.json") in form.header.value
    assert "No notifiers yet" in form.message.value


def test_only_the_chosen_types_fields_appear_and_secrets_are_password_fields(form: NotifierForm) -> None:
    form.editor.type.value = "workplace"
    assert list(form.editor.inputs) == ["group_id", "access_token", "base_url"]
    assert type(form.editor.inputs["access_token"]).__name__ == "Password"
    assert type(form.editor.inputs["group_id"]).__name__ == "Text"
    form.editor.type.value = "email"
    assert type(form.editor.inputs["security"]).__name__ == "Dropdown"
    assert "smtp_host" in form.editor.inputs
    assert "group_id" not in form.editor.inputs


def test_saving_writes_the_shared_file_and_the_cli_lists_it(form: NotifierForm, repo: Repo) -> None:
    saved = add_slack(form, f"https://hooks.slack.com/services/{SECRET}")
    store = NotifierStore(repo)
    assert store.load() == [saved]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    listing = nbw(repo, "notifiers", "list").stdout
    assert saved.id[:8] in listing
    assert SECRET not in listing
    assert SECRET not in shown_text(form)
    assert "****6789" in shown_text(form)


def test_a_bad_field_shows_its_error_inline_and_nothing_is_written(form: NotifierForm, repo: Repo) -> None:
    form.editor.type.value = "workplace"
    form.editor.inputs["group_id"].value = "12ab"
    form.editor.inputs["access_token"].value = SECRET
    form.editor.inputs["base_url"].value = "ftp://graph.example.org"
    for box in form.editor.events.values():
        box.value = False
    assert form.editor.submit() is None
    assert "'12ab' is not a numeric id" in html.unescape(form.editor.errors["group_id"].value)
    assert "must start with https" in form.editor.errors["base_url"].value
    assert "choose at least one event" in form.editor.events_error.value
    assert form.editor.errors["access_token"].value == ""
    assert "Not saved" in form.editor.status.value
    assert not NotifierStore(repo).path.exists()
    assert SECRET not in shown_text(form).replace(form.editor.inputs["access_token"].value, "")
    # The fields in error are outlined, and each error goes as soon as its field is edited.
    assert form.editor.inputs["group_id"].layout.border == "1px solid #c62828"
    assert form.editor.inputs["access_token"].layout.border is None
    form.editor.inputs["group_id"].value = "1234"
    assert form.editor.inputs["group_id"].layout.border is None
    assert form.editor.errors["group_id"].value == ""
    assert "must start with https" in form.editor.errors["base_url"].value  # not edited: still wrong
    assert "Not saved" in form.editor.status.value
    form.editor.inputs["base_url"].value = "https://graph.example.org"
    form.editor.events["stalled"].value = True
    assert form.editor.events_error.value == ""
    assert form.editor.status.value == ""  # every error was dealt with: the "Not saved" goes too


def test_a_webhook_url_shows_itself_masked_as_it_is_typed_and_whole_on_show(form: NotifierForm) -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXX1234"
    form.editor.type.value = "slack"
    typed = form.editor.inputs["webhook_url"]
    assert isinstance(typed, SecretUrl)
    typed.value = url
    assert "→ https://hooks.slack.com/****1234" in html.unescape(typed.masked.value)
    assert typed.hidden.value == url  # typed as a password: dots on the screen
    assert typed.hidden in typed.children[0].children
    typed.reveal.value = True
    assert typed.shown in typed.children[0].children  # the whole URL, readable
    assert typed.shown.value == url
    assert typed.masked.value == ""
    typed.shown.value = url.replace("slack", "slak")  # a typo seen and fixed there is the value
    assert typed.value == url.replace("slack", "slak")
    typed.reveal.value = False
    assert "hooks.slak.com" in typed.masked.value


def test_templates_have_a_live_preview_and_are_saved_per_event(form: NotifierForm, repo: Repo) -> None:
    editor = form.editor
    editor.template_event.value = "stalled"
    editor.template.value = "STUCK {name} at {steps} {unknown}"
    assert "STUCK train-resnet at 1200/5000 {unknown}" in editor.preview.value
    editor.template_event.value = "every event (message)"
    editor.template.value = "{name}: {event}"
    assert "train-resnet: stalled" in editor.preview.value
    editor.template_event.value = "stalled"
    assert editor.template.value == "STUCK {name} at {steps} {unknown}"
    saved = add_slack(form, "https://hooks.slack.com/services/x")
    assert saved.templates == {"stalled": "STUCK {name} at {steps} {unknown}"}
    assert saved.message == "{name}: {event}"


def test_send_test_sends_a_real_message_and_shows_the_answer(form: NotifierForm, http: HttpRecorder) -> None:
    saved = add_slack(form, f"{http.url}/hook")
    line = row(form, saved)
    line.test.click()
    assert line.test_thread is not None
    line.test_thread.join(15)
    assert "test: ok: 200 ok" in line.result.value
    assert "Test message from nbmonitor" in http.requests[0].json()["text"]
    http.default = Answer(404, "no_service")
    line.test.click()
    assert line.test_thread is not None
    line.test_thread.join(15)
    assert "test: error: HTTP 404 Not Found: no_service" in line.result.value
    form.refresh()
    assert "last delivery: error" in row(form, saved).result.value


def test_the_switch_enables_and_disables(form: NotifierForm, repo: Repo) -> None:
    saved = add_slack(form, "https://hooks.slack.com/services/x")
    row(form, saved).enabled.value = False
    assert NotifierStore(repo).get(saved.id).enabled is False
    row(form, saved).enabled.value = True
    assert NotifierStore(repo).get(saved.id).enabled is True


def test_remove_asks_first(form: NotifierForm, repo: Repo) -> None:
    saved = add_slack(form, "https://hooks.slack.com/services/x")
    line = row(form, saved)
    line.remove.click()
    sure, _, keep = line.confirm.children
    assert "Sure?" in sure.value
    keep.click()
    assert line.confirm.children == ()
    assert len(NotifierStore(repo).load()) == 1
    line.remove.click()
    line.confirm.children[1].click()
    assert NotifierStore(repo).load() == []
    assert form.rows == []


def test_editing_keeps_secrets_unless_retyped(form: NotifierForm, repo: Repo) -> None:
    saved = add_slack(form, f"https://hooks.slack.com/services/{SECRET}")
    row(form, saved).edit.click()
    editor = form.editor
    assert editor.inputs["webhook_url"].value == ""
    assert editor.inputs["webhook_url"].placeholder == "unchanged (https://hooks.slack.com/****6789)"
    editor.events["finished"].value = True
    assert editor.submit() is not None
    (again,) = NotifierStore(repo).load()
    assert again.id == saved.id
    assert again.args == saved.args
    assert "finished" in again.events


def test_refresh_shows_changes_made_with_the_cli(form: NotifierForm, repo: Repo) -> None:
    assert form.rows == []
    added = nbw(repo, "notifiers", "add", "ntfy", "--topic", "runs", "--yes")
    assert added.returncode == 0
    form.refresh_button.click()
    (line,) = form.rows
    assert line.config.type == "ntfy"
    assert "https://ntfy.sh/runs" in line.summary.value


def test_a_corrupt_file_is_shown_not_raised(form: NotifierForm, repo: Repo) -> None:
    NotifierStore(repo).path.write_text(json.dumps({"format": 1, "notifiers": [{"type": "pager"}]}))
    form.refresh()
    assert "unknown notifier type 'pager'" in html.unescape(form.message.value)
    assert form.rows == []
