"""Atomic file writes: a file is either complete or absent, never half-written.

Writing a file in place is not safe: a crash, a full disk or Ctrl-C in the
middle leaves a truncated file under the final name, and the next run trusts
it. The standard cure, used here for IDX files and downloads alike:

1. write everything to a temporary file *in the same folder* (same file system,
   so the rename in step 3 is a single atomic operation);
2. flush it and ``fsync`` it to disk (optionally check it — a download checks
   its checksum here);
3. ``os.replace(temp, final)`` — atomic on POSIX and on Windows: a reader sees
   either the old file, or no file, or the complete new one.

If anything fails before step 3 the temporary file is deleted. If the process
is killed outright (SIGKILL, power cut) nothing can run, so the temporary name
is chosen to look nothing like the real one: ``.<name>.<pid>.<random>.part``
(hidden, ``.part`` suffix) — no loader ever mistakes it for data.
"""
from __future__ import annotations

import contextlib
import os
import secrets


def temp_path_for(path) -> str:
    """A fresh temporary name beside ``path``: ``<folder>/.<name>.<pid>.<hex>.part``."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Context manager: yield a file opened on a temporary name, then move it to ``path``.

    ``f.name`` is the temporary path, so the body may re-read what it wrote
    (after ``f.flush()``) to verify it before the file is published. Raise
    inside the block to abandon the write: the temporary file is removed and
    ``path`` is left untouched.

    >>> with atomic_write("out.bin") as f:      # doctest: +SKIP
    ...     f.write(b"all or nothing")
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode such as 'wb' or 'w', got {mode!r}")
    final = os.fspath(path)
    tmp = temp_path_for(final)
    # "x": create exclusively (never clobber another writer's temp file); the
    # permissions follow the umask like any normal new file.
    f = open(tmp, mode.replace("w", "x"))
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:  # including KeyboardInterrupt: never leave the temp behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
