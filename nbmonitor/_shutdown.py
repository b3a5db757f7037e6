"""A kernel shut down or restarted while a cell runs: that cell's runs crashed, and the kernel says so.

Jupyter interrupts a busy kernel before it asks it to shut down (a restart
is a shutdown too), so an interrupted run first waits a moment for such a
request. When one comes while a cell runs, the cell's runs are cut off
(written as still running, and never again), claimed as crashed at once, and
their notifications sent before the kernel goes, waiting a bounded time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._writer import Writer, Written
from .events import Event
from .repo import Repo

__all__ = ["SHUTDOWN_DELIVERY", "SHUTDOWN_SETTLE", "ShutdownHook"]

#: Seconds an interrupted run waits for a shutdown request before it counts as interrupted.
SHUTDOWN_SETTLE = 0.5
#: Seconds a kernel being shut down waits for its "crashed" notifications to go out.
SHUTDOWN_DELIVERY = 2.0

log = logging.getLogger("nbmonitor")


class ShutdownHook:
    """Hears a kernel's shutdown requests, in ipykernel's control handlers."""

    def __init__(
        self,
        writer: Writer,
        executing: Callable[[], bool],
        crashed: Callable[[list[Written]], list[tuple[Repo, Event]]],
    ) -> None:
        self.writer = writer
        self._executing = executing  # is a cell running now?
        self._crashed = crashed  # claim these runs crashed and send the news; returns what it claimed
        self._shutdown = threading.Event()
        self._remove: Callable[[], None] | None = None

    def install(self, kernel: Any) -> bool:
        """Hear ``kernel``'s shutdown requests; False if it has no such handler."""
        handlers = getattr(kernel, "control_handlers", None)
        original = handlers.get("shutdown_request") if isinstance(handlers, dict) else None
        if original is None or self._remove is not None:
            return False
        assert isinstance(handlers, dict)

        def shutdown_request(*args: Any, **kwargs: Any) -> Any:
            try:
                self.on_shutdown()
            except Exception:  # never stand in the way of a shutdown
                log.exception("nbmonitor could not record the runs cut off by the shutdown")
            return original(*args, **kwargs)

        def remove() -> None:
            if handlers.get("shutdown_request") is shutdown_request:
                handlers["shutdown_request"] = original
            self.writer.shutting_down = None

        handlers["shutdown_request"] = shutdown_request
        self.writer.shutting_down = lambda: self._shutdown.wait(SHUTDOWN_SETTLE)
        self._remove = remove
        return True

    def remove(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def on_shutdown(self) -> None:
        """If a cell is running, its runs are cut off, claimed crashed, and the news sent."""
        cut = self.writer.cut_all() if self._executing() else []
        self._shutdown.set()  # an interrupt waiting in Run.end now knows it was no interrupt
        if not cut:
            return
        claimed = self._crashed(cut)
        deadline = time.monotonic() + SHUTDOWN_DELIVERY
        while claimed and time.monotonic() < deadline and any(_queued(*c) for c in claimed):
            time.sleep(0.02)


def _queued(repo: Repo, event: Event) -> bool:
    """Some notifier's delivery of ``event`` still waits in the outbox."""
    return bool(repo.pending_of(event.subject, event.key))
