"""One owner per data dir: the lock that ``movierec up`` (and ``demo``, ``evaluate``: every ``cli.stack.Stack``)
holds on its data dir while it runs.

    <data dir>/movierec.lock      flock(LOCK_EX) held by the stack's open file, its text the holder's PID

Two stacks on one data dir would run two redis-servers on one AOF, each seeing different datasets, their writes
merged on the next load. The lock is the kernel's (``fcntl.flock``): it goes with the open file, so a holder
that dies, however it dies, releases it, and the next start takes it over and writes its own PID there. The
embedded redis-server inherits the open file (``EmbeddedRedis.keep_fds``), so a supervisor killed outright keeps
its data dir locked until its redis-server, stopping by PR_SET_PDEATHSIG, has flushed and exited too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "movierec.lock"
"""The lock's file, in the data dir."""

PID_READ_S = 0.5
"""How long a refused start waits for the holder to write its PID (it takes the lock, then writes)."""


class DataDirBusy(RuntimeError):
    """Another process holds the data dir's lock; ``holder`` is its PID (None when it could not be read)."""

    def __init__(self, data_dir: Path, holder: int | None) -> None:
        self.data_dir = data_dir
        self.holder = holder
        if holder is None:
            who = "another process (its PID unreadable)"
        elif _alive(holder):
            who = f"PID {holder}"
        else:
            who = f"PID {holder}, which has exited; a process it started (its redis-server, stopping) still holds it"
        super().__init__(
            f"data dir {data_dir} is in use by {who}: one movierec stack per data dir "
            f"(stop that one, or give this one another --data-dir)"
        )


class DataDirLock:
    """``acquire()`` takes the lock or raises DataDirBusy; ``release()`` lets it go (both idempotent)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> int:
        """Take the lock without waiting, write this process's PID in it, and answer the lock's file descriptor
        (a child given it holds the lock too, until it exits)."""
        if self.fd is not None:
            return self.fd
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirBusy(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)  # a dead holder's PID is replaced, never appended to
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # no stale PID for a reader while nobody holds it
        os.close(self.fd)  # closing the last descriptor of the open file drops the flock
        self.fd = None


def _read_pid(fd: int) -> int | None:
    deadline = time.monotonic() + PID_READ_S
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
