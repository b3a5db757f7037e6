"""``nbmonitor.configure()``: the notifiers as a form in the notebook.

Everything ``nbmonitor-watcher notifiers`` does, with stock ipywidgets, on
the same file under the same lock (NotifierStore): a change here shows in
``notifiers list`` and reaches a running watcher at its next poll. Each
field is validated before anything is written; a field in error is outlined
in red with its message under it, both gone as soon as it is edited. Secrets
are typed into password fields and never sent back to the browser: editing a
notifier leaves a secret as it was unless a new one is typed. A URL that holds
a secret (a webhook) shows itself masked as it is typed (scheme and host
readable, so a typo there shows) and whole on a click of "show".
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import traitlets

from . import templates
from .config import DEFAULT_EVENTS, NotifierConfig, NotifierStore
from .errors import CorruptRecordError
from .events import Event
from .fields import ConfigError, Field, mask_url
from .notifiers import TYPES
from .outbox import last_result, send_test
from .repo import Repo
from .rules import EVENTS

__all__ = ["Editor", "NotifierForm", "Row", "SecretUrl", "configure"]

_ALL = "every event (message)"
_RED = "#c62828"
_ERROR = f"color:{_RED}"


def configure(repo: Repo | str | os.PathLike[str] | None = None) -> NotifierForm:
    """The notifier form for ``repo`` (default: ``$NBMONITOR_REPO``, else ``~/.nbmonitor``)."""
    return NotifierForm(repo if isinstance(repo, Repo) else Repo(repo))


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _label(text: str, style: str = "") -> w.HTML:
    return w.HTML(f'<span style="{style}">{_esc(text)}</span>' if text else "")


class Row:
    """One configured notifier: what it is, an enable switch, test, edit and remove."""

    def __init__(self, form: NotifierForm, config: NotifierConfig) -> None:
        self.form, self.config = form, config
        self.summary = w.HTML(
            f"<b>{_esc(config.type)}</b> <code>{_esc(config.id[:8])}</code> "
            f"→ {_esc(config.target(form.repo))}"
            f"<br><small>{_esc(', '.join(config.events))}</small>"
        )
        self.enabled = w.Checkbox(value=config.enabled, description="enabled", indent=False)
        self.enabled.observe(self._toggle, names="value")
        self.test = w.Button(description="Send test", icon="paper-plane")
        self.test.on_click(self._send_test)
        self.edit = w.Button(description="Edit", icon="pencil")
        self.edit.on_click(lambda _: form.editor.load(config))
        self.remove = w.Button(description="Remove", icon="trash", button_style="danger")
        self.remove.on_click(self._ask_remove)
        self.confirm = w.HBox()
        self.result = w.HTML(self._last())
        self.test_thread: threading.Thread | None = None
        self.widget = w.VBox(
            [
                w.HBox([self.summary]),
                w.HBox([self.enabled, self.test, self.edit, self.remove, self.confirm]),
                self.result,
            ],
            layout=w.Layout(border="1px solid #e0e0e0", padding="4px", margin="2px 0"),
        )

    def _last(self) -> str:
        result = last_result(self.form.repo, self.config.id)
        if result is None:
            return "<small>no delivery yet</small>"
        colour = "#2e7d32" if result.get("ok") else "#c62828"
        word = "ok" if result.get("ok") else "error"
        return (
            f'<small style="color:{colour}">last delivery: {word}: {_esc(result.get("answer", ""))}</small>'
        )

    def _toggle(self, change: dict[str, Any]) -> None:
        self.form.guard(lambda: self.form.store.update(self.config.id, enabled=bool(change["new"])))

    def _send_test(self, _: Any) -> None:
        self.result.value = "<small>sending a test message...</small>"

        def send() -> None:
            result = send_test(self.form.repo, self.config)
            colour = "#2e7d32" if result.ok else "#c62828"
            word = "ok" if result.ok else "error"
            self.result.value = f'<small style="color:{colour}">test: {word}: {_esc(result.answer)}</small>'

        # Off the kernel's main thread, so a slow endpoint does not freeze the notebook.
        self.test_thread = threading.Thread(target=send, name="nbmonitor-test", daemon=True)
        self.test_thread.start()

    def _ask_remove(self, _: Any) -> None:
        yes = w.Button(description=f"Remove {self.config.id[:8]}", button_style="danger")
        no = w.Button(description="Keep")
        yes.on_click(lambda _: self.form.guard(lambda: self.form.store.remove(self.config.id), refresh=True))
        no.on_click(lambda _: setattr(self.confirm, "children", ()))
        self.confirm.children = (w.HTML("<b>Sure?</b>"), yes, no)


class Editor:
    """Add or edit one notifier: the type's fields, events, templates with a live preview."""

    def __init__(self, form: NotifierForm) -> None:
        self.form = form
        self.editing: NotifierConfig | None = None
        self.type = w.Dropdown(options=list(TYPES), value="slack", description="Type")
        self.type.observe(lambda _: self._show_fields(), names="value")
        self.type_help = w.HTML()
        self.inputs: dict[str, w.Widget] = {}
        self.errors: dict[str, w.HTML] = {}
        self.fields_box = w.VBox()
        self.events = {e: w.Checkbox(value=e in DEFAULT_EVENTS, description=e, indent=False) for e in EVENTS}
        self.events_error = w.HTML()
        for box in self.events.values():
            box.observe(lambda _: self._events_edited(), names="value")
        self.template_event = w.Dropdown(options=[_ALL, *EVENTS], value=_ALL, description="Template")
        self.template_event.observe(self._switch_template, names="value")
        self.template = w.Textarea(placeholder="empty: the default text", layout=w.Layout(width="95%"))
        self.template.observe(lambda _: self._preview(), names="value")
        self.templates: dict[str, str] = {}
        self.preview = w.HTML()
        self.template_error = w.HTML()
        self.save = w.Button(description="Save", icon="check", button_style="primary")
        self.save.on_click(lambda _: self.submit())
        self.cancel = w.Button(description="Cancel")
        self.cancel.on_click(lambda _: self.clear())
        self.status = w.HTML()
        self.title = w.HTML("<b>Add a notifier</b>")
        self.widget = w.VBox(
            [
                self.title,
                self.type,
                self.type_help,
                self.fields_box,
                w.HTML("Events"),
                w.HBox(list(self.events.values())),
                self.events_error,
                self.template_event,
                self.template,
                self.template_error,
                w.HTML("<small>Preview with a sample run:</small>"),
                self.preview,
                w.HBox([self.save, self.cancel]),
                self.status,
            ],
            layout=w.Layout(border="1px solid #bdbdbd", padding="6px"),
        )
        self._show_fields()

    def _show_fields(self, config: NotifierConfig | None = None) -> None:
        cls = TYPES[self.type.value]
        self.type_help.value = f"<small>{_esc(cls.label)}</small>"
        self.inputs, self.errors, rows = {}, {}, []
        for field in cls.fields:
            self.inputs[field.name] = _input(field, config)
            self.errors[field.name] = w.HTML()
            rows += [self.inputs[field.name], self.errors[field.name]]
            self.inputs[field.name].observe(lambda _, name=field.name: self._unmark(name), names="value")
        self.fields_box.children = tuple(rows)
        self._preview()

    def _mark(self, name: str, message: str) -> None:
        """Outline the field in red, its message under it."""
        self.inputs[name].layout.border = f"1px solid {_RED}"
        self.errors[name].value = f'<small style="{_ERROR}">{_esc(message)}</small>'

    def _unmark(self, name: str) -> None:
        """The field was edited: its error is no longer true."""
        if name in self.inputs:
            self.inputs[name].layout.border = None
            self.errors[name].value = ""
        self._settle()

    def _settle(self) -> None:
        """No error is shown any more: "Not saved: fix the fields marked in red" goes too."""
        shown = (*self.errors.values(), self.events_error, self.template_error)
        if self.status.value.startswith("<span") and not any(e.value for e in shown):
            self.status.value = ""

    def _events_edited(self) -> None:
        if any(box.value for box in self.events.values()):
            self.events_error.value = ""
            self._settle()

    def _switch_template(self, change: dict[str, Any]) -> None:
        self._keep_template(change["old"])
        self.template.value = self.templates.get(_key(change["new"]), "")

    def _keep_template(self, shown: str) -> None:
        key = _key(shown)
        if self.template.value.strip():
            self.templates[key] = self.template.value
        else:
            self.templates.pop(key, None)

    def _preview(self) -> None:
        event = self.template_event.value
        kind = "stalled" if event == _ALL else event
        sample = Event(kind, kind, templates.SAMPLE.run, templates.SAMPLE.at, 95.0, 3.0, "sample")
        text = templates.render(self.template.value, templates.fields(sample)) if self.template.value else ""
        text = text or templates.text_for(sample, message=self.templates.get("message"))
        self.preview.value = f'<pre style="white-space:pre-wrap;margin:0">{_esc(text)}</pre>'

    def load(self, config: NotifierConfig) -> None:
        """Edit an existing notifier; its secrets stay unless new ones are typed."""
        self.clear()
        self.editing = config
        self.title.value = f"<b>Edit {_esc(config.type)} <code>{_esc(config.id[:8])}</code></b>"
        self.type.value = config.type
        self.type.disabled = True
        self._show_fields(config)  # after the type's own refresh, with this notifier's values
        for event, box in self.events.items():
            box.value = event in config.events
        self.templates = dict(config.templates)
        if config.message:
            self.templates["message"] = config.message
        self.template.value = self.templates.get(_key(self.template_event.value), "")

    def clear(self) -> None:
        """Back to adding a new notifier."""
        self.editing = None
        self.title.value = "<b>Add a notifier</b>"
        self.type.disabled = False
        self.templates = {}
        self.template.value = ""
        for event, box in self.events.items():
            box.value = event in DEFAULT_EVENTS
        self._show_fields()
        self.status.value = ""

    def submit(self) -> NotifierConfig | None:
        """Validate every field; save only if all are valid. Returns what was saved."""
        for name in self.errors:
            self._unmark(name)
        for label in (self.events_error, self.template_error):
            label.value = ""
        self._keep_template(self.template_event.value)
        cls = TYPES[self.type.value]
        args: dict[str, Any] = {}
        failed = False
        for field in cls.fields:
            value = self.inputs[field.name].value
            if self.editing is not None and field.secret and not value:
                value = self.editing.args.get(field.name)  # unchanged secret
            try:
                args[field.name] = field.parse(value if value != "" else None)
            except ConfigError as e:
                self._mark(field.name, str(e))
                failed = True
        chosen = [e for e, box in self.events.items() if box.value]
        if not chosen:
            self.events_error.value = f'<small style="{_ERROR}">events: choose at least one event</small>'
            failed = True
        message = self.templates.get("message")
        per_event = {k: v for k, v in self.templates.items() if k != "message"}
        if failed:
            self.status.value = f'<span style="{_ERROR}">Not saved: fix the fields marked in red.</span>'
            return None
        try:
            config = NotifierConfig.create(
                cls.type,
                {k: v for k, v in args.items() if v is not None},
                events=chosen,
                templates=per_event,
                message=message,
                enabled=self.editing.enabled if self.editing else True,
                id=self.editing.id if self.editing else None,
            )
        except ConfigError as e:
            if e.field in self.errors:
                self._mark(e.field, str(e))
            else:
                target = self.events_error if e.field == "events" else self.template_error
                target.value = f'<small style="{_ERROR}">{_esc(e)}</small>'
            failed = True
        if failed:
            self.status.value = f'<span style="{_ERROR}">Not saved: fix the fields marked in red.</span>'
            return None
        store = self.form.store
        if self.editing is None:
            saved = store.add(config)
        else:
            saved = store.update(
                config.id, args=config.args, events=config.events, templates=config.templates, message=message
            )
        self.clear()
        self.status.value = f"Saved {_esc(saved.type)} <code>{_esc(saved.id[:8])}</code>."
        self.form.refresh()
        return saved


class SecretUrl(w.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """A URL that holds a secret: typed as a password, shown masked under it as it is typed
    (``https://hooks.slack.com/****wxyz``: scheme and host readable), whole on "show"."""

    value = traitlets.Unicode("")

    def __init__(self, *, placeholder: str, description: str) -> None:
        style = {"description_width": "initial"}
        grow = w.Layout(flex="1 1 auto", width="auto")
        self.hidden = w.Password(placeholder=placeholder, description=description, style=style, layout=grow)
        self.shown = w.Text(placeholder=placeholder, description=description, style=style, layout=grow)
        self.reveal = w.ToggleButton(
            value=False,
            description="show",
            icon="eye",
            tooltip="show the whole URL",
            layout=w.Layout(width="auto"),
        )
        self.masked = w.HTML()
        self._row = w.HBox([self.hidden, self.reveal], layout=w.Layout(width="95%"))
        super().__init__([self._row, self.masked])
        traitlets.link((self, "value"), (self.hidden, "value"))
        traitlets.link((self, "value"), (self.shown, "value"))
        self.reveal.observe(self._swap, names="value")
        self.observe(self._mask, names="value")

    @property
    def placeholder(self) -> str:
        """What the empty field says (for an edited notifier: its URL, masked)."""
        return str(self.hidden.placeholder)

    def _swap(self, change: dict[str, Any]) -> None:
        shown = bool(change["new"])
        self._row.children = (self.shown if shown else self.hidden, self.reveal)
        self.reveal.description = "hide" if shown else "show"
        self.reveal.icon = "eye-slash" if shown else "eye"
        self._mask({"new": self.value})

    def _mask(self, change: dict[str, Any]) -> None:
        typed = str(change["new"])
        if not typed or self.reveal.value:
            self.masked.value = ""
            return
        self.masked.value = f'<small style="color:#757575">→ {_esc(mask_url(typed.strip()))}</small>'


def _key(shown: str) -> str:
    return "message" if shown == _ALL else shown


def _input(field: Field, config: NotifierConfig | None) -> w.Widget:
    label = field.label + ("" if field.required else " (optional)")
    current = config.args.get(field.name) if config else None
    style = {"description_width": "initial"}
    layout = w.Layout(width="95%")
    if field.kind == "choice":
        return w.Dropdown(
            options=list(field.choices), value=current or field.default, description=label, style=style
        )
    if field.secret:
        hint = f"unchanged ({field.show(current)})" if current else field.help
        if field.kind == "secret_url":
            return SecretUrl(placeholder=hint, description=label)
        return w.Password(value="", placeholder=hint, description=label, style=style, layout=layout)
    if isinstance(current, list):
        current = ", ".join(current)
    shown = "" if current is None else str(current)
    default = "" if field.default in (None, {}, []) else str(field.default)
    return w.Text(
        value=shown, placeholder=default or field.help, description=label, style=style, layout=layout
    )


class NotifierForm:
    """The whole form: which repo, the notifiers, the editor. Displaying it shows its widget."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        repo.ensure()
        self.store = NotifierStore(repo)
        self.header = w.HTML(
            f"<b>nbmonitor notifiers</b> in <code>{_esc(self.store.path)}</code> "
            "<small>(the same file as <code>nbmonitor-watcher notifiers</code>)</small>"
        )
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.message = w.HTML()
        self.rows: list[Row] = []
        self.list_box = w.VBox()
        self.editor = Editor(self)
        self.widget = w.VBox(
            [w.HBox([self.header, self.refresh_button]), self.message, self.list_box, self.editor.widget]
        )
        self.refresh()

    def refresh(self) -> None:
        """Show the notifiers as the file holds them now (also changes made by the CLI)."""
        try:
            configs = self.store.load()
        except CorruptRecordError as e:
            self.message.value = f'<span style="{_ERROR}">{_esc(e)}</span>'
            self.rows = []
            self.list_box.children = ()
            return
        self.message.value = "" if configs else "<small>No notifiers yet: add one below.</small>"
        self.rows = [Row(self, c) for c in configs]
        self.list_box.children = tuple(r.widget for r in self.rows)

    def guard(self, change: Callable[[], object], refresh: bool = False) -> None:
        """Make a change to the file; show its error instead of raising it into the notebook."""
        try:
            change()
        except (ConfigError, CorruptRecordError, LookupError, OSError) as e:
            self.message.value = f'<span style="{_ERROR}">{_esc(e)}</span>'
            return
        if refresh:
            self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
