"""Nothing lost, nothing silent under faults (issue 30): fault injection against the CLI and the API.

Each test provokes one fault — Ctrl-C at a chosen moment, kill -9 while a
checkpoint is written, a full disk, a stale lock raced by two runs, a hostile
or corrupt file, a resume with changed options — and checks what a user is
promised: the run continues exactly or refuses naming the option, a
resumable checkpoint is left, the previous files are intact, and the CLI says
what is wrong in one line (exit status 2), never a traceback.

Signals are sent from inside the run (a training step, the validation
function, a checkpoint write) so the moment is exact and the tests are
deterministic; kill -9 loops and the lock race are repeated a few times.
"""
import errno
import json
import multiprocessing
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import io, optim
from minicnn.cli import main
from minicnn.cli.commands import CLIError, model_from_checkpoint
from minicnn.data import DataLoader, download
from minicnn.models import get_model
from minicnn.train import fit, load_checkpoint, save_checkpoint
from minicnn.train import loop
from minicnn.train.loop import standard_step
from minicnn.train.runlock import LOCK_NAME, RunLockError, acquire
from minicnn.train.schema import SchemaError

QUICK = ["--limit-train", "96", "--limit-test", "32", "--epochs", "1", "--no-progress", "--batch-size", "32"]


# -----------------------------------------------------------------------------
# A tiny problem: fast, deterministic, with validation
# -----------------------------------------------------------------------------
def _data(n=96, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 4:].mean(axis=(1, 2)) > 0)
    return x, y


def _setup(batch_size=16, seed=0):
    mc.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = DataLoader(_data(), batch_size=batch_size, shuffle=True)
    val = DataLoader(_data(32, seed=1), batch_size=32)
    return model, opt, train, val


def _weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _assert_same_weights(model, expected):
    for k, v in expected.items():
        np.testing.assert_array_equal(model.state_dict()[k].numpy(), v, err_msg=k)


def _quiet(*args, **kwargs):
    pass


def _sigint_self():
    os.kill(os.getpid(), signal.SIGINT)     # handled in the main thread before the next bytecode


# -----------------------------------------------------------------------------
# Resume: exactly, with a changed batch size; refused, naming the option
# -----------------------------------------------------------------------------
def test_resume_with_another_batch_size_continues_at_the_same_sample(tmp_path):
    """Interrupted after 3 batches of 16 in epoch 2, resumed with batches of 32: the result is
    bit-identical to one run that trained 48 samples of that epoch in 16s and the rest in 32s."""
    model, opt, train16, val = _setup(16)
    steps = []

    def step(net, optimizer, x, y, loss_fn):
        steps.append(len(y))
        if len(steps) == 6 + 3:             # 6 batches per epoch: the 3rd batch of epoch 2
            _sigint_self()
        return standard_step(net, optimizer, x, y, loss_fn)

    with pytest.raises(KeyboardInterrupt):
        fit(model, opt, train16, 3, val_loader=val, out_dir=tmp_path, progress=False, log=_quiet,
            train_step=step, fuse=False)
    state = load_checkpoint(tmp_path / "interrupted.ckpt")
    assert (state["epoch"], state["batch"], state["sample"], state["batch_size"]) == (1, 3, 48, 16)

    model, opt, _, val = _setup(32, seed=99)            # other initial weights: all come from the file
    train32 = DataLoader(_data(), batch_size=32, shuffle=True)
    lines = []
    fit(model, opt, train32, 3, val_loader=val, resume=tmp_path / "interrupted.ckpt", progress=False,
        log=lines.append, fuse=False)
    assert "epoch 2, sample 48" in lines[0]

    # the reference: one uninterrupted run that switched from 16 to 32 at sample 48 of epoch 2
    ref, ref_opt, ref16, _ = _setup(16)
    ref32 = DataLoader(_data(), batch_size=32, shuffle=True)
    for x, y in ref16.batches(ref16.epoch_order()):
        standard_step(ref, ref_opt, x, y, F.cross_entropy)
    order = ref16.epoch_order()
    for k, (x, y) in enumerate(ref16.batches(order)):
        if k == 3:
            break
        standard_step(ref, ref_opt, x, y, F.cross_entropy)
    for x, y in ref32.batches(order, start_sample=48):
        standard_step(ref, ref_opt, x, y, F.cross_entropy)
    for x, y in ref32.batches(ref32.epoch_order()):
        standard_step(ref, ref_opt, x, y, F.cross_entropy)
    _assert_same_weights(model, _weights(ref))


def test_resume_with_the_same_options_is_bit_identical_to_the_uninterrupted_run(tmp_path):
    model, opt, train, val = _setup()
    fit(model, opt, train, 2, val_loader=val, progress=False, log=_quiet)
    expected = _weights(model)

    model, opt, train, val = _setup()
    step_count = []

    def step(net, optimizer, x, y, loss_fn):
        step_count.append(1)
        if len(step_count) == 4:
            _sigint_self()
        return standard_step(net, optimizer, x, y, loss_fn)

    with pytest.raises(KeyboardInterrupt):
        fit(model, opt, train, 2, val_loader=val, out_dir=tmp_path, progress=False, log=_quiet,
            train_step=step)
    model, opt, train, val = _setup(seed=5)
    fit(model, opt, train, 2, val_loader=val, resume=tmp_path / "interrupted.ckpt", progress=False,
        log=_quiet)
    _assert_same_weights(model, expected)


def test_resume_on_other_training_data_is_refused_naming_the_order(tmp_path):
    """--limit-train / --val-split changed: the saved sample order no longer fits the data."""
    model, opt, train, val = _setup()
    fit(model, opt, train, 1, val_loader=val, out_dir=tmp_path, progress=False, log=_quiet)
    state = load_checkpoint(tmp_path / "last.ckpt")
    state["batch"], state["sample"] = 2, 32                 # mid-way through epoch 2
    state["order"] = np.arange(96)
    for n in (64, 128):                       # fewer and more samples than the checkpoint's epoch
        model, opt, _, _ = _setup()
        other = DataLoader(_data(n), batch_size=16, shuffle=True)
        with pytest.raises(SchemaError, match=r"field 'order'.* 96 samples, this run's training set "
                                              f"{n}.*--limit-train"):
            fit(model, opt, other, 2, resume=dict(state), progress=False, log=_quiet)


def _hostile(state, **changes):
    state = dict(state)
    state.update(changes)
    return state


@pytest.mark.parametrize("changes, field, fragment", [
    (dict(epoch=-3), "epoch", "-3 is less than the minimum of 0"),
    (dict(epoch="abc"), "epoch", "'abc' is not of type 'integer'"),
    (dict(epoch=1.0), "epoch", "1.0 is not of type 'integer'"),
    (dict(epoch=7), "epoch", "already trained 7 epochs, more than the 2"),
    (dict(batch=10 ** 9, order=np.arange(96), sample=0), "batch", "past the end of the epoch"),
    (dict(sample=10 ** 9, order=np.arange(96)), "sample", "past the end of the epoch"),
    (dict(history=[1, 2]), "history", "is not of type 'object'"),
    (dict(history={"epoch": [1, 2, 3]}), "history", "expected 1 entries per list"),
    (dict(order=np.arange(96) + 10 ** 6, batch=1), "order", "must be in [0, 96)"),
    (dict(order=np.zeros((2, 48), dtype=np.int64), batch=1), "order", "1-D integer array"),
    (dict(partial=[1, "x", 3, 4]), "partial", "'x' is not of type 'number'"),
    (dict(rng_state="garbage"), "rng_state", "not a generator state"),
])
def test_hostile_resume_metadata_is_refused_before_anything_is_loaded(tmp_path, changes, field, fragment):
    model, opt, train, val = _setup()
    fit(model, opt, train, 1, out_dir=tmp_path, progress=False, log=_quiet)
    bad = tmp_path / "bad.ckpt"
    state = load_checkpoint(tmp_path / "last.ckpt")
    save_checkpoint(bad, model, opt, **{k: v for k, v in _hostile(state, **changes).items()
                                         if k not in ("model", "optimizer", "scheduler", "version",
                                                      "model_class", "backend", "rng_state")},
                    **({"rng_state": changes["rng_state"]} if "rng_state" in changes else {}))
    if "rng_state" in changes:                      # save_checkpoint writes the live state: overwrite it
        raw = load_checkpoint(bad)
        raw["rng_state"] = changes["rng_state"]
        io.save_file(raw, bad, kind="checkpoint")
    model2, opt2, train2, _ = _setup(seed=3)
    before = _weights(model2)
    with pytest.raises(ValueError, match=rf"bad\.ckpt.*{field}.*{fragment}".replace("[", r"\[").replace(
            "(", r"\(").replace(")", r"\)")):
        fit(model2, opt2, train2, 2, resume=bad, progress=False, log=_quiet)
    if field != "rng_state":                        # checked before the model was touched
        _assert_same_weights(model2, before)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One `minicnn train` run (the embedded digits, 96 images) to resume in the CLI tests."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out), *QUICK]) == 0
    return out


@pytest.mark.parametrize("option, value", [
    ("--limit-train", "128"), ("--val-split", "0.2"), ("--seed", "1"), ("--lr", "0.01"),
    ("--width", "0.5"), ("--model", "tiny"), ("--optimizer", "sgd"), ("--augment", None),
    ("--weight-decay", "0.1"), ("--schedule", "exponential"), ("--dataset", "fashion-mnist"),
    ("--dropout", "0.2"), ("--adversarial", "fgsm"),
])
def test_cli_resume_with_a_changed_option_is_refused_naming_it(trained_run, tmp_path, capsys, option, value):
    line = ["train", "--out", str(tmp_path), *QUICK, "--epochs", "2", "--resume",
            str(trained_run / "last.ckpt"), option] + ([value] if value else [])
    assert main(line) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option} is " in err and "the checkpoint was trained with" in err, err
    assert not (tmp_path / "last.ckpt").exists()


def test_cli_more_epochs_on_resume_equal_asking_for_them_at_the_start(trained_run, tmp_path):
    assert main(["train", "--out", str(tmp_path / "whole"), *QUICK, "--epochs", "2"]) == 0
    assert main(["train", "--out", str(tmp_path / "more"), *QUICK, "--epochs", "2", "--resume",
                 str(trained_run / "last.ckpt")]) == 0
    whole, more = (load_checkpoint(tmp_path / name / "last.ckpt")["model"] for name in ("whole", "more"))
    for k in whole:
        np.testing.assert_array_equal(more[k], whole[k], err_msg=k)


@pytest.mark.parametrize("changes, fragment", [
    (dict(epoch="abc"), "field 'epoch': 'abc' is not of type 'integer'"),
    (dict(epoch=-3), "field 'epoch': -3 is less than the minimum of 0"),
    (dict(history=[0.5]), "field 'history': [0.5] is not of type 'object'"),
    # 96 images, 10 of them held out for validation: 86 train
    (dict(order=np.arange(86) * 1000, sample=32, batch=1), "field 'order': sample indices must be in [0, 86)"),
    (dict(order=np.arange(86), batch=10 ** 9), "field 'batch': batch 1000000000 is past the end"),
    (dict(order=np.arange(96), batch=1), "the checkpoint's epoch has 96 samples, this run's training set 86"),
])
def test_cli_resume_from_hostile_metadata_is_one_line_naming_the_field(trained_run, tmp_path, capsys, changes,
                                                                       fragment):
    state = load_checkpoint(trained_run / "last.ckpt")
    state.update(changes)
    bad = tmp_path / "bad.ckpt"
    io.save_file(state, bad, kind="checkpoint")
    assert main(["train", "--out", str(tmp_path / "run"), *QUICK, "--epochs", "2", "--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and fragment in err, err


@pytest.mark.parametrize("changes, fragment", [
    # a mid-epoch position (batch > 0 and a sample order), as interrupted.ckpt holds: the path that
    # reads the checkpoint before fit does
    (dict(epoch="abc", batch=1, sample=32, order=np.arange(86)), "field 'epoch': 'abc' is not of type 'integer'"),
    (dict(epoch=0, batch=1, sample=-32, order=np.arange(86)), "field 'sample': -32 is less than the minimum of 0"),
])
def test_cli_distributed_resume_from_hostile_metadata_is_one_line_too(tmp_path, capsys, changes, fragment):
    """`--distributed` reads a mid-epoch checkpoint itself (each rank's shard) before fit: same checks."""
    pytest.importorskip("mpi4py")
    first = tmp_path / "first"
    assert main(["train", "--distributed", "--out", str(first), *QUICK]) == 0     # one process: world size 1
    state = load_checkpoint(first / "last.ckpt")
    state.update(changes)
    bad = tmp_path / "bad.ckpt"
    io.save_file(state, bad, kind="checkpoint")
    assert main(["train", "--distributed", "--out", str(tmp_path / "run"), *QUICK, "--epochs", "2",
                 "--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_cli_resume_with_a_changed_batch_size_under_a_batch_counted_schedule_is_refused(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--out", str(first), *QUICK, "--schedule", "cosine"]) == 0
    assert main(["train", "--out", str(tmp_path / "second"), *QUICK, "--epochs", "2", "--schedule", "cosine",
                 "--resume", str(first / "last.ckpt"), "--batch-size", "16"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size is 16 but the checkpoint was trained with 32, and --schedule cosine" in err, err


def test_cli_resume_with_a_larger_batch_size_and_more_epochs_runs(trained_run, tmp_path, capsys):
    """Options that change no trained number from the resume point on (or do so by design) are accepted."""
    ckpt = str(trained_run / "last.ckpt")
    assert main(["train", "--out", str(tmp_path), *QUICK, "--epochs", "2", "--resume", ckpt,
                 "--batch-size", "48", "--limit-test", "16", "--nan-policy", "skip-batch", "--no-fuse",
                 "--early-stopping", "2"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "epoch 1/2" not in out
    assert load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 2


# -----------------------------------------------------------------------------
# Ctrl-C at any moment of an epoch leaves a resumable checkpoint
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("moment", ["mid-epoch batch", "last batch", "validation", "checkpoint write"])
def test_ctrl_c_at_any_moment_leaves_a_resumable_interrupted_ckpt(tmp_path, monkeypatch, moment):
    model, opt, train, val = _setup()
    fit(model, opt, train, 3, val_loader=val, progress=False, log=_quiet)
    expected = _weights(model)

    steps, evals = [], []

    def step(net, optimizer, x, y, loss_fn):
        steps.append(1)
        if (moment == "mid-epoch batch" and len(steps) == 8) or (moment == "last batch" and len(steps) == 12):
            _sigint_self()
        return standard_step(net, optimizer, x, y, loss_fn)

    def evaluate_fn(net, loader, loss_fn):
        evals.append(1)
        if moment == "validation" and len(evals) == 2:
            _sigint_self()
        return loop.evaluate(net, loader, loss_fn)

    real_save = loop.save_checkpoint

    def save(path, *args, **kwargs):
        if moment == "checkpoint write" and str(path).endswith("last.ckpt") and kwargs["epoch"] == 2:
            _sigint_self()
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    model, opt, train, val = _setup()
    with pytest.raises(KeyboardInterrupt):
        fit(model, opt, train, 3, val_loader=val, out_dir=tmp_path, progress=False, log=_quiet,
            train_step=step, evaluate_fn=evaluate_fn)
    state = load_checkpoint(tmp_path / "interrupted.ckpt")
    where = {"mid-epoch batch": (1, 32), "last batch": (1, 96)}.get(moment, (2, 0))
    assert (state["epoch"], state["sample"]) == where
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    model, opt, train, val = _setup(seed=7)
    fit(model, opt, train, 3, val_loader=val, resume=tmp_path / "interrupted.ckpt", progress=False,
        log=_quiet)
    _assert_same_weights(model, expected)


def test_cli_ctrl_c_during_validation_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    """`minicnn train`, Ctrl-C while epoch 1 is being validated: exit 130, interrupted.ckpt after
    epoch 1, the lock released; --resume ends with the weights of a run never interrupted."""
    line = [*QUICK, "--epochs", "2", "--seed", "3"]
    assert main(["train", "--out", str(tmp_path / "whole"), *line]) == 0
    real_evaluate = loop.evaluate

    def evaluate(*args, **kwargs):
        _sigint_self()
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    cut = tmp_path / "cut"
    assert main(["train", "--out", str(cut), *line]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert load_checkpoint(cut / "interrupted.ckpt")["epoch"] == 1 and not (cut / LOCK_NAME).exists()
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    assert main(["train", "--out", str(cut), *line, "--resume", str(cut / "interrupted.ckpt")]) == 0
    whole, resumed = (load_checkpoint(tmp_path / name / "last.ckpt")["model"] for name in ("whole", "cut"))
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)


def test_a_second_ctrl_c_stops_at_once():
    model, opt, train, _ = _setup()
    steps = []

    def step(net, optimizer, x, y, loss_fn):
        steps.append(1)
        if len(steps) == 2:
            _sigint_self()
            _sigint_self()                  # the second one raises inside this step
        return standard_step(net, optimizer, x, y, loss_fn)

    with pytest.raises(KeyboardInterrupt):
        fit(model, opt, train, 1, progress=False, log=_quiet, train_step=step)
    assert len(steps) == 2


# -----------------------------------------------------------------------------
# The run lock: taken atomically, a stale one replaced by rename, never twice
# -----------------------------------------------------------------------------
def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _contender(folder, barrier, results, done, delay):
    real_kill = os.kill

    def slow_liveness_check(pid, sig):      # a busy machine: time passes between "stale" and replacing it
        if sig == 0:
            time.sleep(delay)
        return real_kill(pid, sig)

    os.kill = slow_liveness_check           # in this forked child only
    barrier.wait()
    try:
        acquire(folder, log=_quiet)
        results.put("took it")
    except RunLockError:
        results.put("refused")
    done.wait(30)                           # stay alive (a live holder) until both have answered
    os._exit(0)


@pytest.mark.slow
def test_two_runs_racing_for_a_stale_lock_never_both_take_it(tmp_path):
    ctx = multiprocessing.get_context("fork")
    dead = _dead_pid()
    stale = json.dumps({"pid": dead, "host": socket.gethostname(), "started": "earlier"})
    for trial in range(25):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        (folder / LOCK_NAME).write_text(stale)
        barrier, results, done = ctx.Barrier(4), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_contender, args=(str(folder), barrier, results, done, 0.002 * k))
                 for k in range(4)]
        for p in procs:
            p.start()
        answers = sorted(results.get(timeout=30) for _ in procs)
        done.set()
        for p in procs:
            p.join(30)
        assert answers == ["refused"] * 3 + ["took it"], f"trial {trial}: {answers}"
        holder = json.loads((folder / LOCK_NAME).read_text())
        assert holder["pid"] in [p.pid for p in procs]


def test_a_stale_lock_is_replaced_in_place_by_rename(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"}))
    notes = []
    path = acquire(tmp_path, log=notes.append)
    assert json.loads(lock.read_text())["pid"] == os.getpid() and "stale lock" in notes[0]
    assert [n for n in os.listdir(tmp_path) if n.endswith(".part")] == []     # the temp became the lock
    with pytest.raises(RunLockError, match=f"pid {os.getpid()}"):
        acquire(tmp_path)
    os.remove(path)


# -----------------------------------------------------------------------------
# kill -9 while writing checkpoints; temp files swept at the next start
# -----------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    import minicnn.nn as nn
    from minicnn.train import save_checkpoint
    model = nn.Linear(1000, 1000)                    # 4 MB: each write takes a while
    path = sys.argv[1]
    for i in range(10 ** 6):
        save_checkpoint(path, model, epoch=i)
        if i == 0:
            print("ready", flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_corrupts_and_leftovers_are_swept(tmp_path):
    path = tmp_path / "last.ckpt"
    epochs = []
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()
        proc.wait()
        epochs.append(load_checkpoint(path)["epoch"])       # always a whole checkpoint
    assert all(e >= 0 for e in epochs)
    # a leftover is certain for this one: a temp file of a dead writer, as kill -9 leaves them
    fake = tmp_path / f".last.ckpt.{_dead_pid()}.0123abcd.part"
    fake.write_bytes(b"x" * 1000)
    mine = tmp_path / f".other.ckpt.{os.getpid()}.0123abcd.part"       # a live process's: kept
    mine.write_bytes(b"y")
    model, opt, train, _ = _setup()
    lines = []
    fit(model, opt, train, 1, out_dir=tmp_path, progress=False, log=lines.append)
    left = sorted(n for n in os.listdir(tmp_path) if n.endswith(".part"))
    assert left == [mine.name]
    assert any(str(fake) in line for line in lines)


# -----------------------------------------------------------------------------
# A full disk; file modes
# -----------------------------------------------------------------------------
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, _, _ = _setup()
    path = save_checkpoint(tmp_path / "last.ckpt", model, opt, epoch=1)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*last\.ckpt: No space left on device \(the previous "
                                      r"file is intact\)"):
        save_checkpoint(path, model, opt, epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs (room for one checkpoint, not two) where the machine lets us mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux; the full disk is simulated in "
                    "test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_cli_on_a_really_full_disk_is_one_line_and_last_ckpt_loads(small_tmpfs, capsys):
    out = small_tmpfs / "run"
    assert main(["train", "--out", str(out), *QUICK, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(out) in err, err
    assert load_checkpoint(out / "last.ckpt")["epoch"] >= 1


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_are_written_with_the_umasks_mode(tmp_path, umask, mode):
    model, _, _, _ = _setup()
    old = os.umask(umask)
    try:
        ckpt = save_checkpoint(tmp_path / "a.ckpt", model)
        report = io.write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == mode
    assert stat.S_IMODE(os.stat(report).st_mode) == mode


# -----------------------------------------------------------------------------
# Hostile checkpoints and configs: refused before anything is allocated
# -----------------------------------------------------------------------------
def _reference_checkpoint(path, **config_changes):
    model = get_model("reference")
    config = {"model_name": "reference", "num_classes": 10, "model_kwargs": {}, "dataset": "digits",
              "classes": [str(i) for i in range(10)], "input_shape": [1, 28, 28],
              "normalization": [0.1307, 0.3081]}
    config.update(config_changes)
    save_checkpoint(path, model, epoch=1, config=config)
    return path


@pytest.mark.parametrize("changes, fragment", [
    (dict(model_kwargs={"width": 5000}), "'model_kwargs.width': 5000 is greater than the maximum of 64"),
    (dict(model_kwargs={"width": 60}), "asks for a network of about"),
    (dict(model_kwargs={"width": float("nan")}), "nan is not a finite number"),
    (dict(num_classes=10 ** 9), "'num_classes': 1000000000 is greater than the maximum"),
    (dict(num_classes=1000, classes=[str(i) for i in range(1000)]), "the classifier"),
    (dict(classes=["cat", "dog"]), "2 class names for num_classes=10"),
    (dict(model_kwargs={"kernel_size": 10 ** 5}), "'model_kwargs.kernel_size'"),
    (dict(model_name=["x"]), "field 'model_name': ['x'] is not of type 'string'"),
    (dict(model_name="vgg99"), "field 'model_name': 'vgg99' is not one of"),
])
def test_a_checkpoint_config_asking_for_the_impossible_is_refused_in_one_line(tmp_path, capsys, changes,
                                                                              fragment):
    path = _reference_checkpoint(tmp_path / "bad.ckpt", **changes)
    with pytest.raises(CLIError, match=re.escape(fragment)):
        model_from_checkpoint(load_checkpoint(path), str(path))
    assert main(["evaluate", str(path), "--limit-test", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


def test_a_sound_checkpoint_config_still_loads(tmp_path):
    path = _reference_checkpoint(tmp_path / "ok.ckpt")
    model, config = model_from_checkpoint(load_checkpoint(path), str(path))
    assert model.num_parameters() == get_model("reference").num_parameters() and config["num_classes"] == 10


# -----------------------------------------------------------------------------
# One line, naming the option or the file, with the cause
# -----------------------------------------------------------------------------
def _config(tmp_path, doc):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("extra, fragment", [
    (["--limit-train", "0"], "--limit-train must be a number of images >= 1 (or left out for all), got 0"),
    (["--limit-train", "-5"], "--limit-train must be a number of images >= 1"),
    (["--limit-test", "0"], "--limit-test must be a number of images >= 1"),
    (["--limit-test", "-1"], "--limit-test must be a number of images >= 1"),
    (["--width", "nan"], "--width must be a finite number, got nan"),
    (["--width", "inf"], "--width must be a finite number, got inf"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--config", {"epochs": 1.5}], "field 'epochs': 1.5 is not of type 'integer'"),
    (["--config", {"lr": [1]}], "field 'lr': [1] is not of type 'number'"),
    (["--config", {"lr": float("inf")}], "field 'lr': inf is not a finite number"),
    (["--config", {"augment": "yes"}], "field 'augment': 'yes' is not of type 'boolean'"),
    (["--config", {"optimizer": "sgdd"}], "field 'optimizer': 'sgdd' is not one of"),
])
def test_cli_bad_options_are_one_line_naming_the_option(tmp_path, capsys, extra, fragment):
    extra = [_config(tmp_path, e) if isinstance(e, dict) else e for e in extra]
    t0 = time.perf_counter()
    assert main(["train", "--out", str(tmp_path / "run"), *QUICK, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "run" / "last.ckpt").exists()
    assert time.perf_counter() - t0 < 30                      # refused before training


def _write_idx(path, array):
    import gzip
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_an_empty_test_split_is_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((20, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(0))
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-download", "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "run"), "--val-split", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no images" in err, err
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_truncated_data_files_are_one_line(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        _write_idx(folder / name, np.zeros((20, 28, 28)) if "images" in name else np.arange(20) % 10)
    whole = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(whole[:len(whole) // 2])
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-download", "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train-images" in err, err


def test_every_mirror_failing_keeps_every_reason_on_the_line(tmp_path, capsys, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]                      # nobody listens there: connection refused
    monkeypatch.delenv("MINICNN_DATA_DIR", raising=False)
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MINICNN_MIRRORS", f"mnist=http://127.0.0.1:{port}/a/,http://127.0.0.1:{port}/b/")
    real = download.download_file
    monkeypatch.setattr(download, "download_file",
                        lambda *a, **k: real(*a, **{**k, "retries": 1, "backoff": 0.0, "timeout": 5}))
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path / "run"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "every mirror failed" in err, err
    assert f"127.0.0.1:{port}/a/" in err and f"127.0.0.1:{port}/b/" in err and "cannot connect" in err, err


@pytest.fixture
def optuna_installed():
    pytest.importorskip("optuna")


def _sqlite_truncated(path):
    import sqlite3
    full = path.with_suffix(".full")
    con = sqlite3.connect(full)
    con.execute("create table t(x)")
    con.executemany("insert into t values (?)", [("x" * 1000,)] * 100)
    con.commit()
    con.close()
    path.write_bytes(full.read_bytes()[:20000])


@pytest.mark.parametrize("kind", ["random bytes", "truncated sqlite", "garbage journal"])
def test_a_corrupt_tune_study_is_one_line_naming_the_file(tmp_path, capsys, optuna_installed, kind):
    out = tmp_path / "tune"
    out.mkdir()
    extra = []
    if kind == "random bytes":
        study = out / "tune.db"
        study.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated sqlite":
        study = out / "tune.db"
        _sqlite_truncated(study)
    else:
        study = out / "study.log"
        study.write_text("{garbage\n")
        extra = ["--storage", f"journal:{study}"]
    code = main(["tune", "--space", "lr=1e-3,1e-2", "--trials", "1", "--out", str(out), "--no-plots", *QUICK,
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(study) in err and "move it away" in err, err


# -----------------------------------------------------------------------------
# Hostile files that were already refused (kept here so they stay refused)
# -----------------------------------------------------------------------------
def _safetensors(header, data=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("kind", ["2^63 header", "lying shape", "overlapping offsets", "truncated"])
def test_malicious_safetensors_are_refused_with_one_line(tmp_path, capsys, kind):
    path = tmp_path / f"{kind.replace(' ', '_').replace('^', '')}.ckpt"
    meta = {"__minicnn__": json.dumps({"kind": "checkpoint", "format_version": 2, "keys": ["model", "version"]}),
            "model": json.dumps({"__dict__": [["w", {"__tensor__": "model.w"}]]}), "version": "2"}
    if kind == "2^63 header":
        path.write_bytes(struct.pack("<Q", 2 ** 63) + b"{}")
    elif kind == "lying shape":
        path.write_bytes(_safetensors({"model.w": {"dtype": "F32", "shape": [10 ** 6],
                                                   "data_offsets": [0, 16]}, "__metadata__": meta}, b"\0" * 16))
    elif kind == "overlapping offsets":
        path.write_bytes(_safetensors({"model.w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                       "model.v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
                                       "__metadata__": meta}, b"\0" * 24))
    else:
        model, _, _, _ = _setup()
        whole = (tmp_path / "whole.ckpt")
        save_checkpoint(whole, model, epoch=1)
        path.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(ValueError):
        load_checkpoint(path)
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err


def _png_header_only(path, width, height):
    """A PNG that claims width x height pixels: a decompression bomb's header, a few bytes on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(20000, 20000), (100000, 100000)])
def test_a_decompression_bomb_png_is_refused_before_decoding(trained_run, tmp_path, capsys, size):
    png = _png_header_only(tmp_path / "bomb.png", *size)
    t0 = time.perf_counter()
    assert main(["predict", str(trained_run / "last.ckpt"), str(png)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(png) in err, err
    assert time.perf_counter() - t0 < 10


KILLED_TUNE_WORKER = textwrap.dedent("""
    import os, sys
    from minicnn.cli import main
    from minicnn.train import loop
    real = loop.standard_step
    def step(*args):
        os.kill(os.getpid(), 9)                      # kill -9 inside the first training step
    loop.standard_step = step
    main(["tune", "--space", "lr=1e-3,1e-2", "--trials", "1", "--out", sys.argv[1], "--no-plots",
          "--limit-train", "96", "--limit-test", "32", "--epochs", "1", "--no-progress"])
""")


@pytest.mark.slow
def test_a_killed_tune_worker_leaves_a_study_that_continues(tmp_path, capsys, optuna_installed):
    out = tmp_path / "tune"
    proc = subprocess.run([sys.executable, "-c", KILLED_TUNE_WORKER, str(out)], capture_output=True, timeout=300)
    assert proc.returncode == -9
    assert main(["tune", "--space", "lr=1e-3,1e-2", "--trials", "1", "--out", str(out), "--no-plots",
                 *QUICK]) == 0
    import optuna
    study = optuna.load_study(study_name="minicnn", storage=f"sqlite:///{out / 'tune.db'}")
    assert any(t.state.name == "COMPLETE" for t in study.trials)


# -----------------------------------------------------------------------------
# A data-parallel rank killed with SIGKILL
# -----------------------------------------------------------------------------
def mpiexec_path():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    import shutil
    return local if os.path.exists(local) else shutil.which("mpiexec")


def ranks_of(out):
    """{rank: pid} of the processes training into ``out`` (read from /proc: the launcher's PMI_RANK)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(out).encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"PMI_RANK" in env and b"python" in open(f"/proc/{pid}/cmdline", "rb").read():
            found[int(env[b"PMI_RANK"])] = int(pid)
    return found


@pytest.mark.slow
def test_a_rank_killed_with_sigkill_ends_the_job_and_leaves_loadable_checkpoints(tmp_path):
    """kill -9 one of two ranks mid-training: the job ends (no rank waits forever in an
    all-reduce), soon, with a failure status, and every checkpoint on disk loads."""
    pytest.importorskip("mpi4py")
    launcher = mpiexec_path()
    if launcher is None or not os.path.isdir("/proc"):
        pytest.skip("needs mpiexec (pip install 'minicnn[distributed]') and /proc")
    out = tmp_path / "run"
    cmd = [launcher, "-n", "2", sys.executable, "-m", "minicnn.cli", "train", "--distributed", "--model", "tiny",
           "--limit-train", "512", "--limit-test", "16", "--batch-size", "8", "--epochs", "50", "--no-progress",
           "--out", str(out)]
    env = dict(os.environ, MINICNN_BACKEND="numpy", PYTHONUNBUFFERED="1")
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "last.ckpt").exists():      # an epoch is done
            assert job.poll() is None, job.stdout.read()
            time.sleep(0.2)
        assert (out / "last.ckpt").exists(), "no epoch finished in 120 s"
        pids = ranks_of(out)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.time()
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 1 was killed but the job still runs 60 s later (rank 0 hangs in an all-reduce?)")
        assert job.returncode != 0
        assert time.time() - killed_at < 30
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    for path in out.glob("*.ckpt"):
        state = load_checkpoint(str(path))
        assert "model" in state and state["epoch"] >= 1
