"""Fuzzed loaders: random and mutated bytes to the checkpoint loader, the IDX reader and predict's
image reader. Every outcome is a result or a clear minicnn error (CheckpointError / DataError /
CLIError) — never a bare struct.error, IndexError, MemoryError or a hang — in bounded time and memory.

The examples are few and small (the whole file runs in seconds); each call must finish within the
hypothesis deadline, and tracemalloc bounds the memory NumPy and Python allocate while reading.
"""
import gzip
import io
import os
import tempfile
import tracemalloc
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minicnn as mc
import minicnn.nn as nn
from minicnn import optim
from minicnn.cli.commands import CLIError, load_image_28x28
from minicnn.data import idx
from minicnn.train.loop import CheckpointError, load_checkpoint, save_checkpoint

FUZZ = settings(max_examples=120, deadline=timedelta(seconds=5), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
MEMORY_LIMIT = 64 << 20          # bytes traced while loading one small fuzzed file
_DIR = tempfile.mkdtemp(prefix="minicnn-fuzz-")


def _valid_checkpoint():
    mc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    opt = optim.Adam(model.parameters())
    path = save_checkpoint(os.path.join(_DIR, "valid.ckpt"), model, opt, epoch=1, history={"loss": [0.5]},
                           order=np.arange(10), config={"model_name": "x", "normalization": (0.1, 0.3)})
    with open(path, "rb") as f:
        return f.read()


VALID_CKPT = _valid_checkpoint()
VALID_IDX = idx.encode_idx(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))
VALID_LABELS = idx.encode_idx(np.array([3, 7, 1], dtype=np.uint8))


def _png():
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)).save(buf, format="PNG")
    return buf.getvalue()


VALID_PNG = _png()
OUTCOMES = {}                    # (loader, outcome) -> count, printed for the closing report


def _mutations(valid):
    """Random bytes; truncations; byte overwrites; header-region overwrites; spliced garbage."""
    n = len(valid)
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=8)
    head = st.lists(st.tuples(st.integers(0, min(n, 300) - 1), st.integers(0, 255)), min_size=1, max_size=4)

    def apply(pairs):
        b = bytearray(valid)
        for i, v in pairs:
            b[i] = v
        return bytes(b)
    return st.one_of(
        st.binary(max_size=600).map(lambda b: ("random", b)),
        st.integers(0, n - 1).map(lambda k: ("truncated", valid[:k])),
        flips.map(lambda p: ("bytes overwritten", apply(p))),
        head.map(lambda p: ("header overwritten", apply(p))),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(
            lambda t: ("garbage spliced in", valid[:t[0]] + t[1] + valid[t[0]:])),
    )


def _run(loader, kind, fn, clear_errors):
    tracemalloc.start()
    try:
        fn()
        outcome = "loaded"
    except clear_errors as e:
        assert str(e), "an error must say something"
        outcome = type(e).__name__
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{loader}: {peak:,} bytes traced for a {kind} input"
    OUTCOMES[(loader, kind, outcome)] = OUTCOMES.get((loader, kind, outcome), 0) + 1


def _write(name, data):
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@FUZZ
@given(_mutations(VALID_CKPT))
def test_checkpoint_loader_on_random_and_mutated_bytes(case):
    kind, data = case
    path = _write("fuzz.ckpt", data)

    def load():
        state = load_checkpoint(path)
        assert isinstance(state["model"], dict)
    _run("checkpoint", kind, load, CheckpointError)


@FUZZ
@given(st.one_of(_mutations(VALID_IDX), _mutations(VALID_LABELS),
                 _mutations(gzip.compress(VALID_IDX, mtime=0)).map(lambda c: (c[0] + " (gzip)", c[1]))))
def test_idx_reader_on_random_and_mutated_bytes(case):
    kind, data = case
    path = _write("fuzz-idx", data)
    _run("idx", kind, lambda: idx.read_idx(path), idx.DataError)


@FUZZ
@given(_mutations(VALID_PNG))
def test_predict_image_reader_on_random_and_mutated_bytes(case):
    kind, data = case
    path = _write("fuzz.png", data)

    def load():
        a = load_image_28x28(path)
        assert a.shape == (28, 28) and np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1
    _run("image", kind, load, CLIError)


def test_a_gzip_bomb_and_a_huge_declared_image_are_refused(monkeypatch):
    monkeypatch.setattr(idx, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    bomb = _write("bomb.gz", gzip.compress(b"\0" * (4 << 20)))          # 4 KB that expand to 4 MB
    with pytest.raises(idx.DataError, match="decompresses to more than"):
        idx.read_idx(bomb)
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG")                 # 20 Mpixel, ~20 KB on disk
    with pytest.raises(CLIError, match="5000x4000 pixels"):
        load_image_28x28(_write("huge.png", buf.getvalue()))
    deep = "[" * 100000 + "]" * 100000                                     # JSON nested past the recursion limit
    from safetensors.numpy import save_file
    path = os.path.join(_DIR, "deep.ckpt")
    save_file({}, path, metadata={"__minicnn__": '{"kind": "checkpoint", "format_version": 2, '
                                                 '"keys": ["model"]}', "model": deep})
    with pytest.raises(CheckpointError, match="not valid"):
        load_checkpoint(path)


def test_zz_print_the_outcome_table(capsys):
    """Not a check: the table of bad inputs tried (run with -s to see it)."""
    with capsys.disabled():
        print("\nloader      kind                          outcome             count")
        for (loader, kind, outcome), n in sorted(OUTCOMES.items()):
            print(f"{loader:<11} {kind:<29} {outcome:<19} {n}")
