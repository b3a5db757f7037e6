"""The settings of a notifier type: each field's kind, its checks, and how it is shown.

The fields a notifier class declares drive everything around it: validation
(``Field.parse``, a ConfigError naming the field with the value masked), the
command line's flags and prompts, the configure() form, and masking wherever a
value may be shown (``Field.show``, ``mask``, ``mask_url``). Pure functions, no I/O.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

from .errors import NbmonitorError

__all__ = ["ConfigError", "Field", "Kind", "mask", "mask_url", "same_origin", "show_url", "split_credentials"]


class ConfigError(NbmonitorError, ValueError):
    """A notifier setting is invalid; ``field`` names it, the message shows the value masked."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


_EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHAT = re.compile(r"-?\d+|@[A-Za-z][A-Za-z0-9_]{3,}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


Kind = Literal[
    "text", "secret", "url", "secret_url", "digits", "chat", "topic", "port", "choice", "email", "emails",
    "headers", "urls",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    """One setting of a notifier type; its ``kind`` decides parsing, validation and masking."""

    name: str
    label: str
    kind: Kind
    _: KW_ONLY
    required: bool = True
    default: Any = None
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def secret(self) -> bool:
        """Masked everywhere it is shown: in listings, forms, logs and errors."""
        return self.kind in ("secret", "secret_url", "headers", "urls")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The value, checked and normalised; ConfigError names the field and shows it masked."""
        if value is None or value == "" or value == [] or value == {}:
            if self.required:
                raise ConfigError(self.name, f"{self.label} is required")
            return self.default
        check = _CHECKS[self.kind]
        return check(self, value)

    def show(self, value: Any) -> str:
        """The value as it may be shown to anyone: secrets masked."""
        if value is None:
            return ""
        if self.kind == "secret":
            return mask(str(value))
        if self.kind == "secret_url":
            return mask_url(str(value))
        if self.kind == "url":
            return show_url(str(value))
        if self.kind == "headers":
            return ", ".join(f"{k}: {mask(str(v))}" for k, v in dict(value).items())
        if self.kind == "urls":
            return ", ".join(mask_url(str(u)) for u in value)
        if self.kind == "emails":
            return ", ".join(value)
        return str(value)


def mask(secret: str) -> str:
    """``****wxyz`` for a long secret, ``****`` for a short one."""
    return f"****{secret[-4:]}" if len(secret) >= 16 else "****"


def mask_url(url: str) -> str:
    """``https://hooks.slack.com/****wxyz``: scheme and host stay readable, the rest is secret."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "****"
    if not parts.scheme or not parts.hostname:
        return "****"
    host = parts.hostname + (f":{parts.port}" if _port(parts) else "")
    rest = url.split(parts.netloc, 1)[-1]
    return f"{parts.scheme}://{host}/{mask(rest) if rest.strip('/') else ''}"


def show_url(url: str) -> str:
    """A URL that is no secret, with any ``user:password@`` in it masked: ``https://****@host/x``."""
    clean, credentials = split_credentials(url)
    if credentials is None:
        return url
    scheme, rest = clean.split("://", 1) if "://" in clean else ("", clean)
    return f"{scheme}://****@{rest}" if scheme else f"****@{rest}"


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@``, and the (user, password) it held, decoded."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return clean, (urllib.parse.unquote(user), urllib.parse.unquote(password))


def same_origin(a: str, b: str) -> bool:
    """True if two URLs have the same scheme, host and port: where a secret may go."""
    try:
        one, two = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
        return (one.scheme, one.hostname, _port(one)) == (two.scheme, two.hostname, _port(two))
    except ValueError:
        return False


def _port(parts: urllib.parse.SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def _text(f: Field, value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(f.name, f"{f.label} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if any(c in text for c in "\r\n\0"):
        raise ConfigError(f.name, f"{f.label} must be one line")
    return text


def _url(f: Field, value: Any) -> str:
    url = _text(f, value)
    shown = mask_url(url) if f.secret else repr(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        raise ConfigError(f.name, f"{shown} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f.name, f"{shown} must start with https:// or http://")
    if not parts.hostname or not port_ok or " " in url:
        raise ConfigError(f.name, f"{shown} has no valid host")
    return url.rstrip("/") if f.name.endswith(("base_url", "server")) else url


def _pattern(pattern: re.Pattern[str], what: str) -> Callable[[Field, Any], str]:
    def check(f: Field, value: Any) -> str:
        text = _text(f, value)
        if not pattern.fullmatch(text):
            raise ConfigError(f.name, f"{text[:60]!r} is not {what}")
        return text

    return check


def _port_number(f: Field, value: Any) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ConfigError(f.name, f"{str(value)[:20]!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ConfigError(f.name, f"{port} is not a port number (1-65535)")
    return port


def _choice(f: Field, value: Any) -> str:
    text = _text(f, value).lower()
    if text not in f.choices:
        raise ConfigError(f.name, f"{text!r} is not one of {', '.join(f.choices)}")
    return text


def _split(value: Any, separators: str = r"[,;\s]+") -> list[str]:
    items = value if isinstance(value, list | tuple) else [value]
    return [part for item in items for part in re.split(separators, str(item).strip()) if part]


def _emails(f: Field, value: Any) -> list[str]:
    addresses = _split(value)
    for address in addresses:
        if not _EMAIL.fullmatch(address):
            raise ConfigError(f.name, f"{address[:60]!r} is not an e-mail address")
    if not addresses and f.required:
        raise ConfigError(f.name, f"{f.label} is required")
    return addresses


def _email(f: Field, value: Any) -> str:
    address = _text(f, value)
    if not _EMAIL.fullmatch(address):
        raise ConfigError(f.name, f"{address[:60]!r} is not an e-mail address")
    return address


def _headers(f: Field, value: Any) -> dict[str, str]:
    pairs: dict[str, str] = {}
    items = value.items() if isinstance(value, Mapping) else (_pair(f, v) for v in _lines(value))
    for name, header in items:
        name, header = str(name).strip(), str(header).strip()
        if not _HEADER.fullmatch(name) or any(c in header for c in "\r\n\0"):
            raise ConfigError(f.name, f"{name[:40]!r}: {mask(header)} is not a valid header")
        pairs[name] = header
    return pairs


def _lines(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else str(value).splitlines()


def _pair(f: Field, line: str) -> tuple[str, str]:
    name, sep, header = line.partition(":")
    if not sep:
        raise ConfigError(f.name, f"{name[:40]!r} must look like 'Name: value'")
    return name, header


def _urls(f: Field, value: Any) -> list[str]:
    urls = _split(value, r"\s+")  # Apprise URLs may hold commas
    for url in urls:
        if "://" not in url:
            raise ConfigError(f.name, f"{mask_url(url)} is not an Apprise URL (scheme://...)")
    return urls


_CHECKS: dict[Kind, Callable[[Field, Any], Any]] = {
    "text": _text,
    "secret": _text,
    "url": _url,
    "secret_url": _url,
    "digits": _pattern(re.compile(r"\d+"), "a numeric id"),
    "chat": _pattern(_CHAT, "a chat id (a number, or @channelname)"),
    "topic": _pattern(_TOPIC, "an ntfy topic (letters, digits, - and _)"),
    "port": _port_number,
    "choice": _choice,
    "email": _email,
    "emails": _emails,
    "headers": _headers,
    "urls": _urls,
}
