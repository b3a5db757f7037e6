"""``nbmonitor-watcher notifiers add|list|enable|disable|remove|test``: the notifier file from a shell.

Mirrors ``aim-watcher notifiers``: ``add`` prompts for each field when run
in a terminal and takes every field as a flag in scripts. Secrets are read
without echo and shown masked everywhere.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from . import _format
from .config import DEFAULT_EVENTS, NotifierConfig, NotifierStore
from .errors import NbmonitorError
from .fields import ConfigError, Field
from .notifiers import TYPES
from .outbox import last_result, send_test
from .repo import Repo
from .rules import EVENTS

__all__ = ["add_parser"]

#: Flags of fields that take several values: repeat the flag (or separate with commas).
_LIST_FLAGS = {"headers": "--header", "urls": "--apprise-url", "to": "--to"}


def add_parser(commands: Any) -> None:
    """Register ``notifiers`` and its commands on the top-level subparsers."""
    parser = commands.add_parser("notifiers", help="add, list, enable, disable, remove and test notifiers")
    sub = parser.add_subparsers(dest="notifiers_command", required=True, metavar="COMMAND")

    add = sub.add_parser("add", help="add a notifier (prompts in a terminal; flags in scripts)")
    add.add_argument("type", nargs="?", choices=sorted(TYPES), metavar="TYPE", help=", ".join(TYPES))
    seen: set[str] = set()
    for notifier in TYPES.values():
        for field in notifier.fields:
            if field.name in seen:
                continue
            seen.add(field.name)
            flag = _LIST_FLAGS.get(field.name, field.flag)
            extra = ["--from"] if field.name == "sender" else []
            action = "append" if field.name in _LIST_FLAGS else "store"
            add.add_argument(flag, *extra, dest=f"field_{field.name}", action=action, help=field.label)
    add.add_argument("--events", help=f"comma-separated events (default: {','.join(DEFAULT_EVENTS)})")
    add.add_argument("--message", help="template for every event without a template of its own")
    add.add_argument(
        "--template", action="append", default=[], metavar="EVENT=TEXT", help="template for one event"
    )
    add.add_argument("--disabled", action="store_true", help="save it disabled")
    add.add_argument("--yes", "-y", action="store_true", help="save without asking to confirm")
    add.set_defaults(func=_add)

    listing = sub.add_parser("list", help="the notifiers, secrets masked, with their last delivery")
    listing.set_defaults(func=_list)
    for name, enabled in (("enable", True), ("disable", False)):
        toggle = sub.add_parser(name, help=f"{name} a notifier")
        toggle.add_argument("id", metavar="ID", help="the notifier's id, or a unique prefix of it")
        toggle.set_defaults(func=_toggle, enabled=enabled)
    remove = sub.add_parser("remove", help="remove a notifier (asks to confirm)")
    remove.add_argument("id", metavar="ID", help="the notifier's id, or a unique prefix of it")
    remove.add_argument("--yes", "-y", action="store_true", help="remove without asking")
    remove.set_defaults(func=_remove)
    test = sub.add_parser("test", help="send a test message now and show what the endpoint answered")
    test.add_argument("id", nargs="?", metavar="ID", help="one notifier (default: every enabled one)")
    test.set_defaults(func=_test)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _add(repo: Repo, args: argparse.Namespace) -> int:
    repo.ensure()  # before asking anything: where it will be saved must work
    kind = args.type or (_ask_type() if _interactive() else None)
    if kind is None:
        raise ConfigError("type", f"give the notifier type: one of {', '.join(TYPES)}")
    given = {
        name[len("field_") :]: value
        for name, value in vars(args).items()
        if name.startswith("field_") and value is not None
    }
    if _interactive():
        for field in TYPES[kind].fields:
            if field.name not in given:
                given[field.name] = _ask(field)
    templates = dict(_template(t) for t in args.template)
    config = NotifierConfig.create(
        kind,
        args=given,
        events=args.events,
        templates=templates,
        message=args.message,
        enabled=not args.disabled,
    )
    print(_describe(config))
    if not _confirm(args, "Save this notifier?"):
        print("not saved")
        return 1
    NotifierStore(repo).add(config)
    print(f"saved notifier {config.id} in {NotifierStore(repo).path}")
    return 0


def _ask_type() -> str:
    print("Notifier types:")
    for name, cls in TYPES.items():
        print(f"  {name:10} {cls.label}")
    while True:
        answer = input("Type: ").strip().lower()
        if answer in TYPES:
            return answer
        print(f"  choose one of: {', '.join(TYPES)}")


def _ask(field: Field) -> Any:
    while True:
        hint = f" [{field.show(field.default)}]" if field.default not in (None, {}, []) else ""
        hint += "" if field.required or hint else " (optional)"
        prompt = f"{field.label}{hint}: "
        answer = getpass.getpass(prompt) if field.secret else input(prompt)
        try:
            field.parse(answer.strip() or None)
        except ConfigError as e:
            print(f"  {e}")
            continue
        return answer.strip() or None


def _template(text: str) -> tuple[str, str]:
    event, sep, template = text.partition("=")
    if not sep or event.strip() not in EVENTS:
        raise ConfigError(
            "template", f"expected EVENT=TEXT with EVENT one of {', '.join(EVENTS)}, got {text!r}"
        )
    return event.strip(), template


def _describe(config: NotifierConfig) -> str:
    rows = [("type", config.type), ("status", "enabled" if config.enabled else "disabled")]
    rows += [(name, shown) for name, shown in config.shown_args().items() if shown]
    rows.append(("events", ", ".join(config.events)))
    if config.message:
        rows.append(("message", config.message))
    rows += [(f"template {event}", text) for event, text in config.templates.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        return True
    if not _interactive():
        raise NbmonitorError("not a terminal, so nothing to confirm with: add --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _list(repo: Repo, args: argparse.Namespace) -> int:
    notifiers = NotifierStore(repo).load()
    if not notifiers:
        print(f"no notifiers in {repo.path}; add one with 'nbmonitor-watcher notifiers add'")
        print("(the watcher's own output shows every event even so)")
        return 0
    rows = [("ID", "TYPE", "STATUS", "TARGET", "EVENTS", "LAST DELIVERY")]
    for n in notifiers:
        rows.append(
            (
                n.id[:8],
                n.type,
                "enabled" if n.enabled else "disabled",
                n.target(repo),
                ",".join(n.events),
                _last(repo, n.id),
            )
        )
    print(_format.table(rows))
    return 0


def _last(repo: Repo, notifier_id: str) -> str:
    result = last_result(repo, notifier_id)
    if result is None:
        return "never"
    ago = _format.duration(time.time() - float(result.get("at", 0)))
    status = "ok" if result.get("ok") else "error"
    pending = result.get("pending")
    tail = f", {pending} pending" if pending else ""
    return f"{status} {ago} ago: {_format.one_line(str(result.get('answer', '')))[:80]}{tail}"


def _toggle(repo: Repo, args: argparse.Namespace) -> int:
    config = NotifierStore(repo).update(args.id, enabled=args.enabled)
    state = "enabled" if config.enabled else "disabled"
    print(f"{state} {config.id[:8]} ({config.type}: {config.target(repo)})")
    return 0


def _remove(repo: Repo, args: argparse.Namespace) -> int:
    store = NotifierStore(repo)
    config = store.get(args.id)
    if not _confirm(args, f"Remove {config.id[:8]} ({config.type}: {config.target(repo)})?"):
        print("kept")
        return 1
    store.remove(config.id)
    print(f"removed {config.id[:8]} ({config.type})")
    return 0


def _test(repo: Repo, args: argparse.Namespace) -> int:
    store = NotifierStore(repo)
    chosen = [store.get(args.id)] if args.id else [n for n in store.load() if n.enabled]
    if not chosen:
        print(f"no enabled notifiers in {repo.path}; add one with 'nbmonitor-watcher notifiers add'")
        return 1
    failed = 0
    for config in chosen:
        result = send_test(repo, config)
        failed += not result.ok
        print(f"{config.id[:8]} {config.type}: {'ok' if result.ok else 'error'}: {result.answer}")
    return 1 if failed else 0
