"""The jupyter_server extension: the repo's REST API, read by the JupyterLab extension, and
the door through which far hosts send their runs' records.

    GET {base_url}/nbmonitor/api/runs          every run of its own, and every group with its
                                               members (torchrun ranks, ...), newest first
    GET {base_url}/nbmonitor/api/runs/<id>     one run
    GET {base_url}/nbmonitor/api/runs/<id>/usage?width=720
                                               a run's usage plot, or a group's (its members'
                                               histories side by side): {"svg", "peaks", "skipped"}
    GET {base_url}/nbmonitor/api/runs/<id>/logs?lines=50
                                               the last lines a run (or a group's members) logged
                                               and printed: {"lines": [{"t", "level", "stream",
                                               "text", "who"}], "skipped"}, oldest first
    GET {base_url}/nbmonitor/api/watcher       whether a standalone watcher runs
    POST {base_url}/nbmonitor/api/ingest       records of runs on hosts that share no
                                               filesystem with this one (nbmonitor.ingest)

Every handler requires Jupyter authentication. Reads run in a worker thread,
so a slow or large repo never blocks the server's event loop. The repo is
``$NBMONITOR_REPO``, else ``~/.nbmonitor``, unless ``c.Nbmonitor.repo`` says otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from traitlets import Unicode
from traitlets.config import Configurable

from . import _format, _process, logtail, rules
from ._notices import Notices
from ._version import version
from .errors import CorruptRecordError, NbmonitorError, RepoError
from .groups import GroupObservation, gather, role
from .ingest import MAX_BODY, Ingest, IngestError, Refused, token_matches
from .membership import group_id
from .observe import Observation, Observer, Process, Schedule, watcher_info
from .record import RunRecord, is_run_id
from .remote import RemoteRepo
from .repo import Repo
from .templates import attempt_text, blame, job_label

__all__ = ["Nbmonitor", "load"]

log = logging.getLogger("nbmonitor")
WIDTH, MIN_WIDTH, MAX_WIDTH = 720, 320, 1600  # of the usage plot, in pixels
_FIRST_LINES = 30.0  # seconds within which a new run's usage history is expected on disk
ENDED_PAGE = 50  # ended runs and groups in a page of them
_POLL = 2.0  # seconds between looks at a process that cannot be watched (the panel's poll)


class Nbmonitor(Configurable):
    """Server settings: ``c.Nbmonitor.repo = "/shared/runs"``."""

    repo = Unicode(
        None, allow_none=True, config=True, help="nbmonitor repo (default: $NBMONITOR_REPO or ~/.nbmonitor)"
    )


class _NoPlot(NbmonitorError):
    """No usage plot for the id asked: the message says what is missing (the panel shows it)."""


class _Feed:
    """What changed since a client's last look. Each run's and group's answer is kept with the
    version at which it last changed, in the order of those versions, so a poll that changes
    nothing sends back only a cursor ("<generation>:<version>") and costs the same whatever the
    repo's size, and a repo of thousands of ended runs sends them once. A cursor of another
    server (another generation), or older than the removals kept, gets everything."""

    KEPT_REMOVALS = 10_000

    def __init__(self) -> None:
        self.generation = secrets.token_hex(6)
        self.version = 0
        # By (kind, id), oldest change first: (version, text compared, answer).
        self._entries: dict[tuple[str, str], tuple[int, str, dict[str, Any]]] = {}
        self._removed: dict[tuple[str, str], int] = {}
        self._floor = 0  # a cursor below this may have missed removals

    def update(self, runs: list[dict[str, Any]], groups: list[dict[str, Any]]) -> None:
        """The answers now, every one: note which changed, appeared and went."""
        seen = set()
        for kind, items in (("runs", runs), ("groups", groups)):
            for item in items:
                seen.add((kind, str(item["id"])))
                self.put(kind, item)
        for kind, item_id in [k for k in self._entries if k not in seen]:
            self.drop(kind, item_id)

    def put(self, kind: str, item: dict[str, Any]) -> None:
        """One answer now; a new version only when it changed."""
        key = (kind, str(item["id"]))
        text = json.dumps(item, sort_keys=True)
        old = self._entries.get(key)
        if old is not None and old[1] == text:
            return
        self.version += 1
        self._entries.pop(key, None)  # to the end: the newest change
        self._entries[key] = (self.version, text, item)
        self._removed.pop(key, None)

    def drop(self, kind: str, item_id: str) -> None:
        """A run or group gone."""
        if self._entries.pop((kind, item_id), None) is None:
            return
        self.version += 1
        self._removed[(kind, item_id)] = self.version
        while len(self._removed) > self.KEPT_REMOVALS:
            # Kept in the order they went, each at a version no lower than the one before.
            oldest = next(iter(self._removed))
            self._floor = max(self._floor, self._removed.pop(oldest))

    def since(self, cursor: str | None, page: int | None = None) -> dict[str, Any]:
        """The answer for a client that last looked at ``cursor`` (None: its first look: every
        run and group still going, and the ``page`` latest of those that ended; ``more`` says
        whether older ones are left, for ``ended()``)."""
        seen = self._parse(cursor)
        answer: dict[str, Any] = {"full": seen is None, "cursor": f"{self.generation}:{self.version}"}
        found: dict[str, list[dict[str, Any]]] = {"runs": [], "groups": []}
        gone: dict[str, list[str]] = {"runs": [], "groups": []}
        if seen is None:
            ended: list[tuple[str, dict[str, Any]]] = []
            for (kind, _), (_, _, item) in self._entries.items():
                if item["status"] in _ENDED:
                    ended.append((kind, item))
                else:
                    found[kind].append(item)
            ended.sort(key=lambda pair: pair[1]["started_at"], reverse=True)
            shown = ended if page is None else ended[:page]
            for kind, item in shown:
                found[kind].append(item)
            answer["more"] = len(ended) > len(shown)
        else:
            for (kind, _), (version, _, item) in reversed(self._entries.items()):
                if version <= seen:
                    break
                found[kind].append(item)
            for (kind, item_id), version in reversed(self._removed.items()):
                if version <= seen:
                    break
                gone[kind].append(item_id)
        for kind in ("runs", "groups"):
            answer[kind] = found[kind]
            answer[f"removed_{kind}"] = gone[kind]
        return answer

    def ended(self, before: float, count: int) -> dict[str, Any]:
        """The ``count`` latest runs and groups that ended and started before ``before``."""
        older = [
            (kind, item)
            for (kind, _), (_, _, item) in self._entries.items()
            if item["status"] in _ENDED and item["started_at"] < before
        ]
        older.sort(key=lambda pair: pair[1]["started_at"], reverse=True)
        answer: dict[str, Any] = {"runs": [], "groups": [], "more": len(older) > count}
        for kind, item in older[:count]:
            answer[kind].append(item)
        return answer

    def _parse(self, cursor: str | None) -> int | None:
        """The version a cursor of this server names; None when it names none we can answer from."""
        generation, _, number = (cursor or "").partition(":")
        if generation != self.generation or not number.isdigit():
            return None
        seen = int(number)
        return seen if self._floor <= seen <= self.version else None


_ENDED = frozenset(state.value for state in rules.TERMINAL)


class _View:
    """The server's answers kept current at the cost of what changes: told of run-file changes
    and of processes' ends (nbmonitor._notices), it looks again only at those runs, at runs
    whose state changes by itself (a deadline), and at their groups; where changes are not
    told, at every run on each poll."""

    def __init__(self, repo: Repo, observer: Observer, root_dir: str | None) -> None:
        self.repo, self.observer, self.root_dir = repo, observer, root_dir
        self.feed = _Feed()
        self.notices: Notices[Process] = Notices(repo.runs_dir)
        self.schedule = Schedule()
        self._whole = True  # the next refresh looks at every run
        self._processes: dict[Process, set[str]] = {}

    def refresh(self) -> None:
        taken = self.notices.take()
        if self._whole or taken.everything or not self.notices.watching:
            self._everything()
            return
        schedule = self.schedule
        changed, gone = self.observer.update(taken.names)
        ids = {run.id for run in changed}
        for run in changed:
            schedule.index(run)
        for key in taken.ended:
            ids |= self._processes.pop(key, set())
        ids |= schedule.due(time.monotonic())
        groups = schedule.groups(ids)
        for run_id in gone:
            group = schedule.forget(run_id)
            if group is None:
                self.feed.drop("runs", run_id)
            else:
                groups.add(group)
        alone = [r for r in map(self.observer.record, ids - schedule.grouped(ids)) if r is not None]
        if not alone and not groups:
            return  # nothing changed: the cost of a poll that changes nothing
        looked = self.observer.glance(alone)
        for obs in looked:
            self.feed.put("runs", _run_json(obs, self.root_dir))
        for group in groups:
            # Each member's file checked again: its change may be on its way (ranks move together).
            names = [f"{run_id}.json" for run_id in schedule.members.get(group, ())]
            records, left = self.observer.update(names)
            for run_id in left:
                schedule.forget(run_id)
            if not records:
                self.feed.drop("groups", group)
                continue
            members = self.observer.glance(records)
            looked += members
            _, (whole,) = gather(members)
            self.feed.put("groups", _group_json(whole, self.root_dir))
        self._plan(looked)

    def _everything(self) -> None:
        self._whole = False
        self.schedule.clear()
        self._processes.clear()
        looked = self.observer.glance()
        for run in self.observer.records():
            self.schedule.index(run)
        alone, found = gather(looked)
        runs = [_run_json(o, self.root_dir) for o in alone]
        groups = [_group_json(g, self.root_dir) for g in found]
        self.feed.update(runs, groups)
        self._plan(looked)

    def _plan(self, looked: list[Observation]) -> None:
        """When to look at each run again, by itself, and which processes to be told of."""
        poll = time.monotonic() + _POLL
        for obs in looked:
            wake = obs.wake
            if obs.state not in rules.TERMINAL:
                key = self.observer.process(obs.run)
                if key is not None and key not in self._processes:
                    if self.notices.watch_process(key, key[0]):
                        self._processes[key] = set()
                    else:
                        wake = poll if wake is None else min(wake, poll)
                if key in self._processes:
                    self._processes[key].add(obs.run.id)
            self.schedule.wake(obs.run.id, wake)


class _Reader:
    """One observer of the repo, used from worker threads one at a time (it caches file reads).

    A repo that cannot be one (``$NBMONITOR_REPO`` relative, a file, another user's) is not a
    server error: every answer carries ``error``, one line saying what is wrong, for the panel.
    """

    def __init__(self, repo: Repo | RepoError, root_dir: str | None = None) -> None:
        self.repo: Repo | None = repo if isinstance(repo, Repo) else None
        self.error: str | None = None if isinstance(repo, Repo) else str(repo)
        self.root_dir = root_dir
        self._observer = None if self.repo is None else Observer(self.repo)
        self._lock = threading.Lock()
        self._view: _View | None = None

    def _usable(self) -> Repo:
        if self.repo is None:
            raise RepoError(self.error or "no repo")
        self.repo.check()
        return self.repo

    def runs(
        self, cursor: str | None = None, page: int | None = None, before: float | None = None
    ) -> dict[str, Any]:
        """Every run and group still going and the ``page`` latest that ended (all of them when
        None), or (given the ``cursor`` of an earlier answer) those that changed since, and the
        ids of those gone; or (``before``) a page of the ended runs and groups started before."""
        try:
            with self._lock:
                view = self._current()
                if before is not None:
                    answer = view.feed.ended(before, page or ENDED_PAGE)
                else:
                    answer = view.feed.since(cursor, page)
        except (RepoError, OSError) as e:
            empty = {
                "runs": [],
                "groups": [],
                "full": True,
                "cursor": None,
                "removed_runs": [],
                "removed_groups": [],
            }
            return empty | {"repo": self._path(), "error": _problem(e)}
        return answer | {"repo": self._path(), "error": None}

    def _current(self) -> _View:
        """The view of the repo, brought up to date (under the lock)."""
        repo = self._usable()
        assert self._observer is not None
        if self._view is None:
            self._view = _View(repo, self._observer, self.root_dir)
        self._view.refresh()
        return self._view

    def run(self, run_id: str) -> dict[str, Any] | None:
        try:
            record = self._usable().read_run(run_id)
        except (FileNotFoundError, CorruptRecordError, RepoError, OSError):
            return None
        assert self._observer is not None
        with self._lock:
            (seen,) = self._observer.glance([record])
        return _run_json(seen, self.root_dir)

    def usage(self, run_id: str, width: int) -> dict[str, Any]:
        """The usage plot of a run, or of a group (by its id) with its members' histories side by
        side, as the CLI's ``usage`` shows them. Raises _NoPlot saying what is missing."""
        from . import plot
        from .history import History, combine

        try:
            repo = self._usable()
        except (RepoError, OSError) as e:
            raise _NoPlot(_problem(e)) from e
        try:
            history: History = repo.read_usage(run_id)
            title = None
        except FileNotFoundError:
            name, members = self._group(run_id)
            histories = repo.read_usages(members)
            if not histories:
                raise _NoPlot(_no_history(repo, run_id, bool(members))) from None
            history, title = combine(histories), f"{name} (group of {len(members)})"
        except CorruptRecordError as e:
            raise _NoPlot(f"the usage history cannot be read: {e}") from e
        if not history.rows:  # a picture of nothing says less than this
            raise _NoPlot(_no_rows(repo, run_id))
        return {
            "svg": plot.svg(history, width, title=title, data=True),
            "peaks": plot.peak_lines(history),
            "skipped": history.skipped,
        }

    def logs(self, run_id: str, count: int) -> dict[str, Any]:
        """The last ``count`` lines of a run's log tail, or of a group's members' (each line
        saying which member). Text is data: the panel sets it as text."""
        try:
            repo = self._usable()
        except (RepoError, OSError) as e:
            raise _NoPlot(_problem(e)) from e
        members = [("", run_id)]
        if not repo.log_path(run_id).exists():
            _, members = self._group(run_id)
            if not members and not repo.run_path(run_id).exists():
                raise _NoPlot(f"no run or group {run_id}")
        found, skipped, problems = repo.read_logs(members)
        for problem in problems:
            log.warning("nbmonitor: left out %s", problem)
        return {"lines": [x.to_dict() for x in found[-count:]] if count else [], "skipped": skipped}

    def _group(self, wanted: str) -> tuple[str, list[tuple[str, str]]]:
        """The name of the group ``wanted`` and (role, run id) of each member, by rank; no
        members when there is no such group."""
        assert self._observer is not None
        with self._lock:
            view = self._current()
            members = view.schedule.members.get(wanted, ())
            records = [r for r in map(self._observer.record, members) if r is not None]
            if not records:
                return "", []
            _, (group,) = gather(self._observer.glance(records))
        return group.name, [(role(m), m.run.id) for m in group.members]

    def watcher(self) -> dict[str, Any]:
        try:
            repo = self._usable()
        except (RepoError, OSError) as e:
            return {"running": False, "repo": self._path(), "error": _problem(e)}
        info = watcher_info(repo)
        if info is None:
            return {"running": False, "repo": str(repo.path)}
        started = float(info.get("started_at", time.time()))
        return {
            "running": True,
            "repo": str(repo.path),
            "pid": info.get("pid"),
            "host": info.get("host"),
            "started_at": started,
            "uptime": time.time() - started,
        }

    def _path(self) -> str | None:
        return None if self.repo is None else str(self.repo.path)


def _problem(error: Exception) -> str:
    return str(error) if isinstance(error, RepoError) else f"cannot read the repo: {error}"


def _no_rows(repo: Repo, run_id: str) -> str:
    try:
        ended = repo.read_run(run_id).ended
    except (FileNotFoundError, CorruptRecordError, OSError):
        ended = False
    if ended:
        return f"no usage recorded for {run_id}: it ended before its first sample (one a second)"
    return f"no usage recorded yet for {run_id}: it is sampled once a second"


def _no_history(repo: Repo, run_id: str, group: bool) -> str:
    if group:
        return f"no member of group {run_id} has a usage history"
    try:
        record = repo.read_run(run_id)
    except (FileNotFoundError, CorruptRecordError, OSError):
        return f"no run or group {run_id}"
    if not record.ended and time.time() - record.started_at < _FIRST_LINES:
        return f"run {run_id} has no usage history yet: its first lines are written within seconds"
    return f"run {run_id} has no usage history (made with usage=False, or by an older nbmonitor)"


def _lab_path(path: str | None, root_dir: str | None) -> str | None:
    """A notebook's path relative to the server's root, which is what JupyterLab opens; None outside it."""
    if not path or root_dir is None:
        return path if path and not os.path.isabs(path) else None
    if not os.path.isabs(path):
        return path
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(root_dir))
    return None if relative.startswith("..") else relative.replace(os.sep, "/")


def _run_json(obs: Observation, root_dir: str | None = None) -> dict[str, Any]:
    run: RunRecord = obs.run
    ended = obs.state in rules.TERMINAL
    return {
        "id": run.id,
        "name": run.name,
        "status": obs.state.value,
        "origin": {
            "kind": run.origin.kind,
            "path": run.origin.path,
            "cell": run.origin.cell,
            "text": run.origin.describe(),
            "lab_path": _lab_path(run.origin.path, root_dir) if run.origin.kind == "notebook" else None,
        },
        "host": run.host,
        "elsewhere": _process.elsewhere(run.host, run.via),
        "pid": run.pid,
        "step": run.step,
        "total": run.total,
        "since_progress": None if ended else obs.since_progress,
        "since_progress_text": None if ended else _format.duration(obs.since_progress),
        "colour": _format.COLOURS.get(obs.state.value, _format.COLOURS["interrupted"]),
        "eta": run.eta,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "last_progress_at": run.last_progress_at,
        "error": run.error.summary() if run.error else None,
        "usage": None
        if run.usage is None
        else {
            "cpu_percent": run.usage.cpu_percent,
            "rss": run.usage.rss,
            "gpu_memory": run.usage.gpu_memory,
        },
        "group": None if run.group is None else {"id": group_id(run.group.job, run.name), "role": role(obs)},
        "waiting": run.waiting,
        "workers": [
            {
                "name": w.name,
                "pid": w.pid,
                "rank": w.rank,
                "step": w.step if w.step is not None else w.progress,
                "state": w.state,
                "exit": w.exit,
                "colour": _format.COLOURS.get(w.state, _format.COLOURS["interrupted"]),
            }
            for w in run.workers
        ],
        "stack": _stack_json(run),
        "attempt": run.attempt,
        # "attempt 2 · resumed from the checkpoint at step 1200, saved 4 min ago", or "".
        "attempt_text": attempt_text(run, run.ended_at or time.time()),
    }


def _stack_json(run: RunRecord) -> dict[str, Any] | None:
    """Where the run's thread was when it turned late or stalled, innermost frame first, or None
    when it was never seen stuck. ``stuck_in`` is None once it made progress after that."""
    if not run.stack:
        return None
    return {
        "frames": [
            {"function": frame.function, "file": frame.file, "line": frame.line, "code": frame.code}
            for frame in run.stack
        ],
        "state": run.stack_state,
        "at": run.stack_at,
        "from": run.stack_from,
        "stuck_in": run.stuck_in,
        "threads": [
            {
                "name": thread.name,
                "frames": [
                    {"function": f.function, "file": f.file, "line": f.line, "code": f.code}
                    for f in thread.frames
                ],
            }
            for thread in run.threads
        ],
    }


def _group_json(group: GroupObservation, root_dir: str | None = None) -> dict[str, Any]:
    """A group as the panel shows it: one row, its members under it, the ones to blame marked."""
    info = group.info()
    ended = group.state in rules.TERMINAL
    blamed = {m.run.id for m in group.blamed}
    return {
        "id": group.id,
        "name": group.name,
        "label": job_label(info),
        "job": info.job,
        "launcher": info.launcher,
        "mode": info.mode,
        "world_size": info.world_size,
        "status": group.state.value,
        "colour": _format.COLOURS.get(group.state.value, _format.COLOURS["interrupted"]),
        "step": group.step,
        "total": group.total,
        "median_step": group.median_step,
        "since_progress": None if ended else group.since_progress,
        "since_progress_text": None if ended else _format.duration(group.since_progress),
        "started_at": min(m.run.started_at for m in group.members),
        "blame": blame(info) if group.blamed else None,
        "problems": list(group.problems),
        "members": [_run_json(m, root_dir) | {"blamed": m.run.id in blamed} for m in group.members],
        "attempt_text": _group_attempt(group),
    }


def _group_attempt(group: GroupObservation) -> str:
    """The group's attempt and latest checkpoint, as its members that saved one say."""
    saved = [m.run for m in group.members if m.run.checkpoint is not None] or [group.members[0].run]
    run = max(saved, key=lambda r: r.checkpoint.at if r.checkpoint is not None else 0.0)
    return attempt_text(run, run.ended_at or time.time())


class _Handler(APIHandler):
    @property
    def reader(self) -> _Reader:
        return self.settings["nbmonitor_reader"]  # type: ignore[no-any-return]

    async def in_thread(self, work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, work, *args)


class RunsHandler(_Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        since = self.get_argument("since", None)
        page, before = self.get_argument("ended", None), self.get_argument("before", None)
        try:
            count = None if page is None else int(page)
            older = None if before is None else float(before)
        except ValueError:
            raise tornado.web.HTTPError(400, "ended must be a whole number, before a time") from None
        if count is not None and not 0 <= count <= 10_000:
            raise tornado.web.HTTPError(400, f"ended must be between 0 and 10000, got {count}")
        found = await self.in_thread(self.reader.runs, since, count, older)
        self.finish(found | {"version": version()})


class RunHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        if not is_run_id(run_id):
            raise tornado.web.HTTPError(400, f"not a run id: {run_id[:40]!r}")
        found = await self.in_thread(self.reader.run, run_id)
        if found is None:
            raise tornado.web.HTTPError(404, f"no run {run_id}")
        self.finish(found)


class UsageHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        if not is_run_id(run_id):
            raise tornado.web.HTTPError(400, f"not a run id: {run_id[:40]!r}")
        try:
            width = min(MAX_WIDTH, max(MIN_WIDTH, int(self.get_query_argument("width", str(WIDTH)))))
        except ValueError:
            raise tornado.web.HTTPError(400, "width must be a whole number of pixels") from None
        try:
            self.finish(await self.in_thread(self.reader.usage, run_id, width))
        except _NoPlot as e:
            raise tornado.web.HTTPError(404, str(e)) from None


class LogsHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        if not is_run_id(run_id):
            raise tornado.web.HTTPError(400, f"not a run id: {run_id[:40]!r}")
        try:
            count = min(logtail.KEEP, max(0, int(self.get_query_argument("lines", "50"))))
        except ValueError:
            raise tornado.web.HTTPError(400, "lines must be a whole number") from None
        try:
            self.finish(await self.in_thread(self.reader.logs, run_id, count))
        except _NoPlot as e:
            raise tornado.web.HTTPError(404, str(e)) from None


class IngestHandler(tornado.web.RequestHandler):
    """Takes runs' records from far hosts, with a token in the Authorization header only: the
    repo's ingest token (``nbmonitor-watcher token``, good for this door alone), or the server's
    own. No cookie is taken, so no page of another site can post here. A plain tornado handler:
    Jupyter's own handling costs a millisecond a request, and a thousand far hosts each send one
    a second."""

    def _allowed(self) -> bool:
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "token" or not given:
            return False
        ingest: Ingest | None = self.settings.get("nbmonitor_ingest")
        if ingest is not None and token_matches(ingest.repo, given):
            return True
        provider = self.settings.get("identity_provider")
        server_token = getattr(provider, "token", None) or self.settings.get("token")
        return (
            isinstance(server_token, str)
            and bool(server_token)
            and hmac.compare_digest(given.encode(), server_token.encode())
        )

    def check_xsrf_cookie(self) -> None:
        """Nothing to check: no cookie is taken here, only a token a page cannot send."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"message": self._reason, "op": None})

    async def post(self) -> None:
        if not self._allowed():
            raise tornado.web.HTTPError(
                403, reason="a token is needed: the server's, or the one nbmonitor-watcher token gives"
            )
        ingest: Ingest | None = self.settings.get("nbmonitor_ingest")
        if ingest is None:
            raise tornado.web.HTTPError(503, reason="this server has no usable nbmonitor repo")
        address = self.request.remote_ip or ""
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                None, ingest.apply, self.request.body, address
            )
        except (IngestError, Refused) as e:
            code = 403 if isinstance(e, Refused) else (413 if len(self.request.body) > MAX_BODY else 400)
            log.warning("nbmonitor: refused records from %s: %s", address, e)
            self.set_status(code)
            found = re.match(r"operation (\d+):", str(e))
            self.finish({"message": str(e), "op": int(found.group(1)) if found else None})
            return
        self.finish(answer)


class WatcherHandler(_Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.finish(await self.in_thread(self.reader.watcher))


def load(server_app: ServerApp) -> None:
    """Add the handlers to a running Jupyter server."""
    settings = Nbmonitor(parent=server_app)
    try:
        repo: Repo | RepoError = Repo(settings.repo or None)
        if isinstance(repo, RemoteRepo):
            raise RepoError(f"this server's repo must be a directory, not a server ({repo.server.base})")
    except RepoError as e:  # said in every answer, and shown in the panel
        server_app.log.warning("nbmonitor: %s", e)
        repo = e
    web_app = server_app.web_app
    web_app.settings["nbmonitor_reader"] = _Reader(repo, server_app.root_dir)
    web_app.settings["nbmonitor_ingest"] = Ingest(repo) if isinstance(repo, Repo) else None
    base = url_path_join(web_app.settings["base_url"], "nbmonitor", "api")
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "runs"), RunsHandler),
            (url_path_join(base, "runs", r"([^/]+)"), RunHandler),
            (url_path_join(base, "runs", r"([^/]+)", "usage"), UsageHandler),
            (url_path_join(base, "runs", r"([^/]+)", "logs"), LogsHandler),
            (url_path_join(base, "watcher"), WatcherHandler),
            (url_path_join(base, "ingest"), IngestHandler),
        ],
    )
    server_app.log.info("nbmonitor: serving %s at %s", getattr(repo, "path", repo), base)
