"""Made-up run records, and a world of them (a repo, a clock, live processes) for the watcher."""

from __future__ import annotations

from typing import Any

from nbmonitor.events import Event
from nbmonitor.record import Origin, RunRecord
from nbmonitor.repo import Repo
from nbmonitor.watcher import Watcher

from .helpers import FakeClock

__all__ = ["BOOT", "HOST", "World", "sample"]


def sample(**changes: Any) -> RunRecord:
    record = RunRecord(
        id="0" * 32,
        name="train",
        origin=Origin("script", path="/home/u/train.py", argv=("--lr", "3")),
        host="box",
        pid=42,
        process_start=1000.5,
        boot_id="b",
        started_at=2000.0,
        status="running",
        eta=3.0,
        grace=None,
        step=10,
        total=100,
        progress=10,
        last_progress_at=2010.0,
        last_progress_mono=55.0,
        updated_at=2010.5,
    )
    return record.with_changes(**changes)


HOST, BOOT = "box", "boot-1"


class World:
    """A repo, a clock, the set of live processes, and watchers over them."""

    def __init__(self, repo: Repo, clock: FakeClock) -> None:
        self.repo, self.clock = repo, clock
        self.dead: set[int] = set()
        self.events: list[Event] = []

    def watcher(self, **kwargs: Any) -> Watcher:
        kwargs.setdefault("host", HOST)
        kwargs.setdefault("boot_id", BOOT)
        return Watcher(
            self.repo,
            emit=self.events.append,
            wall=self.clock.wall,
            mono=self.clock.mono,
            alive=lambda pid, start, ticks: pid not in self.dead,
            **kwargs,
        )

    def write(self, run_id: str = "a" * 32, **changes: Any) -> RunRecord:
        fields: dict[str, Any] = {
            "id": run_id,
            "host": HOST,
            "boot_id": BOOT,
            "eta": 1.0,
            "write_lag": 0.0,  # a file as fresh as its run: deadlines exactly at ETA + grace
            "progress": 0,
            "step": 0,
            "last_progress_at": self.clock.wall(),
            "last_progress_mono": self.clock.mono(),
        }
        record = sample(**(fields | changes))
        self.repo.write_run(record)
        return record

    def progress(self, record: RunRecord) -> RunRecord:
        moved = record.with_changes(
            progress=record.progress + 1,
            step=record.step + 1,
            last_progress_at=self.clock.wall(),
            last_progress_mono=self.clock.mono(),
        )
        self.repo.write_run(moved)
        return moved

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]
