"""Real Jupyter kernels for tests (jupyter_client), and readers of what they send the front end."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

from nbmonitor.widget import RUN_MIME

from .helpers import ROOT, child_env

__all__ = ["WIDGET_MIME", "Kernel", "displays", "idle", "plots", "run_views", "snapshots"]


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class Kernel:
    """A real ipykernel; ``run`` executes code and returns every iopub message until it is idle."""

    def __init__(self, repo: Path, env: dict[str, str] | None = None) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=child_env(repo) | (env or {}), cwd=str(ROOT))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        msg_id = self.client.execute(code)
        messages = self.read(msg_id, idle, timeout, "idle")
        while True:  # a late reply to an earlier request (a cell cut off by a restart) is not ours
            reply = self.client.get_shell_msg(timeout=10)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"], messages

    def read(
        self, msg_id: str, until: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> list[dict[str, Any]]:
        """The iopub messages of request ``msg_id``, up to the first for which ``until`` is true."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout} s; got {messages[-3:]}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(msg)
            if until(msg):
                return messages

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def idle(msg: dict[str, Any]) -> bool:
    return bool(msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")


def run_views(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every state a run's display showed, in order: its RUN_MIME data, first shown then updated."""
    return [
        m["content"]["data"][RUN_MIME]
        for m in messages
        if m["msg_type"] in ("display_data", "update_display_data") and RUN_MIME in m["content"]["data"]
    ]


def displays(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["content"]["data"] for m in messages if m["msg_type"] == kind]


def snapshots(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The final snapshots of the runs' displays (the updates that say their runs ended)."""
    return [d for d in displays(messages, "update_display_data") if d.get(RUN_MIME, {}).get("ended")]


def plots(messages: list[dict[str, Any]]) -> list[str]:
    """The usage plots a cell drew, in order (SVG text)."""
    return [d["image/svg+xml"] for d in displays(messages, "display_data") if "image/svg+xml" in d]
