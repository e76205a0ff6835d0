"""One training run per output folder: a lock file with stale-lock detection.

Two ``minicnn train`` processes writing ``last.ckpt`` into the same ``--out``
would interleave their checkpoints, and a resume would mix two runs. So a run
first creates ``<out>/.minicnn.lock`` — atomically, with ``O_CREAT | O_EXCL``,
which succeeds for exactly one process — holding its pid, host and start time,
and removes it when it ends (normally, on an error or on Ctrl-C).

A lock left behind by a run that was killed (``kill -9``, a power cut) is
*stale*: its pid no longer exists on this host. It is replaced, with a note.
A lock from another host cannot be checked, so it is respected and the error
says how to remove it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

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


def _read(path):
    try:
        with open(path) as f:
            info = json.load(f)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def acquire(folder, log=print):
    """Create the lock in ``folder``; return its path. Raises :class:`RunLockError` if held."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            pid, host = holder.get("pid"), holder.get("host")
            if not holder:                              # being written right now, or garbage
                time.sleep(0.2)
                holder = _read(path)
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
            log(f"note: removing a stale lock in {folder} (pid {pid} is no longer running)")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
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
