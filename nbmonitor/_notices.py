"""Being told of changes rather than looking for them: a folder's files (inotify) and processes'
deaths (pidfd), on Linux; elsewhere, and on filesystems that do not report changes made by
other hosts (NFS, SMB, ...), ``Notices`` says why not and its user polls.

``Notices.wait(timeout)`` blocks until a file of the folder changes, a watched process ends,
``wake()`` is called from another thread, or the timeout passes; ``take()`` then says what
happened. It costs nothing while nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import selectors
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["Notices", "Taken", "filesystem"]

log = logging.getLogger("nbmonitor.notices")

K = TypeVar("K", bound=Hashable)  # how the caller names a process it watches

# <sys/inotify.h>
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = 0o2000000
#: A run file is written whole under a temporary name and renamed into place (moved to), or
#: removed (deleted, moved away); appended files (usage, logs) are not watched.
_MASK = _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
_EVENT = struct.Struct("iIII")

#: Filesystems on which a change made by another host is not reported to this one.
_SILENT = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "lustre", "gpfs", "beegfs", "ceph"}
)


def filesystem(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``nfs4``, ...), from /proc/self/mountinfo;
    None where that cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, right.split()[0]
    return kind


@dataclass
class Taken(Generic[K]):
    """What happened since the last ``take()``."""

    names: set[str] = field(default_factory=set)  # files of the folder written, added or removed
    ended: list[K] = field(default_factory=list)  # keys of watched processes that ended
    #: Some changes may have been missed (the kernel's queue overflowed, the folder was
    #: replaced): look at every file.
    everything: bool = False


class Notices(Generic[K]):
    """Changes to the files of one folder, and the ends of processes, as they happen."""

    def __init__(self, folder: Path, *, files: bool = True) -> None:
        self.folder = folder
        #: Why file changes are not reported here (the caller polls), or None when they are.
        self.why_not: str | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()  # made close-on-exec by Python
        for end in (self._wake_r, self._wake_w):
            os.set_blocking(end, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._inotify: int | None = None
        self._watch: int | None = None
        self._libc: ctypes.CDLL | None = None
        self._pidfds: dict[K, int] = {}  # process key -> its pidfd
        self._keys: dict[int, K] = {}
        self._pidfd_trouble: str | None = None
        self._everything = False
        if not files:
            self.why_not = "change notices are turned off"
        else:
            self._start_inotify()

    # -- files ---------------------------------------------------------------------

    @property
    def files(self) -> bool:
        """Whether changes to the folder's files are reported (else the caller must poll)."""
        return self._inotify is not None

    def _start_inotify(self) -> None:
        kind = filesystem(self.folder)
        if kind in _SILENT or (kind or "").startswith("fuse."):
            self.why_not = f"the repo is on {kind}, which does not report changes made on other hosts"
            return
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (OSError, AttributeError, TypeError):
            self.why_not = "this system has no inotify"
            return
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            self.why_not = f"inotify is not available ({os.strerror(ctypes.get_errno())})"
            return
        self._libc, self._inotify = libc, fd
        self._selector.register(fd, selectors.EVENT_READ, "files")
        self._add_watch()

    def _add_watch(self) -> bool:
        """Watch the folder (again, after it was removed); False while it is not there."""
        assert self._libc is not None
        assert self._inotify is not None
        wd = self._libc.inotify_add_watch(self._inotify, os.fsencode(self.folder), _MASK)
        if wd < 0:
            self._watch = None
            return False
        self._watch = wd
        return True

    @property
    def watching(self) -> bool:
        """Whether the folder is watched now (False while it does not exist: poll for it)."""
        if self._inotify is None:
            return False
        if self._watch is None and self._add_watch():
            self._everything = True  # it came back: what is in it now was not reported
        return self._watch is not None

    def _read_files(self, taken: Taken[K]) -> None:
        assert self._inotify is not None
        while True:
            try:
                data = os.read(self._inotify, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + size].rstrip(b"\0").decode(errors="surrogateescape")
                offset += size
                if mask & _IN_Q_OVERFLOW:
                    taken.everything = True
                elif mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF):
                    if wd == self._watch:
                        self._watch = None  # gone: watched again when it is back
                        taken.everything = True
                elif name:
                    taken.names.add(name)

    # -- processes -----------------------------------------------------------------

    def watch_process(self, key: K, pid: int) -> bool:
        """Be told when process ``pid`` ends (``key`` comes back in ``Taken.ended``). False when
        that cannot be done here (no pidfd, too many open files): poll it. The caller checks the
        process is the one it means *after* this, so a pid reused before now is not mistaken."""
        if key in self._pidfds:
            return True
        try:
            fd = os.pidfd_open(pid)
        except AttributeError:
            self._say_pidfd("this Python or system has no pidfd_open")
            return False
        except ProcessLookupError:
            return False  # already gone: the caller's own check says so
        except OSError as e:
            if e.errno == errno.EMFILE and _more_files():
                return self.watch_process(key, pid)
            self._say_pidfd(e.strerror or str(e))
            return False
        self._pidfds[key], self._keys[fd] = fd, key
        self._selector.register(fd, selectors.EVENT_READ, "process")
        return True

    def forget_process(self, key: K) -> None:
        fd = self._pidfds.pop(key, None)
        if fd is not None:
            self._close_pidfd(fd)

    @property
    def processes(self) -> int:
        return len(self._pidfds)

    def _say_pidfd(self, why: str) -> None:
        if self._pidfd_trouble != why:
            self._pidfd_trouble = why
            log.info("nbmonitor: cannot be told when processes end (%s); checking them every poll", why)

    def _close_pidfd(self, fd: int) -> None:
        self._keys.pop(fd, None)
        self._selector.unregister(fd)
        os.close(fd)

    # -- waiting -------------------------------------------------------------------

    def wait(self, timeout: float | None) -> bool:
        """Block until something happened or ``timeout`` seconds passed (None: no limit); True
        when something happened (``take()`` says what)."""
        if self._everything:
            return True
        ready = self._selector.select(None if timeout is None else max(timeout, 0.0))
        return bool(ready)

    def take(self) -> Taken[K]:
        """What happened since the last call; never blocks."""
        taken: Taken[K] = Taken(everything=self._everything)
        self._everything = False
        for key, _ in self._selector.select(0):
            if key.data == "files":
                self._read_files(taken)
            elif key.data == "process":
                ended = self._keys[key.fd]
                self._pidfds.pop(ended, None)
                self._close_pidfd(key.fd)
                taken.ended.append(ended)
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
        return taken

    def wake(self) -> None:
        """Make a ``wait()`` in another thread return now (to stop, say)."""
        with contextlib.suppress(BlockingIOError):  # already woken
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        for fd in list(self._keys):
            self._close_pidfd(fd)
        self._pidfds.clear()
        if self._inotify is not None:
            self._selector.unregister(self._inotify)
            os.close(self._inotify)
            self._inotify = None
        self._selector.unregister(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._selector.close()


def _more_files() -> bool:
    """Raise this process's open-file limit to its hard limit, once; True if it grew."""
    import resource  # Unix only, as pidfds are

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft >= hard:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return False
    return True
