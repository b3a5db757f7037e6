"""Notifiers: one small class per service, and the one HTTP seam they share.

Each class names its fields (which drive validation, masking, the CLI flags
and the configure() form) and turns a Message into one request. ``_Http``
owns timeouts and the decision every sender needs: a failure that may pass
(connection refused, timeout, 5xx, 429) raises TransientError and is
retried; any other is a NotifierError, recorded and not retried.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from ._format import clip, one_line
from .errors import NbmonitorError
from .events import Event
from .fields import Field, mask, mask_url, same_origin, show_url, split_credentials
from .repo import Repo
from .templates import fields as template_fields

__all__ = ["TYPES", "Message", "Notifier", "NotifierError", "TransientError"]

log = logging.getLogger("nbmonitor.notify")

DEFAULT_TIMEOUT = 10.0
_ANSWER_MAX = 300


class NotifierError(NbmonitorError):
    """Sending failed for good (a 404, a rejected token, a bad address): not retried."""


class TransientError(NotifierError):
    """Sending failed for now (endpoint down, timeout, 5xx, 429): retried with backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Message:
    """What one send carries: a title, the text, and the event(s) behind it.

    ``kind`` is "digest" for several events and "test" for a test message.
    """

    title: str
    text: str
    events: tuple[Event, ...]
    #: The key of this message when it is not derived from its events (a test message).
    idempotency_key: str | None = None

    @property
    def kind(self) -> str:
        return self.events[0].kind if len(self.events) == 1 else "digest"

    @property
    def key(self) -> str:
        """The same for every attempt to send this message: ``<run id>/<event key>``, or for a
        digest a hash of those, so a receiver can drop a retry it has already seen."""
        if self.idempotency_key is not None:
            return self.idempotency_key
        keys = sorted(f"{e.subject}/{e.key}" for e in self.events)
        if len(keys) == 1:
            return keys[0]
        return "digest-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]


# -- the notifiers ------------------------------------------------------------


class Notifier:
    """A configured destination; subclasses set ``type``, ``fields`` and ``send``."""

    type: ClassVar[str]
    label: ClassVar[str]
    fields: ClassVar[tuple[Field, ...]] = ()
    #: Lines of a run's log tail its messages quote (``{log_tail}``): chat keeps it short.
    tail_lines: ClassVar[int] = 5

    def __init__(
        self, args: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT, repo: Repo | None = None
    ) -> None:
        self.args = dict(args)
        self.timeout = timeout
        self.repo = repo  # the repo it sends from

    def send(self, message: Message) -> str:
        """Deliver; return what the endpoint answered. Raises NotifierError or TransientError."""
        raise NotImplementedError

    def target(self) -> str:
        """Where messages go, secrets masked."""
        shown = [f.show(self.args.get(f.name)) for f in self.fields if f.required]
        return " ".join(s for s in shown if s)

    def secrets(self) -> list[str]:
        """Every secret value, to scrub from any text that could be shown: secret fields, and
        the password of any URL that holds one."""
        found: list[str] = []
        for f in self.fields:
            value = self.args.get(f.name)
            if not value:
                continue
            if f.kind in ("url", "secret_url"):
                credentials = split_credentials(str(value))[1]
                if credentials is not None:
                    found.append(credentials[1])
            if not f.secret:
                continue
            if isinstance(value, Mapping):
                found += [str(v) for v in value.values()]
            elif isinstance(value, list | tuple):
                found += [str(v) for v in value]
            else:
                found.append(str(value))
        return [s for s in found if len(s) >= 4]

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, mask(secret))
            quoted = urllib.parse.quote(secret, safe="")
            if quoted != secret:
                text = text.replace(quoted, mask(secret))
        return text


class _Http(Notifier):
    """POSTs with a timeout, and sorts failures into transient and permanent.

    A redirect is an answer too: a POST is re-sent, body and all, only for a 307 or 308 to the
    same scheme, host and port; any other redirect is a permanent error naming where the
    endpoint moved, so nothing (a bearer header, a token in the body) goes to another host.
    Credentials in a URL (``https://user:password@host/``) become a basic-auth header.
    """

    MAX_REDIRECTS = 3

    def post(
        self,
        url: str,
        *,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            content_type = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        sent = {"Content-Type": content_type, "User-Agent": "nbmonitor", **(headers or {})}
        url, credentials = split_credentials(url)
        if credentials is not None and not any(k.lower() == "authorization" for k in sent):
            token = base64.b64encode(":".join(credentials).encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        for _ in range(self.MAX_REDIRECTS + 1):
            moved = self._post_once(url, data, sent)
            if isinstance(moved, str):
                return moved
            code, location = moved
            if code in (307, 308) and same_origin(url, location):
                url = location
                continue
            raise NotifierError(
                self.scrub(
                    f"HTTP {code}: the endpoint answered with a redirect to {mask_url(location)}; "
                    "nothing was sent there. Update the notifier's URL"
                )
            )
        raise NotifierError(self.scrub(f"more than {self.MAX_REDIRECTS} redirects from {mask_url(url)}"))

    def _post_once(self, url: str, data: bytes, headers: Mapping[str, str]) -> str | tuple[int, str]:
        """The answer's text, or (status, absolute location) of a redirect."""
        request = urllib.request.Request(url, data=data, method="POST", headers=dict(headers))
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                body = response.read(_ANSWER_MAX * 4)
                return self.scrub(f"{response.status} {_short(body)}".strip())
        except urllib.error.HTTPError as e:
            location = e.headers.get("Location") if e.headers else None
            if 300 <= e.code < 400 and location:
                return e.code, urllib.parse.urljoin(url, location)
            raise self.refused(e, e.read(_ANSWER_MAX * 4)) from None
        except urllib.error.URLError as e:
            raise TransientError(self.scrub(f"cannot reach {mask_url(url)}: {e.reason}")) from None
        except (TimeoutError, OSError) as e:
            raise TransientError(self.scrub(f"no answer from {mask_url(url)}: {e}")) from None
        except ValueError as e:  # http.client's InvalidURL and the like
            raise NotifierError(
                self.scrub(f"{mask_url(url)} is not a URL this notifier can post to: {e}")
            ) from None

    def refused(self, answer: urllib.error.HTTPError, body: bytes) -> NotifierError:
        """What a failed answer means, as this service answers: TransientError (retried) for
        what may pass, 408, 429 and 5xx, honouring Retry-After; NotifierError for the rest.
        A transport whose service says more (in its body) overrides this."""
        text = self.scrub(f"HTTP {answer.code} {answer.reason}: {_short(body)}".rstrip(": "))
        if answer.code in (408, 429) or answer.code >= 500:
            return TransientError(text, _retry_after(answer.headers.get("Retry-After")))
        return NotifierError(text)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand every redirect back to _Http.post as the HTTPError it is, instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def _slack_text(text: str) -> str:
    """Text as Slack shows it literally: ``&``, ``<`` and ``>`` escaped, so nothing in a run's
    name or error becomes a link, a mention or ``<!channel>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(body: bytes) -> str:
    """An endpoint's answer, as one short line."""
    return clip(" ".join(body.decode("utf-8", "replace").split()), _ANSWER_MAX)


def _json_field(body: bytes, *path: str) -> float | None:
    """A number at ``path`` in a JSON answer, if there is one."""
    try:
        value: Any = json.loads(body)
        for name in path:
            value = value[name]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return max(0.0, float(value)) if ok else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_WEBHOOK_URL = Field("webhook_url", "Webhook URL", "secret_url")


class LoggerNotifier(Notifier):
    type = "logger"
    tail_lines = 0  # one line per event: the tail is in `nbmonitor-watcher logs RUN`
    label = "Log line (in the repo's notify.log, or a file of your choice, and the sender's output)"
    fields = (Field("file", "Write to this file instead of the repo's notify.log", "text", required=False),)

    def send(self, message: Message) -> str:
        line = one_line(message.text)
        log.info("NOTIFY %s", line)
        path = self._path()
        if path is None:
            return f"logged: {line}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message.kind.upper()} {line}\n")
        except OSError as e:
            raise TransientError(f"cannot append to {path}: {e.strerror}") from None
        return f"logged to {path}: {line}"

    def _path(self) -> str | None:
        chosen = self.args.get("file")
        if chosen:
            return os.path.expanduser(str(chosen))
        return None if self.repo is None else str(self.repo.notify_log)

    def target(self) -> str:
        path = self._path()
        return f"{path} and the sender's output" if path else "the sender's output"


class SlackNotifier(_Http):
    type = "slack"
    label = "Slack (incoming webhook; Mattermost and other Slack-compatible endpoints too)"
    fields = (_WEBHOOK_URL,)

    def send(self, message: Message) -> str:
        return self.post(self.args["webhook_url"], json_body={"text": _slack_text(message.text)})


class WorkplaceNotifier(_Http):
    type = "workplace"
    label = "Workplace from Meta (group feed)"
    fields = (
        Field("group_id", "Group id", "digits"),
        Field("access_token", "Access token", "secret"),
        Field("base_url", "Graph API base URL", "url", required=False, default="https://graph.facebook.com"),
    )

    def send(self, message: Message) -> str:
        # Plain text, shown as written; its one markup there, "@[id]" mentions, is defused.
        text = message.text.replace("@[", "@\u200b[")
        form = {"message": text, "formatting": "PLAINTEXT", "access_token": self.args["access_token"]}
        return self.post(f"{self.args['base_url']}/{self.args['group_id']}/feed", form=form)

    def target(self) -> str:
        return f"group {self.args.get('group_id')} via {mask_url(str(self.args.get('base_url')))}"


_BEARER = "'Authorization: Bearer ...'"


class WebhookNotifier(_Http):
    type = "webhook"
    tail_lines = 20
    label = "Webhook (JSON POST to any URL)"
    fields = (
        Field("url", "URL", "secret_url"),
        Field(
            "headers",
            "Extra headers",
            "headers",
            required=False,
            default={},
            help="'Authorization: Bearer ...'",
        ),
    )

    def send(self, message: Message) -> str:
        body: dict[str, Any] = {"event": message.kind, "title": message.title, "text": message.text}
        if len(message.events) == 1:
            event = message.events[0]
            body["run"] = template_fields(event, self.tail_lines)
            body["log_tail"] = [line.to_dict() for line in event.log_tail[-self.tail_lines :]]
            if event.restart is not None:
                body["restart"] = event.restart.to_dict()
        else:
            body["events"] = [{"event": e.kind, "run": template_fields(e, 0)} for e in message.events]
        headers = {"Idempotency-Key": message.key, **(self.args.get("headers") or {})}
        return self.post(self.args["url"], json_body=body, headers=headers)


class DiscordNotifier(_Http):
    type = "discord"
    label = "Discord (channel webhook)"
    fields = (_WEBHOOK_URL,)

    def send(self, message: Message) -> str:
        # No @everyone, @here, role or user pings, whatever a run's name or error says.
        body = {"content": message.text[:2000], "allowed_mentions": {"parse": []}}
        return self.post(self.args["webhook_url"], json_body=body)

    def refused(self, answer: urllib.error.HTTPError, body: bytes) -> NotifierError:
        # A rate limit says how long to wait in its body: {"retry_after": 2.5, ...}.
        error = super().refused(answer, body)
        wait = _json_field(body, "retry_after")
        return TransientError(str(error), wait) if answer.code == 429 and wait is not None else error


class TeamsNotifier(_Http):
    type = "teams"
    label = "Microsoft Teams (incoming webhook or workflow)"
    fields = (_WEBHOOK_URL,)

    def send(self, message: Message) -> str:
        return self.post(self.args["webhook_url"], json_body={"title": message.title, "text": message.text})


class TelegramNotifier(_Http):
    type = "telegram"
    label = "Telegram (bot)"
    fields = (
        Field("bot_token", "Bot token", "secret"),
        Field("chat_id", "Chat id", "chat"),
        Field("base_url", "Bot API base URL", "url", required=False, default="https://api.telegram.org"),
    )

    def send(self, message: Message) -> str:
        url = f"{self.args['base_url']}/bot{self.args['bot_token']}/sendMessage"
        return self.post(url, json_body={"chat_id": self.args["chat_id"], "text": message.text[:4096]})

    def refused(self, answer: urllib.error.HTTPError, body: bytes) -> NotifierError:
        # A flood limit says how long to wait in its body: {"parameters": {"retry_after": 35}}.
        error = super().refused(answer, body)
        wait = _json_field(body, "parameters", "retry_after")
        return TransientError(str(error), wait) if answer.code == 429 and wait is not None else error

    def target(self) -> str:
        return f"chat {self.args.get('chat_id')} via {mask_url(str(self.args.get('base_url')))}"


class NtfyNotifier(_Http):
    type = "ntfy"
    label = "ntfy (push to phones)"
    fields = (
        Field("server", "Server", "url", required=False, default="https://ntfy.sh"),
        Field("topic", "Topic", "topic"),
        Field("token", "Access token", "secret", required=False),
    )

    def send(self, message: Message) -> str:
        urgent = message.kind in ("stalled", "crashed", "lost", "failed", "gave-up", "digest")
        body = {
            "topic": self.args["topic"],
            "title": message.title,
            "message": message.text,
            "priority": 4 if urgent else 3,
            "tags": [message.kind],
        }
        token = self.args.get("token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.post(self.args["server"], json_body=body, headers=headers)

    def target(self) -> str:
        return f"{show_url(str(self.args.get('server')))}/{self.args.get('topic')}"


_SECURITY = ("starttls", "ssl", "none")


class EmailNotifier(Notifier):
    type = "email"
    label = "E-mail (SMTP)"
    tail_lines = 20
    fields = (
        Field("smtp_host", "SMTP host", "text"),
        Field("smtp_port", "SMTP port", "port", required=False, default=587),
        Field(
            "security",
            "Security",
            "choice",
            required=False,
            default="starttls",
            choices=("starttls", "ssl", "none"),
        ),
        Field("username", "User name", "text", required=False),
        Field("password", "Password", "secret", required=False),
        Field("sender", "From", "email"),
        Field("to", "To", "emails"),
    )

    def send(self, message: Message) -> str:
        import smtplib
        import ssl
        from email.message import EmailMessage

        mail = EmailMessage()
        mail["Subject"] = one_line(message.title)  # a header: a newline in a run's name would end it
        mail["From"] = self.args["sender"]
        mail["To"] = ", ".join(self.args["to"])
        mail.set_content(message.text)
        host, port, security = self.args["smtp_host"], int(self.args["smtp_port"]), self.args["security"]
        try:
            if security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    host, port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(host, port, timeout=self.timeout)
            with smtp:
                if security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.args.get("username"):
                    smtp.login(self.args["username"], self.args.get("password") or "")
                refused = smtp.send_message(mail)
        except smtplib.SMTPAuthenticationError as e:
            raise NotifierError(self.scrub(f"SMTP login refused: {e.smtp_code} {_smtp_text(e)}")) from None
        except smtplib.SMTPResponseException as e:
            answer = self.scrub(f"SMTP {e.smtp_code} {_smtp_text(e)}")
            raise (TransientError(answer) if 400 <= e.smtp_code < 500 else NotifierError(answer)) from None
        except smtplib.SMTPRecipientsRefused as e:
            raise NotifierError(f"every recipient was refused: {', '.join(e.recipients)}") from None
        except (smtplib.SMTPException, OSError) as e:
            raise TransientError(self.scrub(f"cannot send through {host}:{port}: {e}")) from None
        if refused:
            return f"sent, but refused for {', '.join(refused)}"
        return f"sent to {', '.join(self.args['to'])}"

    def target(self) -> str:
        return f"{', '.join(self.args.get('to') or [])} via {self.args.get('smtp_host')}"


def _smtp_text(e: Any) -> str:
    error = e.smtp_error
    return error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)


class AppriseNotifier(Notifier):
    type = "apprise"
    label = "Apprise (about a hundred more services; pip install 'nbmonitor[apprise]')"
    fields = (Field("urls", "Apprise URLs", "urls"),)

    def send(self, message: Message) -> str:
        try:
            import apprise
        except ImportError:
            raise NotifierError(
                "the apprise notifier needs the apprise package: pip install 'nbmonitor[apprise]'"
            ) from None
        sender = apprise.Apprise()
        for url in self.args["urls"]:
            if not sender.add(url):
                raise NotifierError(f"Apprise does not understand {mask_url(url)}")
        if not sender.notify(body=message.text, title=message.title):
            raise TransientError("Apprise could not deliver to every URL (see its log)")
        return f"sent to {len(self.args['urls'])} Apprise URL(s)"


#: Every notifier type by name.
TYPES: dict[str, type[Notifier]] = {
    cls.type: cls
    for cls in (
        LoggerNotifier,
        SlackNotifier,
        WorkplaceNotifier,
        WebhookNotifier,
        DiscordNotifier,
        TeamsNotifier,
        TelegramNotifier,
        NtfyNotifier,
        EmailNotifier,
        AppriseNotifier,
    )
}
