"""``%%watch`` and ``%watch``: monitored cells in IPython and Jupyter.

Loaded by ``%load_ext nbmonitor`` (see ``nbmonitor.load_ipython_extension``);
nothing starts until a cell is watched.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import threading
import time
import weakref
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult, InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, kwds, magic_arguments

from . import _format
from ._tqdm import TqdmProbe, attribute_bars, restore_bars
from ._values import count_arg, seconds_arg
from .kernel import KernelAgent
from .run import Run, cell_number, current_run

__all__ = ["WatchMagics", "load", "unload"]

_agents: weakref.WeakKeyDictionary[InteractiveShell, KernelAgent] = weakref.WeakKeyDictionary()

_ETA = "most seconds between two progress reports (none: it cannot stall)"
_GRACE = "grace after a missed ETA (default: 10%% of it, 2 s to 60 s)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as a one-line UsageError naming the magic."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# %watch auto|off|status: subcommands, which IPython's magic_arguments decorators cannot make.
LINE = _Parser(prog="%watch", add_help=False)
_commands = LINE.add_subparsers(dest="command", required=True, metavar="auto|off|status")
_auto = _commands.add_parser(
    "auto",
    prog="%watch auto",
    add_help=False,
    description="every cell running longer than this becomes a run",
)
_auto.add_argument(
    "--after",
    type=seconds_arg("after", zero_ok=True),
    default=60.0,
    metavar="SECONDS",
    help="seconds (default 60)",
)
_commands.add_parser("off", prog="%watch off", add_help=False, description="stop that")
_commands.add_parser(
    "status",
    prog="%watch status",
    add_help=False,
    description="this kernel's runs, the watcher, recent events",
)


def _line_help() -> str:
    """The line magic's commands, from their parsers: for ``%watch?`` and the end of ``%%watch?``."""
    lines = ["Line magic:", ""]
    for sub in (_auto, *(p for name, p in _commands.choices.items() if name != "auto")):
        usage = " ".join(sub.format_usage().split()).removeprefix("usage: ")
        lines.append(f"  {usage:32}  {sub.description}")
    return "\n".join(lines)


@magics_class
class WatchMagics(Magics):
    """``%%watch`` and ``%watch``; ``%%watch?`` is generated from their arguments."""

    def __init__(self, shell: InteractiveShell, agent: KernelAgent) -> None:
        super().__init__(shell)
        self.agent = agent

    @magic_arguments("%watch")  # IPython puts one more % before it: %%watch
    @kwds(epilog=_line_help())
    @argument("--eta", type=seconds_arg("eta"), metavar="SECONDS", help=_ETA)
    @argument("--name", metavar="NAME", help="the run's name (default: notebook and cell number)")
    @argument("--total", type=count_arg, metavar="N", help="steps at completion, for the progress bar")
    @argument("--grace", type=seconds_arg("grace", zero_ok=True), metavar="SECONDS", help=_GRACE)
    @argument("--no-usage", action="store_true", help="do not sample CPU, memory and GPU")
    @argument("--no-logs", action="store_true", help="keep no tail of the cell's output and logging")
    @argument("--quiet", action="store_true", help="monitor, but show nothing")
    @line_cell_magic
    def watch(self, line: str, cell: str | None = None) -> Any:
        """Monitor a cell, or every long cell, with nbmonitor.

        The cell becomes a monitored run with a live display: progress, rate,
        elapsed time, time since the last progress against the promised ETA,
        CPU, memory and GPU use. If no progress comes within ETA + grace the
        run is "stalled" and the configured notifiers hear of it. Inside the
        cell, nbmonitor.report_progress(), nbmonitor.track(...) and tqdm bars
        count as progress. An exception fails the run (the traceback shows as
        usual), an interrupt marks it interrupted, and a kernel restarted or
        shut down while the cell runs marks it crashed. Arguments are quoted
        as in a shell: --name "train resnet50".
        """
        __tracebackhide__ = True
        if cell is None:
            return self._line(line)
        return self._cell(line, cell)

    def _cell(self, line: str, cell: str) -> Any:
        __tracebackhide__ = True
        args = parse_cell(line)
        if self.agent.auto is not None:
            self.agent.auto.cell_started(None)  # this cell has its own run
        run = Run(
            name=args.name or self._cell_name(),
            expect_next_in=args.eta,
            grace=args.grace,
            total=args.total,
            usage=not args.no_usage,
            logs=not args.no_logs,
        )
        attribute_bars(current_run)  # tqdm bars opened from now on count for the run they were opened in
        probe = TqdmProbe(run, time.time(), current_run)
        run.count_also(probe, lambda: probe.total)
        watched = self.agent.start_cell(run, show=not args.quiet, usage=not args.no_usage)
        try:
            with run:
                return self._execute(cell)
        finally:
            self.agent.finish_cell(watched)

    def _cell_name(self) -> str:
        session = self.shell.user_ns.get("__session__") if self.shell else None
        count = cell_number(self.shell)
        where = str(session).replace("\\", "/").rsplit("/", 1)[-1] if session else None
        cell = f"cell {count}" if count is not None else "cell"
        return f"{where} {cell}" if where else cell

    def _execute(self, cell: str) -> Any:
        """Run the cell's code like IPython does: magics inside work, the last expression is the result."""
        __tracebackhide__ = True
        shell = self.shell
        assert shell is not None
        source = shell.transform_cell(cell)
        filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
        tree = shell.transform_ast(shell.compile.ast_parse(source, filename=filename))
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        # The builtin compile() with the shell's flags: what IPython's compiler does with a tree.
        flags = shell.compile.flags
        exec(compile(tree, filename, "exec", flags, dont_inherit=True), shell.user_ns)
        if last is not None:
            return eval(compile(last, filename, "eval", flags, dont_inherit=True), shell.user_ns)
        return None

    def _line(self, line: str) -> None:
        args = LINE.parse_args(_words(LINE, line))
        if args.command == "auto":
            self.agent.watch_long_cells(args.after)
            print(f"nbmonitor: every cell that runs longer than {_format.duration(args.after)} is now a run")
        elif args.command == "off":
            self.agent.watch_long_cells(None)
            print("nbmonitor: automatic runs are off")
        else:
            print(self._status())

    def _status(self) -> str:
        runs = self.agent.writer.runs()
        lines = [f"nbmonitor: {len(runs)} open run(s) in this kernel"]
        for run in runs:
            record = run.record()
            cell = self.agent.cells.get(run.id)
            state = cell.state if cell else record.status
            since = cell.since_progress if cell else 0.0
            lines.append(
                f"  {_format.one_line(record.name)}  {state}  "
                f"step {_format.steps(record.step, record.total)}  "
                f"last progress {_format.duration(since)} ago  [run {record.id[:8]}]"
            )
        auto = self.agent.auto
        lines.append(
            f"automatic runs: after {_format.duration(auto.after)}" if auto else "automatic runs: off"
        )
        watcher = self.agent.watcher_note()
        lines.append(f"standalone watcher: {'running, ' + watcher if watcher else 'not running'}")
        if self.agent.events:
            lines.append("recent events:")
            lines += [
                f"  {e.kind} {_format.one_line(e.run.name)} [run {e.run.id[:8]}]" for e in self.agent.events
            ]
        if self.agent.notes.lines:
            lines.append("recent warnings:")
            lines += [f"  {note}" for note in self.agent.notes.lines]
        return "\n".join(lines)


def load(shell: InteractiveShell) -> KernelAgent:
    """Register the magics and hooks on ``shell``; start nothing heavy."""
    kernel = getattr(shell, "kernel", None)
    agent = KernelAgent(live=kernel is not None)
    agent.attach(kernel)
    shell.register_magics(WatchMagics(shell, agent))

    def pre_run_cell(info: ExecutionInfo) -> None:
        agent.executing = True
        if agent.auto is not None and not (info.raw_cell or "").lstrip().startswith("%watch"):
            agent.auto.cell_started(cell_number(shell))

    def post_run_cell(result: ExecutionResult) -> None:
        if agent.auto is not None:
            agent.auto.cell_ended(result.error_in_exec)
        if result.error_in_exec is not None:
            # IPython keeps the traceback, so a track() loop the error left is never freed.
            agent.writer.fail_loops(threading.main_thread(), result.error_in_exec)
        agent.executing = False

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    agent.hooks = {"pre_run_cell": pre_run_cell, "post_run_cell": post_run_cell}
    _agents[shell] = agent
    return agent


def unload(shell: InteractiveShell) -> None:
    """Remove the hooks and stop the kernel's share of monitoring."""
    agent = _agents.pop(shell, None)
    if agent is None:
        return
    for event, hook in agent.hooks.items():
        shell.events.unregister(event, hook)
    agent.detach()
    restore_bars()
    assert shell.magics_manager is not None
    magics = shell.magics_manager.magics
    magics["line"].pop("watch", None)
    magics["cell"].pop("watch", None)


def _words(parser: argparse.ArgumentParser, line: str) -> list[str]:
    """The magic's arguments, quoted as in a shell: ``--name "train resnet50"``."""
    try:
        return shlex.split(line)
    except ValueError as e:  # an unclosed quote
        raise UsageError(f"{parser.prog}: {e}: {line.strip()[:80]}") from None


def parse_cell(line: str) -> argparse.Namespace:
    """The arguments of a ``%%watch`` line, quoted as in a shell; a bad one is a one-line
    UsageError naming ``%%watch``."""
    parser: argparse.ArgumentParser = WatchMagics.watch.parser  # built by @magic_arguments
    try:
        return parser.parse_args(_words(parser, line))
    except UsageError as e:
        raise UsageError(f"%%watch: {str(e).removeprefix('%watch: ')}") from None
