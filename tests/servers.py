"""Real local servers for notifier tests: an HTTP server that records requests and answers as
scripted, and an SMTP server (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the server answered

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Answer:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a server that "never" answers)
    hold: threading.Event | None = None  # answer only once this is set (at most a minute)


class HttpRecorder:
    """Answers each request with the next scripted Answer (then ``default``), recording all."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.script: list[Answer] = []
        self.default = Answer()
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with recorder._lock:
                    answer = recorder.script.pop(0) if recorder.script else recorder.default
                    recorder.requests.append(
                        Request("POST", self.path, dict(self.headers.items()), body, answer.status)
                    )
                if answer.delay:
                    time.sleep(answer.delay)  # the slow server under test, not a wait in a test
                if answer.hold is not None:
                    answer.hold.wait(60)
                payload = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting, as it should

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answered(self, status: int = 200) -> list[Request]:
        return [r for r in self.requests if r.status == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SmtpRecorder:
    """A real SMTP server on localhost (aiosmtpd) keeping every message, with optional login."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        recorder = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                recorder.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                mail = message_from_bytes(envelope.content, policy=policy.default)
                recorder.messages.append(mail)
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = data.login.decode() == user and data.password.decode() == password
            return AuthResult(success=ok, handled=False)  # let aiosmtpd answer 535

        options: dict[str, Any] = {}
        if user is not None:
            options = {"authenticator": authenticate, "auth_require_tls": False}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port(), **options)
        self.controller.start()
        self.port: int = self.controller.port

    def close(self) -> None:
        self.controller.stop()


def serve(recorder: HttpRecorder) -> Iterator[HttpRecorder]:
    try:
        yield recorder
    finally:
        recorder.close()
