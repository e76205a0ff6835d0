"""One training run per output folder: a lock file with stale-lock detection.

Two ``minicnn train`` processes writing ``last.ckpt`` into the same ``--out``
would interleave their checkpoints, and a resume would mix two runs. So a run
first creates ``<out>/.minicnn.lock`` — atomically, with ``O_CREAT | O_EXCL``,
which succeeds for exactly one process — holding its pid, host and start time,
and removes it when it ends (normally, on an error or on Ctrl-C).

A lock left behind by a run that was killed (``kill -9``, a power cut) is
*stale*: its pid no longer exists on this host. It is replaced, with a note —
by an atomic rename of a complete new lock over it, and only if it is still
the very file that was found stale (two runs that find the same stale lock at
the same moment: exactly one of them takes the folder).
A lock from another host cannot be checked, so it is respected and the error
says how to remove it.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time

from ..io import temp_path_for

try:
    import fcntl                        # POSIX: flock, released by the kernel when a process dies
except ImportError:                     # Windows
    fcntl = None

LOCK_NAME = ".minicnn.lock"


class RunLockError(RuntimeError):
    """Another live process holds the folder's lock."""


def _alive(pid):
    try:
        os.kill(pid, 0)                 # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:             # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_fd(fd):
    """The lock's content read through an open descriptor (so it is the file we fstat), or {}."""
    try:
        data = os.read(fd, 4096)
        info = json.loads(data)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _read(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _examine(path):
    """``(holder, inode)`` of the lock file now, or ``(None, None)`` if it vanished meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, None
    try:
        holder, inode = _read_fd(fd), os.fstat(fd).st_ino
        if not holder:                          # being written right now, or garbage: look again
            time.sleep(0.2)
            os.lseek(fd, 0, os.SEEK_SET)
            holder = _read_fd(fd)
        return holder, inode
    finally:
        os.close(fd)


@contextlib.contextmanager
def _breaking(path):
    """Only one process at a time may replace a stale lock: an ``flock`` on ``<lock>.break``.

    The kernel drops an ``flock`` when its process dies, so this guard can
    never itself go stale. (Without ``fcntl``, on Windows, there is no guard.)
    """
    if fcntl is None:
        yield
        return
    fd = os.open(path + ".break", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                            # closing releases the flock


def _replace_stale(path, stale_inode, me):
    """Put our lock in place of the stale one *if it is still that file*; True on success.

    Our lock is written completely to a temporary file, then ``os.replace``d
    over the stale one (atomic: a reader sees the old lock or ours, never no
    lock, never half a file). Never delete-then-create: between the two another
    process could create its lock, and a second breaker that had examined the
    same stale lock could delete that fresh one. The inode check under the
    ``.break`` guard is what makes a second breaker see that the lock it
    examined has already been replaced.
    """
    tmp = temp_path_for(path)
    with open(tmp, "x") as f:
        json.dump(me, f)
    try:
        with _breaking(path):
            try:
                if os.stat(path).st_ino != stale_inode:
                    return False                # someone replaced (or released) it first: look again
            except FileNotFoundError:
                return False
            os.replace(tmp, path)
            return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def acquire(folder, log=print):
    """Create the lock in ``folder``; return its path. Raises :class:`RunLockError` if held."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "token": secrets.token_hex(8)}       # tells two locks of the same pid apart
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, inode = _examine(path)
            if holder is None:                          # released meanwhile: try again
                continue
            pid, host = holder.get("pid"), holder.get("host")
            stale = isinstance(pid, int) and host == me["host"] and not _alive(pid)
            if holder and not stale:
                raise RunLockError(
                    f"{folder} is in use by another run: pid {pid} on {host}, started {holder.get('started')} "
                    f"(lock file {path}). Wait for it to finish or choose another --out; if that process "
                    "is gone, delete the lock file.")
            if not holder:
                raise RunLockError(f"{folder} has an unreadable lock file {path}; if no run is using the "
                                   "folder, delete it")
            if _replace_stale(path, inode, me):
                log(f"note: replaced a stale lock in {folder} (pid {pid} is no longer running)")
                return path
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise RunLockError(f"could not take the lock {path} (another run keeps taking it)")


def release(path):
    """Remove the lock if it is still ours."""
    if _read(path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def run_lock(folder, log=print):
    """``with run_lock(out):`` — hold ``folder``'s lock for the duration of a run."""
    path = acquire(folder, log)
    try:
        yield path
    finally:
        release(path)
