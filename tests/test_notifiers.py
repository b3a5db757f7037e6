"""Each notifier type against real local servers: the exact request, errors sorted right, secrets masked."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nbmonitor import templates
from nbmonitor.config import NotifierConfig
from nbmonitor.fields import ConfigError
from nbmonitor.notifiers import TYPES, Message, NotifierError, TransientError
from nbmonitor.repo import Repo

from .servers import Answer, HttpRecorder, SmtpRecorder, free_port

EVENT = templates.SAMPLE
MESSAGE = Message("train-resnet stalled", templates.text_for(EVENT), (EVENT,))
TOKEN = "tok-9f8e7d6c5b4a39281706"


def send(kind: str, args: dict[str, Any], timeout: float = 5.0, message: Message = MESSAGE) -> str:
    return NotifierConfig.create(kind, args).notifier(timeout).send(message)


def test_slack_posts_the_text_to_the_webhook(http: HttpRecorder) -> None:
    answer = send("slack", {"webhook_url": f"{http.url}/services/T0/B0/{TOKEN}"})
    (request,) = http.requests
    assert (request.method, request.path) == ("POST", f"/services/T0/B0/{TOKEN}")
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {"text": MESSAGE.text}
    assert answer == "200 ok"


def test_workplace_posts_message_and_token_to_the_group_feed(http: HttpRecorder) -> None:
    send("workplace", {"group_id": "123456", "access_token": TOKEN, "base_url": http.url})
    (request,) = http.requests
    assert (request.method, request.path) == ("POST", "/123456/feed")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form() == {"message": MESSAGE.text, "formatting": "PLAINTEXT", "access_token": TOKEN}


def test_webhook_posts_event_text_and_run_fields_with_extra_headers(http: HttpRecorder) -> None:
    send("webhook", {"url": f"{http.url}/hooks/nb", "headers": {"Authorization": f"Bearer {TOKEN}"}})
    (request,) = http.requests
    assert request.path == "/hooks/nb"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    body = request.json()
    assert body["event"] == "stalled"
    assert body["text"] == MESSAGE.text
    assert body["title"] == "train-resnet stalled"
    assert body["run"] == templates.fields(EVENT)
    assert body["run"]["steps"] == "1200/5000"
    assert request.headers["Idempotency-Key"] == f"{EVENT.run.id}/{EVENT.key}"


def test_a_digest_has_one_idempotency_key_whatever_the_order_of_its_events(http: HttpRecorder) -> None:
    other = EVENT.__class__(
        "crashed", "end", EVENT.run.with_changes(id="b" * 32), EVENT.at, 1.0, None, "test"
    )
    keys = set()
    for events in [(EVENT, other), (other, EVENT)]:
        send("webhook", {"url": f"{http.url}/hook"}, message=Message("2 events", "two", events))
        keys.add(http.requests[-1].headers["Idempotency-Key"])
    (key,) = keys
    assert key.startswith("digest-")
    assert key != MESSAGE.key
    alone = Message("1 event", "one", (other,))
    assert alone.key == f"{'b' * 32}/end"


def test_discord_posts_content(http: HttpRecorder) -> None:
    send("discord", {"webhook_url": f"{http.url}/api/webhooks/1/{TOKEN}"})
    assert http.requests[0].json() == {"content": MESSAGE.text, "allowed_mentions": {"parse": []}}


def test_teams_posts_title_and_text(http: HttpRecorder) -> None:
    send("teams", {"webhook_url": f"{http.url}/webhookb2/{TOKEN}"})
    assert http.requests[0].json() == {"title": MESSAGE.title, "text": MESSAGE.text}


def test_telegram_posts_to_the_bots_send_message(http: HttpRecorder) -> None:
    send("telegram", {"bot_token": TOKEN, "chat_id": "-100123", "base_url": http.url})
    (request,) = http.requests
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.json() == {"chat_id": "-100123", "text": MESSAGE.text}


def test_ntfy_publishes_json_with_priority_and_token(http: HttpRecorder) -> None:
    send("ntfy", {"server": http.url, "topic": "nb-alerts", "token": TOKEN})
    (request,) = http.requests
    assert request.path == "/"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.json() == {
        "topic": "nb-alerts",
        "title": MESSAGE.title,
        "message": MESSAGE.text,
        "priority": 4,
        "tags": ["stalled"],
    }


def test_apprise_reaches_a_local_json_endpoint(http: HttpRecorder) -> None:
    pytest.importorskip("apprise")
    port = http.url.rsplit(":", 1)[1]
    answer = send("apprise", {"urls": [f"json://127.0.0.1:{port}/apprise"]})
    (request,) = http.requests
    assert request.path == "/apprise"
    assert request.json()["message"] == MESSAGE.text
    assert request.json()["title"] == MESSAGE.title
    assert answer == "sent to 1 Apprise URL(s)"


def test_email_is_sent_through_a_real_smtp_server_with_login() -> None:
    smtp = SmtpRecorder(user="nb", password="pw-secret")
    try:
        answer = send(
            "email",
            {
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "security": "none",
                "username": "nb",
                "password": "pw-secret",
                "sender": "nbmonitor@example.org",
                "to": "ops@example.org, me@example.org",
            },
        )
    finally:
        smtp.close()
    assert answer == "sent to ops@example.org, me@example.org"
    (mail,) = smtp.messages
    assert mail["Subject"] == MESSAGE.title
    assert mail["From"] == "nbmonitor@example.org"
    assert mail.get_content().strip() == MESSAGE.text
    assert smtp.envelopes == [("nbmonitor@example.org", ["ops@example.org", "me@example.org"])]


def test_a_refused_smtp_login_is_permanent_and_hides_the_password() -> None:
    smtp = SmtpRecorder(user="nb", password="right-password")
    try:
        args = {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "security": "none", "username": "nb"}
        args |= {"password": "wrong-password", "sender": "a@example.org", "to": "b@example.org"}
        with pytest.raises(NotifierError, match="SMTP login refused: 535") as info:
            send("email", args)
    finally:
        smtp.close()
    assert not isinstance(info.value, TransientError)
    assert "wrong-password" not in str(info.value)


def test_the_logger_notifier_writes_one_line(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.ensure()
    notifier = NotifierConfig.create("logger").notifier(5.0, repo)
    assert notifier.target() == f"{repo.notify_log} and the sender's output"
    with caplog.at_level(logging.INFO, "nbmonitor"):
        assert notifier.send(MESSAGE) == f"logged to {repo.notify_log}: {MESSAGE.text}"
    assert [r.getMessage() for r in caplog.records] == [f"NOTIFY {MESSAGE.text}"]
    (line,) = repo.notify_log.read_text().splitlines()
    assert line.endswith(f" STALLED {MESSAGE.text}")
    assert repo.notify_log.stat().st_mode & 0o777 == 0o600


# -- what comes back from an endpoint, and what goes where ---------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("kind", ["webhook", "slack", "ntfy"])
def test_a_redirect_to_another_host_is_an_error_naming_it_and_nothing_goes_there(
    http: HttpRecorder, code: int, kind: str
) -> None:
    # Seen: urllib followed it as a GET without the body, reported "delivered", and sent the
    # bearer headers of webhook and ntfy to the other host.
    elsewhere = HttpRecorder()
    try:
        http.default = Answer(code, "moved", {"Location": f"{elsewhere.url}/new/{TOKEN}"})
        every: dict[str, dict[str, Any]] = {
            "webhook": {"url": f"{http.url}/hook", "headers": {"Authorization": f"Bearer {TOKEN}"}},
            "slack": {"webhook_url": f"{http.url}/services/T/B/X"},
            "ntfy": {"server": http.url, "topic": "runs", "token": TOKEN},
        }
        args = every[kind]
        with pytest.raises(NotifierError) as error:
            send(kind, args)
        assert not isinstance(error.value, TransientError)
        assert f"HTTP {code}" in str(error.value)
        assert f"redirect to http://127.0.0.1:{elsewhere.server.server_address[1]}/" in str(error.value)
        assert TOKEN not in str(error.value)
        assert elsewhere.requests == []
        assert len(http.requests) == 1
    finally:
        elsewhere.close()


@pytest.mark.parametrize("code", [307, 308])
def test_a_307_or_308_to_the_same_host_is_followed_with_the_body(http: HttpRecorder, code: int) -> None:
    http.script = [Answer(code, "moved", {"Location": "/v2/hook"})]
    answer = send("webhook", {"url": f"{http.url}/hook", "headers": {"Authorization": f"Bearer {TOKEN}"}})
    assert answer == "200 ok"
    first, second = http.requests
    assert (first.path, second.path) == ("/hook", "/v2/hook")
    assert second.method == "POST"
    assert second.body == first.body
    assert second.headers["Authorization"] == f"Bearer {TOKEN}"


def test_redirects_in_a_loop_end_with_an_error(http: HttpRecorder) -> None:
    http.default = Answer(307, "again", {"Location": "/hook"})
    with pytest.raises(NotifierError, match="more than 3 redirects"):
        send("webhook", {"url": f"{http.url}/hook"})
    assert len(http.requests) == 4


HOSTILE = "<!channel> <http://evil.example|click me> & co\n2026-01-01 FINISHED forged [run 00000000]"


def test_run_text_is_data_in_slack_and_discord_never_markup(http: HttpRecorder) -> None:
    message = Message(HOSTILE, HOSTILE, (EVENT,))
    send("slack", {"webhook_url": f"{http.url}/services/T/B/X"}, message=message)
    send("discord", {"webhook_url": f"{http.url}/api/webhooks/1/x"}, message=message)
    send("workplace", {"group_id": "1", "access_token": TOKEN, "base_url": http.url}, message=message)
    slack, discord, workplace = http.requests
    assert slack.json()["text"] == (
        "&lt;!channel&gt; &lt;http://evil.example|click me&gt; &amp; co"
        "\n2026-01-01 FINISHED forged [run 00000000]"
    )
    assert discord.json()["allowed_mentions"] == {"parse": []}  # no @everyone, roles or users
    assert workplace.form()["formatting"] == "PLAINTEXT"  # shown as written, < and & included
    assert workplace.form()["message"] == HOSTILE


def test_a_workplace_mention_in_run_text_is_defused(http: HttpRecorder) -> None:
    message = Message("x", "stalled: @[100012345] look", (EVENT,))
    send("workplace", {"group_id": "1", "access_token": TOKEN, "base_url": http.url}, message=message)
    assert http.requests[0].form()["message"] == "stalled: @\u200b[100012345] look"


def test_an_email_subject_survives_a_newline_in_a_runs_name() -> None:
    server = SmtpRecorder()
    try:
        args = {"smtp_host": "127.0.0.1", "smtp_port": server.port, "security": "none"}
        args |= {"sender": "nb@example.org", "to": "me@example.org"}
        title = "train\nBcc: victim@example.org\r\nX-Evil: 1 stalled"
        send("email", args, message=Message(title, "text", (EVENT,)))
        (mail,) = server.messages
        assert mail["Subject"] == "train\\nBcc: victim@example.org\\r\\nX-Evil: 1 stalled"
        assert mail["Bcc"] is None
        assert mail["X-Evil"] is None
        assert server.envelopes == [("nb@example.org", ["me@example.org"])]
    finally:
        server.close()


PASSWORD = "s3cret-pa55-word"


@pytest.mark.parametrize(
    ("kind", "field"),
    [("webhook", "url"), ("slack", "webhook_url"), ("ntfy", "server"), ("telegram", "base_url")],
)
def test_credentials_in_a_url_become_basic_auth_and_are_never_shown(
    http: HttpRecorder, kind: str, field: str
) -> None:
    url = http.url.replace("http://", f"http://bob:{PASSWORD}@")
    args: dict[str, Any] = {
        "webhook": {"url": f"{url}/hook"},
        "slack": {"webhook_url": f"{url}/services/T/B/X"},
        "ntfy": {"server": url, "topic": "runs"},
        "telegram": {"base_url": url, "bot_token": TOKEN, "chat_id": "42"},
    }[kind]
    config = NotifierConfig.create(kind, args)
    config.notifier(5.0).send(MESSAGE)
    (request,) = http.requests
    assert (
        request.headers["Authorization"] == "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    )
    assert "bob" not in request.path
    shown = [repr(config), config.target(), *config.shown_args().values()]
    assert not [text for text in shown if PASSWORD in text]
    http.default = Answer(500, f"echo {PASSWORD}")
    with pytest.raises(TransientError) as error:
        config.notifier(5.0).send(MESSAGE)
    assert PASSWORD not in str(error.value)


def test_a_refused_connection_to_a_url_with_credentials_never_shows_them() -> None:
    url = f"http://bob:{PASSWORD}@127.0.0.1:{free_port()}/hook"
    with pytest.raises(TransientError) as error:
        send("webhook", {"url": url})
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize(
    ("answer", "transient", "retry_after"),
    [
        (Answer(500, "boom"), True, None),
        (Answer(503, "down"), True, None),
        (Answer(429, "slow down", {"Retry-After": "7"}), True, 7.0),
        (Answer(404, "no_team"), False, None),
        (Answer(403, "invalid_token"), False, None),
    ],
)
def test_http_failures_are_sorted_into_transient_and_permanent(
    http: HttpRecorder, answer: Answer, transient: bool, retry_after: float | None
) -> None:
    http.default = answer
    with pytest.raises(NotifierError) as info:
        send("slack", {"webhook_url": f"{http.url}/x"})
    assert isinstance(info.value, TransientError) is transient
    assert f"HTTP {answer.status}" in str(info.value)
    assert answer.body in str(info.value)
    if transient:
        assert info.value.retry_after == retry_after  # type: ignore[attr-defined]


RATE_LIMITS = {  # what each service answers when it wants us to wait
    "telegram": ({"ok": False, "error_code": 429, "parameters": {"retry_after": 35}}, 35.0),
    "discord": ({"message": "You are being rate limited.", "retry_after": 2.5, "global": False}, 2.5),
}


@pytest.mark.parametrize("kind", RATE_LIMITS)
def test_a_rate_limit_that_says_how_long_in_its_body_is_waited_for(http: HttpRecorder, kind: str) -> None:
    body, wait = RATE_LIMITS[kind]
    http.default = Answer(429, json.dumps(body))  # no Retry-After header: only the body says
    args: dict[str, Any] = {
        "telegram": {"bot_token": TOKEN, "chat_id": "42", "base_url": http.url},
        "discord": {"webhook_url": f"{http.url}/api/webhooks/1/x"},
    }[kind]
    with pytest.raises(TransientError) as error:
        send(kind, args)
    assert error.value.retry_after == wait
    http.default = Answer(400, json.dumps({"ok": False, "description": "chat not found"}))
    with pytest.raises(NotifierError) as refused:
        send(kind, args)
    assert not isinstance(refused.value, TransientError)


def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(TransientError, match=r"cannot reach http://127\.0\.0\.1"):
        send("slack", {"webhook_url": f"http://127.0.0.1:{free_port()}/hook"})


def test_a_server_that_does_not_answer_times_out_as_transient(http: HttpRecorder) -> None:
    http.default = Answer(delay=2.0)
    with pytest.raises(TransientError, match="timed out"):
        send("slack", {"webhook_url": f"{http.url}/slow"}, timeout=0.3)


def test_secrets_echoed_by_a_server_are_masked_in_errors(http: HttpRecorder) -> None:
    http.default = Answer(404, f"no such bot {TOKEN}")
    with pytest.raises(NotifierError) as info:
        send("telegram", {"bot_token": TOKEN, "chat_id": "5", "base_url": http.url})
    assert TOKEN not in str(info.value)
    assert f"****{TOKEN[-4:]}" in str(info.value)


def test_secrets_never_show_in_a_repr_or_a_target() -> None:
    config = NotifierConfig.create("slack", {"webhook_url": f"https://hooks.slack.com/services/{TOKEN}"})
    assert TOKEN not in repr(config)
    assert TOKEN not in config.target()
    assert config.target() == f"https://hooks.slack.com/****{TOKEN[-4:]}"
    headers = NotifierConfig.create("webhook", {"url": "https://x.org/h", "headers": [f"X-Key: {TOKEN}"]})
    assert TOKEN not in repr(headers)
    assert TOKEN not in str(headers.shown_args())


@pytest.mark.parametrize(
    ("kind", "args", "field", "message"),
    [
        ("slack", {}, "webhook_url", "Webhook URL is required"),
        (
            "slack",
            {"webhook_url": f"ftp://hooks.example.org/{TOKEN}"},
            "webhook_url",
            "must start with https",
        ),
        ("slack", {"webhook_url": "https:///no-host"}, "webhook_url", "has no valid host"),
        ("workplace", {"group_id": "12ab", "access_token": TOKEN}, "group_id", "'12ab' is not a numeric id"),
        ("email", {"smtp_host": "h", "sender": "me", "to": "a@b.org"}, "sender", "'me' is not an e-mail"),
        ("email", {"smtp_host": "h", "sender": "a@b.org", "to": "x@y"}, "to", "'x@y' is not an e-mail"),
        (
            "email",
            {"smtp_host": "h", "smtp_port": 70000, "sender": "a@b.org", "to": "c@d.org"},
            "smtp_port",
            "70000 is not a port number",
        ),
        ("ntfy", {"topic": "has space"}, "topic", "is not an ntfy topic"),
        ("telegram", {"bot_token": TOKEN, "chat_id": "me"}, "chat_id", "is not a chat id"),
        ("webhook", {"url": "https://x.org", "headers": ["Bad Header: v"]}, "headers", "not a valid header"),
        ("slack", {"webhook_url": "https://x.org/h", "group_id": "1"}, "group_id", "have no setting"),
        ("pager", {}, "type", "unknown notifier type 'pager'"),
    ],
)
def test_validation_names_the_field_and_never_shows_a_secret(
    kind: str, args: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        NotifierConfig.create(kind, args)
    assert info.value.field == field
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ("stalled,exploded", "unknown event 'exploded'"),
        ([], "at least one event"),
        (3, "list of event names"),
    ],
)
def test_events_are_checked(events: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NotifierConfig.create("logger", events=events)


def test_default_events_leave_finished_and_interrupted_opt_in() -> None:
    config = NotifierConfig.create("logger")
    assert config.events == ("stalled", "crashed", "lost", "failed", "recovered", "restarting", "gave-up")
    assert not config.wants("finished")
    assert NotifierConfig.create("logger", events="finished").wants("finished")


def test_a_notifier_saved_with_the_defaults_of_before_restarts_gets_today_s() -> None:
    # Else a restarted job's crash, told as restarting, would go untold to it.
    before = ["stalled", "crashed", "lost", "failed", "recovered"]
    loaded = NotifierConfig.from_dict({"type": "logger", "events": before})
    assert loaded.wants("restarting")
    assert loaded.wants("gave-up")
    chosen = NotifierConfig.from_dict({"type": "logger", "events": ["stalled", "crashed"]})
    assert not chosen.wants("restarting")  # a choice of one's own stays as it was


def test_every_type_has_a_label_and_fields_with_flags() -> None:
    assert set(TYPES) == {
        "logger", "slack", "workplace", "webhook", "discord", "teams", "telegram", "ntfy", "email", "apprise",
    }  # fmt: skip
    for cls in TYPES.values():
        assert cls.label
        assert all(f.flag.startswith("--") for f in cls.fields)
