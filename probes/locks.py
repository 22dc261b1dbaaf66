"""One writer per directory: an OS lock on DIR/.lock that names its holder.

    with locks.hold(run_dir, what="run"):
        ...  # only this process writes run_dir

`hold` takes `fcntl.flock` on DIR/.lock (exclusive, never waiting) and writes the holder's host,
PID and start time into the file. A second writer, in this or another process (on any machine
when the file system's locks span machines: NFS v4, Lustre, GPFS, CephFS), gets a `UserError`
naming the holder. The kernel drops the lock when its holder dies, however it dies, so a killed
run never blocks its own rerun: the lock file it leaves names a dead holder, and `hold` takes it
over and yields that stale holder (a clean release empties the file, so `hold` yields None). Where the file system refuses `flock`, the holder recorded
in the file decides: a live PID on this host, or any holder on another host, keeps the lock; a
dead PID on this host is a stale lock and is taken over.

A process may nest `hold` on the same directory (the demo generates, then trains); the lock is
released when the outermost block ends. The lock file stays (it is tiny and names the last
holder) unless `hold` created the directory and nothing else was written there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from probes.errors import UserError
from probes.schema import LOCK_FILE  # one name for writers and readers

_held: dict[Path, int] = {}  # directories this process holds → nesting depth


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a directory's lock."""

    host: str
    pid: int
    started: float  # time.time() when it took the lock
    what: str = "run"

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.what} writer PID {self.pid} on host {self.host} (since {since})"

    def is_here(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """False only when it certainly is not: a PID on this host that no longer exists."""
        if not self.is_here():
            return True
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(directory: Path) -> Holder | None:
    """The holder recorded in DIR/.lock, None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(directory) / LOCK_FILE).read_text())
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]), str(data.get("what", "run")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record(fd: int, what: str) -> None:
    data = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "what": what}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(data) + "\n").encode(), 0)


def _busy(directory: Path, what: str, holder: Holder | None) -> UserError:
    who = holder.describe() if holder else "another process"
    return UserError(f"{directory} is in use by {who}; wait for it to finish or stop it "
                     f"(only one {what} writer per directory)")


def _flock(fd: int, directory: Path, what: str) -> None:
    """Take the OS lock on `fd`, or raise the UserError naming the holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(directory, what, read_holder(directory)) from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        holder = read_holder(directory)  # no OS locks here: the recorded holder decides
        if holder is not None and holder.is_alive() and holder.pid != os.getpid():
            raise _busy(directory, what, holder) from None


def _open_locked(directory: Path, what: str) -> tuple[int, Holder | None]:
    """(fd of DIR/.lock, locked and naming this process; the holder recorded before)."""
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, directory, what)
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                previous = read_holder(directory)
                _record(fd, what)
                return fd, previous
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed by a holder that just finished: lock the new one


@contextlib.contextmanager
def hold(directory: str | Path, what: str = "run") -> Iterator[Holder | None]:
    """Hold DIR's lock for the block (creating DIR); yields the stale holder taken over, if any.

    A live holder elsewhere is a UserError naming its host and PID; an OSError (read-only,
    full disk, DIR a file) propagates for the caller's one-line report.
    """
    directory = Path(directory)
    key = directory.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield None
        finally:
            _held[key] -= 1
        return
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a directory; choose another --out")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    fd, previous = _open_locked(directory, what)
    _held[key] = 1
    try:
        yield previous
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a clean release: an empty lock file names no holder
            if created and [p.name for p in directory.iterdir()] == [LOCK_FILE]:
                (directory / LOCK_FILE).unlink()  # before unlocking: see _open_locked
                directory.rmdir()
        os.close(fd)  # releases the OS lock


# === Workers that die with their parent (a rerun then never meets an orphan still writing) ===

PARENT_ENV = "PROBES_DIE_WITH_PARENT"  # PID of the process a worker must not outlive
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(environ=os.environ) -> bool:
    """In a worker whose environment names its parent's PID (PARENT_ENV): ask the kernel for SIGKILL
    when that parent dies, however it dies (Linux: PR_SET_PDEATHSIG), and exit at once if it is
    already gone. True when armed; elsewhere (not Linux, no PARENT_ENV) nothing happens."""
    parent = environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)
    return True


@contextlib.contextmanager
def on_sigterm(handler) -> Iterator[None]:
    """`handler(signum, frame)` receives SIGTERM inside the block (in the main thread, where signals
    arrive; elsewhere nothing changes); the previous disposition is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def is_held(directory: str | Path) -> bool:
    """Whether this process holds DIR's lock."""
    return Path(directory).resolve() in _held
