"""tqdm bars as progress of the run that opened them, read from the writer thread: no cost per item.

tqdm keeps its open bars in ``tqdm._instances``, a WeakSet guarded by
``tqdm.get_lock()``, and each bar's count in ``n``. ``attribute_bars()``
swaps that set for one that also notes, in the thread that opens a bar,
which run is current there (``nbmonitor.current_run()``), and the final
count of each bar that closes; a ``TqdmProbe`` then adds up how far the bars
opened under its run have moved, also those that opened and closed between
two of its looks. The set is read the way tqdm's own monitor thread reads
it: a copy taken under that lock, so a bar opened meanwhile never makes a
read fail.

A bar opened before the swap (tqdm imported inside the very cell, say) has
no note: it counts for a run when it was opened after the run started.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TqdmProbe", "attribute_bars", "restore_bars"]


class _Bars(weakref.WeakSet[Any]):
    """tqdm's set of open bars, noting for each the run current where it was opened, and the
    final counts of the bars that close, for the runs a probe counts bars for."""

    def __init__(self, bars: Iterable[Any], current: Callable[[], Any]) -> None:
        self.current = current
        self.owners: weakref.WeakKeyDictionary[Any, weakref.ReferenceType[Any] | None] = (
            weakref.WeakKeyDictionary()
        )
        #: Per probed run: (id, final count) of each bar of it that closed, until the probe reads them.
        self.closed: weakref.WeakKeyDictionary[Any, list[tuple[int, int]]] = weakref.WeakKeyDictionary()
        super().__init__()
        for bar in bars:  # opened before: who opened them is not known
            super().add(bar)

    def add(self, item: Any) -> None:
        run = self.current()
        self.owners[item] = None if run is None else weakref.ref(run)
        super().add(item)

    def remove(self, item: Any) -> None:
        super().remove(item)
        owner = self.owners.get(item)
        run = owner() if owner is not None else None
        if run is not None and run in self.closed:
            self.closed[run].append((id(item), _count(item)))

    def probed(self, run: Any) -> list[tuple[int, int]]:
        """The bars of ``run`` closed since the last call; from now on, they are kept for it."""
        closed = self.closed.setdefault(run, [])
        self.closed[run] = []
        return closed

    def copy(self) -> weakref.WeakSet[Any]:  # type: ignore[override]  # a plain set will do
        """A plain set of the same bars, as tqdm's monitor thread and the probe read it."""
        return weakref.WeakSet(self)


def _tqdm_class() -> Any:
    module = sys.modules.get("tqdm.std")
    return None if module is None else getattr(module, "tqdm", None)


def attribute_bars(current: Callable[[], Any]) -> bool:
    """Note the run of every tqdm bar opened from now on; False while tqdm is not imported."""
    cls = _tqdm_class()
    if cls is None:
        return False
    with cls.get_lock():
        if not isinstance(cls._instances, _Bars):
            cls._instances = _Bars(cls._instances, current)
    return True


def restore_bars() -> None:
    """Give tqdm back a plain set of its open bars (``%unload_ext nbmonitor``)."""
    cls = _tqdm_class()
    if cls is None:
        return
    with cls.get_lock():
        if isinstance(cls._instances, _Bars):
            cls._instances = weakref.WeakSet(cls._instances)


class TqdmProbe:
    """How far the tqdm bars opened under ``run`` have moved, in total.

    Called from the writer thread. A bar's last count is kept (with the bar)
    until the bar is seen closed, so its final steps are counted before it is freed.
    ``total`` is the bar's total while the run has had one bar only (a loop of one tqdm, the
    common case); with nested or successive bars their counts add up to no total of theirs.
    """

    def __init__(self, run: Any, started: float, current: Callable[[], Any]) -> None:
        self._run = weakref.ref(run)
        self._started = started  # wall time, as tqdm's start_t
        self._current = current
        self._last: dict[Any, int] = {}
        self.count = 0
        self.total: int | None = None
        self._bars: set[int] = set()  # ids of the bars seen, up to two: more say no more
        self._closed()  # from now on, the bars of the run that close are kept for it

    def __call__(self) -> int:
        read = self._read()
        if read is None:
            return self.count  # not readable this time: nothing is forgotten, nothing added twice
        mine, closed = read
        self._note_bars([bar_id for bar_id, _ in closed], mine)
        seen = {id(bar) for bar in self._last}
        for bar_id, n in closed:
            if bar_id not in seen:  # opened and closed between two looks
                self.count += n
        for bar in [*mine.values(), *(b for b in self._last if id(b) not in mine)]:
            n, last = _count(bar), self._last.get(bar, 0)
            self.count += n - last if n >= last else n  # a bar that went back was reset: from 0
            self._last[bar] = n
        for bar in [b for b in self._last if id(b) not in mine]:
            del self._last[bar]  # closed: its final count is in
        return self.count

    def _note_bars(self, closed: list[int], mine: dict[int, Any]) -> None:
        if len(self._bars) > 1:
            return
        self._bars.update(closed[:2], list(mine)[:2])
        if len(self._bars) != 1:
            self.total = None
        elif mine:
            (bar,) = mine.values()
            total = getattr(bar, "total", None)
            self.total = int(total) if isinstance(total, int | float) and total > 0 else None

    def _read(self) -> tuple[dict[int, Any], list[tuple[int, int]]] | None:
        """The open bars of the run (by id: tqdm bars compare equal by screen position) and the
        final counts of those closed since the last read, or None if tqdm's set is not readable."""
        cls, run = _tqdm_class(), self._run()
        if cls is None or run is None:
            return {}, []
        attribute_bars(self._current)  # tqdm may have been imported since the cell started
        try:
            with cls.get_lock():  # as tqdm's monitor thread reads it: a copy, under the lock
                instances = cls._instances
                bars = instances.copy()
                owners = getattr(instances, "owners", None)
                known = {id(bar): owners.get(bar, _UNKNOWN) for bar in bars} if owners is not None else {}
                closed = instances.probed(run) if isinstance(instances, _Bars) else []
        except (AttributeError, RuntimeError, TypeError):  # not the tqdm we know
            return None
        mine = {
            id(bar): bar
            for bar in bars
            # Like tqdm's monitor: a bar counts once its __init__ is done (start_t is set last).
            if hasattr(bar, "start_t") and self._mine(bar, known.get(id(bar), _UNKNOWN), run)
        }
        return mine, closed

    def _closed(self) -> None:
        cls, run = _tqdm_class(), self._run()
        if cls is not None and run is not None and isinstance(getattr(cls, "_instances", None), _Bars):
            with cls.get_lock():
                cls._instances.probed(run)

    def _mine(self, bar: Any, owner: Any, run: Any) -> bool:
        if owner is not _UNKNOWN:
            return owner is not None and owner() is run
        # Opened before tqdm's set was ours: by when it was opened.
        start = getattr(bar, "start_t", None)
        return isinstance(start, int | float) and start >= self._started


_UNKNOWN = object()


def _count(bar: Any) -> int:
    n = getattr(bar, "n", 0)
    return int(n) if isinstance(n, int | float) else 0
