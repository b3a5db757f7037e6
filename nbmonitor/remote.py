"""Runs on hosts that share no filesystem with their Jupyter server: their records go over HTTP.

``NBMONITOR_REPO=https://host:8888/?token=...`` (or ``repo=``, ``--repo``): a
run's process writes its files as always, into a local repo of its own for
that server (the spool, ``~/.nbmonitor/remote/<host>-<port>-<hash>``), and a
thread sends what changed to the server's ``nbmonitor/api/ingest`` at most
once a second, which writes the same files into the server's repo
(nbmonitor.ingest). The watcher beside that server judges the runs there, as
runs of another host: by their heartbeat, on its own clock.

Nothing waits on the network but that thread. When the server cannot be
reached, the changes wait in the spool's files, which are bounded by design
(a usage history coarsens, a log tail keeps its last lines), and go in order
when it answers again: each file's new lines once, then the run file whole.
A process that ends gives its thread a few seconds to send the end; what is
still unsent then stays in the spool, and the next process that reports to
the same server from this host sends it (or ``nbmonitor-watcher --repo URL
send``).

The token comes from the URL's ``?token=``, else ``$NBMONITOR_TOKEN``, else
the file named by ``$NBMONITOR_TOKEN_FILE``. It goes only in the
Authorization header of requests to its own server, and is never shown: a
``RemoteRepo`` prints as its server's address. ``$NBMONITOR_CA`` names a CA
bundle for a server whose certificate is not signed by a public CA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RepoError
from .record import RunRecord
from .repo import ENV_VAR, Repo, write_atomic

__all__ = ["Key", "Rejected", "RemoteRepo", "Server", "Unreachable", "post"]

log = logging.getLogger("nbmonitor.remote")

ENV_TOKEN = "NBMONITOR_TOKEN"
ENV_TOKEN_FILE = "NBMONITOR_TOKEN_FILE"
ENV_CA = "NBMONITOR_CA"
ENV_SPOOL = "NBMONITOR_SPOOL"
_TIMEOUT = 10.0  # of one request

#: The file a RemoteRepo changed, as its hook is told: ("run", id), ("usage", id), ("log", id,
#: part), ("checkpoint", job key, name).
Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Server:
    """A Jupyter server that takes runs' records: where, and how to prove we may write."""

    base: str  # scheme://host:port/base_url/, without the token
    token: str
    ca: str | None = None

    def __repr__(self) -> str:
        return f"Server({self.base!r})"  # never the token

    @classmethod
    def parse(cls, url: str, environ: Mapping[str, str] | None = None) -> Server:
        """The server of ``url``; RepoError, one line, for a URL that cannot be one or no token."""
        env = os.environ if environ is None else environ
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise RepoError(f"not a server URL ({e}): give https://host:8888/") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RepoError("a server URL is http(s)://host:port/, with a host")
        if parts.username or parts.password:
            raise RepoError("a server URL takes no user or password: give the token as ?token=")
        query = urllib.parse.parse_qs(parts.query)
        unknown = sorted(set(query) - {"token"})
        if unknown:
            raise RepoError(f"a server URL takes only ?token=, not {', '.join(unknown)}")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host if port is None else f"{host}:{port}"
        base = urllib.parse.urlunsplit((parts.scheme, netloc, _server_path(parts.path), "", ""))
        token = (query.get("token") or [""])[0] or env.get(ENV_TOKEN, "")
        if not token and env.get(ENV_TOKEN_FILE):
            token = _read_token(env[ENV_TOKEN_FILE])
        if not token:
            raise RepoError(
                f"no token for {base}: add ?token=..., or set ${ENV_TOKEN} or ${ENV_TOKEN_FILE} "
                "(the token `jupyter server list` shows)"
            )
        return cls(base, token.strip(), env.get(ENV_CA) or None)

    @property
    def ingest_url(self) -> str:
        return urllib.parse.urljoin(self.base, "nbmonitor/api/ingest")

    def context(self) -> ssl.SSLContext | None:
        """TLS with the system's CAs (or ``$NBMONITOR_CA``), checking the host name."""
        if not self.base.startswith("https:"):
            return None
        return ssl.create_default_context(cafile=self.ca)

    def spool(self) -> Path:
        """Where this host keeps the records for the server: ``$NBMONITOR_SPOOL``, else a
        folder of ``~/.nbmonitor/remote`` named after the server."""
        if os.environ.get(ENV_SPOOL):
            return Path(os.environ[ENV_SPOOL]).expanduser()
        parts = urllib.parse.urlsplit(self.base)
        name = f"{parts.hostname}-{parts.port or ('443' if parts.scheme == 'https' else '80')}"
        digest = hashlib.sha256(self.base.encode()).hexdigest()[:8]
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
        return Path.home() / ".nbmonitor" / "remote" / f"{safe}-{digest}"


#: The first part of a path that is a page of the server, not its base URL: the address a browser
#: shows (``http://host:8888/lab?token=...``, ``/user/alice/lab/tree/x.ipynb``) works as it is.
_PAGES = frozenset({"lab", "tree", "notebooks", "doc", "edit", "terminals", "voila"})


def _server_path(path: str) -> str:
    """The server's base URL path in ``path`` (``/``, ``/user/alice/``), a page's cut off."""
    kept: list[str] = []
    for part in path.split("/"):
        if part in _PAGES:
            break
        if part:
            kept.append(part)
    return "/" + "".join(f"{part}/" for part in kept)


def _read_token(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as e:
        raise RepoError(f"cannot read the token file {path} (${ENV_TOKEN_FILE}): {e.strerror}") from None


class RemoteRepo(Repo):
    """A repo that is a Jupyter server's: written locally (the spool) and sent on."""

    def __init__(
        self, url: str | os.PathLike[str] | None = None, spool: str | os.PathLike[str] | None = None
    ) -> None:
        where = str(url) if url is not None else os.environ.get(ENV_VAR, "")
        self.server = Server.parse(where)
        super().__init__(spool if spool is not None else self.server.spool())

    def __repr__(self) -> str:
        return f"RemoteRepo({self.server.base!r})"

    def __str__(self) -> str:
        return self.server.base

    def environ(self) -> dict[str, str]:
        env = {ENV_VAR: self.server.base, ENV_TOKEN: self.server.token, ENV_SPOOL: str(self.path)}
        return env | ({ENV_CA: self.server.ca} if self.server.ca else {})

    def ensure(self) -> None:
        super().ensure()
        if not self.spool_file.exists():
            write_atomic(self.spool_file, {"server": self.server.base})

    def write_run(self, record: RunRecord) -> None:
        super().write_run(record)
        self._changed(("run", record.id))

    def append_usage(self, run_id: str, text: str) -> None:
        super().append_usage(run_id, text)
        self._changed(("usage", run_id))

    def replace_usage(self, run_id: str, text: str) -> None:
        super().replace_usage(run_id, text)
        self._changed(("usage", run_id))

    def append_log(self, run_id: str, text: str, part: int | None = None) -> None:
        super().append_log(run_id, text, part)
        self._changed(("log", run_id, part))

    def replace_log(self, run_id: str, text: str, part: int | None = None) -> None:
        super().replace_log(run_id, text, part)
        self._changed(("log", run_id, part))

    def write_checkpoint(self, job_key: str, name: str, data: dict[str, Any]) -> None:
        super().write_checkpoint(job_key, name, data)
        self._changed(("checkpoint", job_key, name))

    def remove_checkpoint(self, job_key: str, name: str) -> None:
        super().remove_checkpoint(job_key, name)
        self._changed(("checkpoint", job_key, name))

    #: Told of every file a RemoteRepo changed: the engine's sender (nbmonitor._sender) sends it
    #: on. With none (this module used alone), the changes wait in the spool for the next sender.
    on_change: Callable[[RemoteRepo, Key], None] | None = None

    def _changed(self, key: Key) -> None:
        hook = RemoteRepo.on_change
        if hook is not None:
            hook(self, key)

    def client_secret(self) -> str:
        """This host's secret for the server, made once (0600): the runs it sends are its own."""
        path = self.path / "client.key"
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32))
        for _ in range(50):  # another process may be writing it this instant
            secret = path.read_text(encoding="ascii").strip()
            if secret:
                return secret
            time.sleep(0.01)
        raise RepoError(f"{path} is empty: remove it, and a new one is made")


class Unreachable(Exception):
    """The server did not answer (or answered that it cannot take records now)."""


class Rejected(Exception):
    """The server refused an operation of the batch for good: ``index`` says which (None: all)."""

    def __init__(self, message: str, index: int | None) -> None:
        super().__init__(message)
        self.index = index


def post(server: Server, body: bytes) -> dict[str, Any]:
    """Send one batch; its answer. Unreachable when it may work later, Rejected when not."""
    request = urllib.request.Request(
        server.ingest_url,
        data=body,
        method="POST",
        headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT, context=server.context()) as answer:
            found = json.loads(answer.read())
    except urllib.error.HTTPError as e:
        raise _refusal(server, e) from None
    except (OSError, ValueError) as e:  # refused, reset, timed out, a TLS failure, a bad answer
        reason = getattr(e, "reason", None) or e
        raise Unreachable(f"cannot reach {server.base}: {reason}") from None
    if not isinstance(found, dict):
        raise Unreachable(f"{server.base} answered something other than nbmonitor's ingest")
    return found


def _refusal(server: Server, error: urllib.error.HTTPError) -> Exception:
    try:
        said = json.loads(error.read())
    except (OSError, ValueError):
        said = {}
    said = said if isinstance(said, dict) else {}
    message = str(said.get("message") or error.reason)[:300]
    index = said.get("op") if type(said.get("op")) is int else None
    if error.code in (401, 403) and index is None:
        return Unreachable(
            f"{server.base} refused the token (HTTP {error.code}): check ${ENV_TOKEN} or the URL's "
            "?token= (the token `jupyter server list` shows there)"
        )
    if error.code == 404:
        return Unreachable(f"{server.base} has no nbmonitor: pip install nbmonitor there, and restart it")
    if error.code in (400, 403, 413):
        return Rejected(f"{server.base} refused a record (HTTP {error.code}): {message}", index)
    return Unreachable(f"{server.base} answered HTTP {error.code}: {message}")
