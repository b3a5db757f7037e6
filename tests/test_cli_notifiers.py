"""nbmonitor-watcher notifiers ...: as a user types it, in a script and in a terminal."""

from __future__ import annotations

import sys

import pytest

from nbmonitor.config import NotifierStore
from nbmonitor.repo import Repo

from .helpers import child_env, nbw
from .servers import Answer, HttpRecorder

SECRET = "T0123/B0456/abcdefghijklmnopqrstuvwx"


def add_slack(repo: Repo, url: str, *extra: str) -> str:
    done = nbw(repo, "notifiers", "add", "slack", "--webhook-url", url, "--yes", *extra)
    assert done.returncode == 0, done.stderr
    return NotifierStore(repo).load()[-1].id


def test_add_by_flags_shows_the_result_masked_and_saves_it(repo: Repo) -> None:
    done = nbw(
        repo,
        "notifiers",
        "add",
        "slack",
        "--webhook-url",
        f"https://hooks.slack.com/services/{SECRET}",
        "--events",
        "stalled,finished",
        "--message",
        "{name}: {event}",
        "--template",
        "stalled=STUCK {name}",
        "--yes",
    )
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout
    assert "https://hooks.slack.com/****uvwx" in done.stdout
    (saved,) = NotifierStore(repo).load()
    assert saved.args["webhook_url"].endswith(SECRET)
    assert saved.events == ("stalled", "finished")
    assert saved.templates == {"stalled": "STUCK {name}"}
    assert saved.message == "{name}: {event}"


def test_add_without_a_terminal_needs_yes_and_saves_nothing(repo: Repo) -> None:
    done = nbw(repo, "notifiers", "add", "slack", "--webhook-url", "https://x.org/hook")
    assert done.returncode == 1
    assert "add --yes" in done.stderr
    assert NotifierStore(repo).load() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["slack", "--webhook-url", f"ftp://x.org/{SECRET}"], "webhook_url: ftp://x.org/****uvwx must start"),
        (
            ["workplace", "--group-id", "abc", "--access-token", "t" * 20],
            "group_id: 'abc' is not a numeric id",
        ),
        (["slack", "--webhook-url", "https://x.org/h", "--events", "never"], "unknown event 'never'"),
        (["slack", "--webhook-url", "https://x.org/h", "--group-id", "1"], "slack notifiers have no setting"),
        (["slack", "--webhook-url", "https://x.org/h", "--template", "oops"], "expected EVENT=TEXT"),
        ([], "give the notifier type"),
    ],
)
def test_a_bad_field_is_named_and_nothing_is_saved(repo: Repo, args: list[str], message: str) -> None:
    done = nbw(repo, "notifiers", "add", *args, "--yes")
    assert done.returncode == 1
    assert message in done.stderr
    assert SECRET not in done.stderr
    assert NotifierStore(repo).load() == []


def test_list_masks_secrets_and_shows_the_last_delivery(repo: Repo, http: HttpRecorder) -> None:
    notifier = add_slack(repo, f"{http.url}/services/{SECRET}")
    assert "never" in nbw(repo, "notifiers", "list").stdout
    nbw(repo, "notifiers", "test")
    listing = nbw(repo, "notifiers", "list").stdout
    assert SECRET not in listing
    header, row = listing.splitlines()
    assert header.split() == ["ID", "TYPE", "STATUS", "TARGET", "EVENTS", "LAST", "DELIVERY"]
    assert row.split()[:4] == [
        notifier[:8],
        "slack",
        "enabled",
        "http://127.0.0.1:" + http.url.split(":")[-1] + "/****uvwx",
    ]
    assert "ok" in row
    assert "200 ok" in row


def test_test_sends_now_and_prints_the_answer(repo: Repo, http: HttpRecorder) -> None:
    notifier = add_slack(repo, f"{http.url}/hook")
    done = nbw(repo, "notifiers", "test", notifier[:6])
    assert done.returncode == 0
    assert done.stdout.strip() == f"{notifier[:8]} slack: ok: 200 ok"
    assert "Test message from nbmonitor" in http.requests[0].json()["text"]
    http.default = Answer(404, "no_service")
    failed = nbw(repo, "notifiers", "test")
    assert failed.returncode == 1
    assert "error: HTTP 404 Not Found: no_service" in failed.stdout


def test_each_test_message_has_a_fresh_idempotency_key(repo: Repo, http: HttpRecorder) -> None:
    nbw(repo, "notifiers", "add", "webhook", "--url", f"{http.url}/hook", "--yes")
    for _ in range(2):
        assert nbw(repo, "notifiers", "test").returncode == 0
    keys = [r.headers["Idempotency-Key"] for r in http.requests]
    assert len(set(keys)) == 2
    assert all(key.startswith("test-") for key in keys)


def test_a_logger_test_shows_its_line_and_where_it_went(repo: Repo) -> None:
    # Seen: "ok: logged", and the line nowhere a user could find when a kernel delivered it.
    nbw(repo, "notifiers", "add", "logger", "--yes")
    listed = nbw(repo, "notifiers", "list").stdout
    assert f"{repo.notify_log} and the sender's output" in listed
    done = nbw(repo, "notifiers", "test")
    assert done.returncode == 0
    assert f"ok: logged to {repo.notify_log}: Test message from nbmonitor on " in done.stdout
    assert "TEST Test message from nbmonitor on " in repo.notify_log.read_text()


def test_enable_disable_and_remove_by_prefix(repo: Repo) -> None:
    notifier = add_slack(repo, "https://x.org/hook")
    assert nbw(repo, "notifiers", "disable", notifier[:5]).stdout.startswith(f"disabled {notifier[:8]}")
    assert NotifierStore(repo).load()[0].enabled is False
    assert nbw(repo, "notifiers", "enable", notifier[:5]).returncode == 0
    assert NotifierStore(repo).load()[0].enabled is True
    refused = nbw(repo, "notifiers", "remove", notifier[:5])
    assert (refused.returncode, "add --yes" in refused.stderr) == (1, True)
    assert nbw(repo, "notifiers", "remove", notifier[:5], "--yes").returncode == 0
    assert NotifierStore(repo).load() == []


@pytest.mark.parametrize("command", ["enable", "disable", "remove", "test"])
def test_an_unknown_id_exits_non_zero_with_a_message(repo: Repo, command: str) -> None:
    add_slack(repo, "https://x.org/hook")
    done = nbw(repo, "notifiers", command, "zzz")
    assert done.returncode == 1
    assert "no notifier has an id starting with 'zzz'" in done.stderr


def test_a_corrupt_notifier_file_is_named(repo: Repo) -> None:
    repo.ensure()
    repo.notifiers_file.write_text("{")
    done = nbw(repo, "notifiers", "list")
    assert done.returncode == 1
    assert f"{repo.path / 'notifiers.json'}: not valid JSON" in done.stderr


def test_add_prompts_in_a_terminal_hides_secrets_and_asks_to_confirm(repo: Repo) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "nbmonitor", "--repo", str(repo.path), "notifiers", "add"],
        env=child_env(repo.path),
        encoding="utf-8",
        timeout=20,
    )
    child.expect("Type: ")
    child.sendline("workplace")
    child.expect("Group id: ")
    child.sendline("12x")
    child.expect("is not a numeric id")
    child.expect("Group id: ")
    child.sendline("1234")
    child.expect("Access token: ")
    child.sendline("secret-token-0123456789")
    child.expect(r"Graph API base URL \[https://graph.facebook.com\]: ")
    child.sendline("")
    child.expect(r"Save this notifier\? \[y/N\] ")
    shown = child.before
    child.sendline("y")
    child.expect(pexpect.EOF)
    assert "secret-token-0123456789" not in shown
    assert "****6789" in shown
    (saved,) = NotifierStore(repo).load()
    assert saved.args == {
        "group_id": "1234",
        "access_token": "secret-token-0123456789",
        "base_url": "https://graph.facebook.com",
    }
