"""One run per output folder: a second `minicnn train` on a held folder refuses, naming the holder."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from minicnn.cli import main
from minicnn.train.runlock import LOCK_NAME, RunLockError, acquire, release, run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from minicnn.train.runlock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()                 # hold the lock until the test closes our stdin
""")

TRAIN = ["--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--no-progress"]


def test_a_second_run_on_a_held_folder_refuses_and_names_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--out", str(out), *TRAIN]) == 2
        err = capsys.readouterr().err
        assert f"in use by another run: pid {holder.pid}" in err, err
        assert not (out / "last.ckpt").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (out / LOCK_NAME).exists()                     # released when the holder ended
    assert main(["train", "--out", str(out), *TRAIN]) == 0     # now the folder is free
    assert (out / "last.ckpt").exists() and not (out / LOCK_NAME).exists()


def test_a_stale_lock_from_a_dead_process_is_replaced(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                  "started": "earlier"}))
    notes = []
    with run_lock(tmp_path, log=notes.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert notes and "stale lock" in notes[0] and str(dead.pid) in notes[0]
    assert not (tmp_path / LOCK_NAME).exists()


def test_locks_from_other_hosts_and_garbage_are_respected(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunLockError, match="pid 1 on elsewhere"):
        acquire(tmp_path)
    (tmp_path / LOCK_NAME).write_text("garbage")
    with pytest.raises(RunLockError, match="unreadable lock file"):
        acquire(tmp_path)
    os.remove(tmp_path / LOCK_NAME)
    path = acquire(tmp_path)
    with pytest.raises(RunLockError, match=f"pid {os.getpid()}"):    # even this process: one run at a time
        acquire(tmp_path)
    release(path)
    assert not os.path.exists(path)
