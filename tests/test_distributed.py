"""Data-parallel training on MPI: real ``mpiexec`` runs with 1, 2 and 3 ranks.

The ranks are oversubscribed on a 2-core machine (MPICH allows it; Open MPI
gets --oversubscribe); every subprocess has a timeout, so a hang is a failure,
not a stuck CI job. The programs the ranks run are in tests/mpi_worker.py.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import distributed as dist
from minicnn import models
from minicnn.data import DataLoader
from minicnn.distributed.sync_batchnorm import SyncBatchNormFn

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
sys.path.insert(0, HERE)
import mpi_worker  # noqa: E402

pytestmark = pytest.mark.tutorial17        # what tutorials/17_*.ipynb teaches (tests/README.md)

try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec") or shutil.which("mpirun")


needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and _mpiexec()),
                               reason="needs mpi4py and mpiexec: pip install 'minicnn[distributed]'")


def _mpi_cmd(n):
    cmd = [_mpiexec()]
    if "Open MPI" in dist.mpi_library():
        cmd.append("--oversubscribe")
    return cmd + ["-n", str(n)]


def _env():
    env = dict(os.environ, MINICNN_BACKEND="numpy", PYTHONUNBUFFERED="1")
    env.pop("MINICNN_DEBUG", None)
    return env


def _run(cmd, timeout=120, cwd=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)


# -----------------------------------------------------------------------------
# N ranks x B/N == 1 process x B
# -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_weights():
    """One process, the whole batch of 12, plain BatchNorm (no SyncBatchNorm)."""
    mc.set_backend("numpy")
    fitted, history = mpi_worker.fit_tiny(distributed=False)
    return {"plain": mpi_worker.train_tiny(bn=False, sync=False),
            "bn": mpi_worker.train_tiny(bn=True, sync=False), "fit": fitted, "history": history}


@needs_mpi
@pytest.mark.parametrize("n, backend", [(1, "numpy"), (2, "numpy"), (3, "numpy"), (2, "simulator")])
def test_n_ranks_match_one_process(n, backend, tmp_path, reference_weights):
    """numpy: MPI on host buffers; simulator (a pretend GPU): the device-array path, staged via the host."""
    from safetensors.numpy import load_file
    env = dict(_env(), MINICNN_BACKEND=backend)
    r = subprocess.run(_mpi_cmd(n) + [sys.executable, WORKER, "equivalence", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    weights = load_file(str(tmp_path / f"weights_{n}.safetensors"))
    checks = json.loads((tmp_path / f"checks_{n}.json").read_text())
    assert checks["world"] == n
    init = {k: v.numpy() for k, v in mpi_worker.tiny_model(bn=True).state_dict().items()}
    for kind in ("plain", "bn"):
        ref = reference_weights[kind]
        assert set(ref) == {k[len(kind) + 1:] for k in weights if k.startswith(kind + ".")}
        for name, value in ref.items():
            err = np.abs(weights[f"{kind}.{name}"] - value).max()
            assert err < 1e-10, f"{kind} {name}: {n} ranks differ from one process by {err:.2e}"
    for name, value in reference_weights["fit"].items():       # through train.fit, 2 epochs + validation
        err = np.abs(weights[f"fit.{name}"] - value).max()
        assert err < 1e-10, f"fit: {name} differs by {err:.2e} with {n} ranks"
    hist = reference_weights["history"]
    assert len(hist["val_loss"]) == 2 and hist["val_loss"][1] < hist["val_loss"][0]
    np.testing.assert_allclose(checks["fit_val_loss"], hist["val_loss"], rtol=1e-10)
    assert checks["fit_val_acc"] == hist["val_acc"]                # all-reduced over the val shards
    moved = np.abs(ref["0.weight"] - init["0.weight"]).max()
    assert moved > 1e-3                          # the 10 steps did train (not a vacuous comparison)
    assert checks["grads_identical"] is True       # bit-identical gradients after sync, every step
    assert checks["dropout_repeatable"] and checks["dropout_distinct_ranks"]   # (seed, rank, epoch) streams
    if n > 1:
        assert checks["params_identical"] is True  # same state hash on every rank after every step
    for what, err in checks["syncbn"].items():     # SyncBN on slices == BN on the whole batch
        assert err < 1e-12, f"SyncBatchNorm {what} differs by {err:.2e} with {n} ranks"
    if n > 1:
        m = checks["mismatch"]
        assert "differs from rank 0" in m["architecture"] and "missing on rank 1" in m["architecture"]
        assert "differ from rank 0's" in m["weights"]
        assert m["after_broadcast"] is True


# -----------------------------------------------------------------------------
# In one process: the sampler, SyncBatchNorm's math, conversion
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [10, 12])
def test_sampler_shards_disjoint_cover_and_reshuffle(world, n):
    def shards(epoch, drop_last=False):
        out = []
        for r in range(world):
            s = dist.DistributedSampler(n, num_replicas=world, rank=r, seed=3, drop_last=drop_last)
            s.set_epoch(epoch)
            out.append(list(s))
        return out

    for epoch in (0, 1):
        parts = shards(epoch)
        size = -(-n // world)
        assert all(len(p) == size for p in parts)                    # equal: same number of steps
        flat = [i for p in parts for i in p]
        assert set(flat) == set(range(n))                            # covers the dataset
        assert len(flat) - len(set(flat)) == size * world - n        # only the padding repeats
        dropped = shards(epoch, drop_last=True)
        flat = [i for p in dropped for i in p]
        assert len(flat) == len(set(flat)) == (n // world) * world   # disjoint
    assert shards(0) == shards(0)                                     # deterministic
    assert shards(0) != shards(1)                                     # a new order each epoch
    one = dist.DistributedSampler(n, num_replicas=1, rank=0, seed=3)
    union = np.empty(-(-n // world) * world, dtype=int)
    for r, p in enumerate(shards(0)):
        union[r::world] = p
    assert list(union[:n]) == list(one)      # rank r holds positions r, r+R, ... of the one order


def test_sampler_without_set_epoch_repeats_the_order():
    s = dist.DistributedSampler(20, num_replicas=2, rank=0)
    assert list(s) == list(s)                                         # the classic bug, shown
    s.set_epoch(1)
    assert list(s) != list(dist.DistributedSampler(20, num_replicas=2, rank=0))
    with pytest.raises(ValueError, match="rank 2 outside"):
        dist.DistributedSampler(20, num_replicas=2, rank=2)


def test_dataloader_with_a_sampler():
    x, y = np.zeros((10, 4, 4), np.float32), np.arange(10)
    s = dist.DistributedSampler(10, num_replicas=3, rank=1, seed=0)
    loader = DataLoader((x, y), batch_size=2, sampler=s)
    assert len(loader) == 2                                           # 4 samples on this rank
    seen = np.concatenate([b[1].numpy() for b in loader])
    assert list(seen) == list(s)
    assert list(np.concatenate([b[1].numpy() for b in loader.batches(loader.epoch_order(), 1)])) \
        == list(s)[2:]                                                # resume mid-epoch
    with pytest.raises(ValueError, match="not both"):
        DataLoader((x, y), batch_size=2, sampler=s, shuffle=True)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3)])
def test_syncbatchnorm_gradcheck_one_process(cpu_backend, shape, rng):
    C = shape[1]
    x = mc.tensor(rng.standard_normal(shape) * 2 + 1, requires_grad=True, dtype="float64")
    w = mc.tensor(rng.standard_normal(C) + 1, requires_grad=True, dtype="float64")
    b = mc.tensor(rng.standard_normal(C), requires_grad=True, dtype="float64")
    mc.gradcheck(lambda x, w, b: SyncBatchNormFn.apply(
        x, w, b, running_mean=None, running_var=None, momentum=0.1, eps=1e-5), [x, w, b])


def test_convert_sync_batchnorm_keeps_names_and_outputs(rng):
    mc.manual_seed(0)
    model = models.get_model("reference-bn").double()
    mc.manual_seed(0)
    twin = models.get_model("reference-bn").double()
    keys = list(model.state_dict())
    dist.convert_sync_batchnorm(twin)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in twin.modules()) == 3
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in twin.modules())
    assert list(twin.state_dict()) == keys
    x = mc.tensor(rng.standard_normal((6, 1, 28, 28)), dtype="float64")
    for train in (True, False):
        model.train(train), twin.train(train)
        if train:
            mc.manual_seed(1)
        a = model(x).numpy()
        if train:
            mc.manual_seed(1)
        b = twin(x).numpy()
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    for m1, m2 in zip(model.state_dict().values(), twin.state_dict().values()):
        np.testing.assert_allclose(m2.numpy(), m1.numpy(), atol=1e-12)        # running stats too


def test_world_of_one_is_a_no_op():
    rank, world = dist.init()
    assert (rank, world) == (0, 1)                    # pytest itself is not started by mpiexec
    buf = np.arange(4.0)
    assert dist.all_reduce_(buf, average=True) is buf and list(buf) == [0, 1, 2, 3]
    model = mpi_worker.tiny_model(bn=False)
    before = dist.state_hash(model)
    ddp = dist.DistributedDataParallel(model)
    assert dist.state_hash(model) == before and ddp.module is model


def test_buckets_pack_parameters_in_reverse_order():
    model = models.get_model("reference")
    assert len(dist.DistributedDataParallel(model).buckets()) == 1      # 225k float32 < 1 MiB
    one = dist.DistributedDataParallel(model, bucket_cap_mb=0.25).buckets()
    per = dist.DistributedDataParallel(model, bucket_cap_mb=0).buckets()
    params = [p for p in model.parameters()][::-1]
    assert [p for b in one for p in b] == params == [p for b in per for p in b]
    assert len(per) == len(params) and 1 < len(one) < len(params)
    assert all(sum(p.array.nbytes for p in b) <= 2**18 or len(b) == 1 for b in one)


# -----------------------------------------------------------------------------
# The CLI under mpiexec: rank 0 alone writes, exact resume, faults
# -----------------------------------------------------------------------------
TRAIN = ["-m", "minicnn.cli", "train", "--distributed", "--model", "reference-bn", "--limit-train", "64",
         "--limit-test", "16", "--batch-size", "8", "--val-split", "0.25", "--no-progress", "--seed", "1"]


def _model_arrays(path):
    from minicnn.train import load_checkpoint
    return {k: np.asarray(v) for k, v in load_checkpoint(path)["model"].items()}


@needs_mpi
def test_cli_two_ranks_rank0_writes_and_resume_is_exact(tmp_path):
    a, b = tmp_path / "rank0", tmp_path / "rank1"
    a.mkdir(), b.mkdir()
    # MPMD: the same program, each rank in its own working folder, so we can see who wrote what
    py = [sys.executable] + TRAIN + ["--epochs", "2", "--out", "run"]
    r = _run([_mpiexec(), "-n", "1", "-wdir", str(a)] + py + [":", "-n", "1", "-wdir", str(b)] + py)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "global batch 2 x 8 = 16" in r.stdout and "lr 0.001 unchanged" in r.stdout
    assert r.stdout.count("epoch 2/2: train loss") == 1            # rank 0 alone prints
    written = sorted(os.listdir(a / "run"))
    assert {"last.ckpt", "best.ckpt", "history.json", "curves.png"} <= set(written)
    assert list(b.rglob("*")) == []                                  # rank 1 wrote nothing at all
    hist = json.loads((a / "run" / "history.json").read_text())
    assert len(hist["history"]["val_acc"]) == 2
    # the same run in two halves: 1 epoch, then --resume to 2 epochs
    half = tmp_path / "half"
    r1 = _run(_mpi_cmd(2) + [sys.executable] + TRAIN + ["--epochs", "1", "--out", str(half)])
    assert r1.returncode == 0, r1.stdout + r1.stderr
    r2 = _run(_mpi_cmd(2) + [sys.executable] + TRAIN + ["--epochs", "2", "--out", str(half),
                                                        "--resume", str(half / "last.ckpt")])
    assert r2.returncode == 0, r2.stdout + r2.stderr
    full, resumed = _model_arrays(a / "run" / "last.ckpt"), _model_arrays(half / "last.ckpt")
    for k in full:
        assert np.array_equal(full[k], resumed[k]), f"resumed run differs in {k}"
    hist2 = json.loads((half / "history.json").read_text())
    assert hist2["history"]["val_loss"] == hist["history"]["val_loss"]


@needs_mpi
def test_a_failing_rank_aborts_the_job_quickly(tmp_path):
    out = tmp_path / "run"
    t0 = time.time()
    r = _run(_mpi_cmd(2) + [sys.executable, WORKER, "cli-fault"] + TRAIN[2:] + ["--epochs", "3", "--out",
                                                                                str(out)], timeout=90)
    end = time.time()
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "injected fault on rank 1 at batch 4" in text
    assert "rank 1 of 2 failed" in text and "MPI_Abort" in text
    fault_at = float(re.search(r"FAULT_AT ([0-9.]+)", text).group(1))
    assert t0 < fault_at < end and end - fault_at < 10, f"took {end - fault_at:.1f}s to abort"
    for path in glob.glob(str(out / "*.ckpt")):                    # never a half-written checkpoint
        _model_arrays(path)


def test_cli_distributed_in_one_process(tmp_path, capsys):
    from minicnn.cli import commands as cli
    out = tmp_path / "one"
    args = TRAIN[2:] + ["--epochs", "1", "--out", str(out), "--scale-lr", "linear", "--lr", "0.002"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "distributed: 1 rank(s)" in text and "lr 0.002 x 1 = 0.002" in text
    from minicnn.train import load_checkpoint
    config = load_checkpoint(out / "last.ckpt")["config"]
    assert config["world_size"] == 1 and config["lr_used"] == 0.002
    assert cli.main(["train", "--scale-lr", "linear", "--limit-train", "64", "--out", str(out)]) == 2
    assert cli.main(["info"]) == 0
    assert "world size 1" in capsys.readouterr().out


def test_cli_distributed_refuses_a_nan_policy_that_would_desynchronise_ranks(tmp_path, capsys):
    from minicnn.cli import commands as cli
    args = TRAIN[2:] + ["--epochs", "1", "--out", str(tmp_path / "x"), "--nan-policy", "skip-batch"]
    assert cli.main(args) == 2
    assert "--distributed supports only --nan-policy stop, got 'skip-batch'" in capsys.readouterr().err


def _gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@needs_mpi
@pytest.mark.parametrize("mode", ["host", "nccl"])
def test_gpu_allreduce_matches_one_process(mode, tmp_path, reference_weights):
    """The cupy backend's device all-reduce (NCCL needs a GPU per rank; host staging works on one)."""
    from safetensors.numpy import load_file
    gpus = _gpu_count()
    if gpus == 0:
        pytest.skip("needs CuPy and a CUDA GPU (the cupy backend); the GPU all-reduce path is untested here")
    if mode == "nccl" and gpus < 2:
        pytest.skip("NCCL needs one GPU per rank; this machine has 1")
    env = dict(_env(), MINICNN_BACKEND="cupy", MINICNN_DIST_GPU=mode)
    r = subprocess.run(_mpi_cmd(2) + [sys.executable, WORKER, "equivalence", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    weights = load_file(str(tmp_path / "weights_2.safetensors"))
    for kind in ("plain", "bn"):
        for name, value in reference_weights[kind].items():
            assert np.abs(weights[f"{kind}.{name}"] - value).max() < 1e-10, f"{kind} {name} on the GPU"


def test_launched_by_mpirun_without_mpi4py_is_an_error(monkeypatch):
    """N copies that each believe they are alone would train N unrelated models: refuse clearly."""
    monkeypatch.setattr(dist.data_parallel, "_world", dist.data_parallel._World())
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py now fails
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(RuntimeError, match="MPI launcher with 2 processes, but mpi4py cannot be used"):
        dist.init()
    monkeypatch.setattr(dist.data_parallel, "_world", dist.data_parallel._World())
    monkeypatch.delenv("PMI_SIZE")
    assert dist.init() == (0, 1)                               # alone and without MPI: a world of one
    assert "mpi4py unavailable" in dist.mpi_library()


def test_mid_epoch_checkpoint_gets_this_ranks_shard(tmp_path):
    """interrupted.ckpt holds rank 0's order; on resume each rank must take its own shard again."""
    import argparse
    from minicnn.cli.commands import Run
    from minicnn.distributed import cli as plugin
    from minicnn.train import save_checkpoint
    model = mpi_worker.tiny_model(bn=False)
    path = save_checkpoint(tmp_path / "interrupted.ckpt", model, epoch=1, batch=2,
                           order=np.arange(10)[::-1].copy(), partial=(0.0, 0, 0, 0.0))
    x, y = np.zeros((30, 6, 6), np.float32), np.arange(30) % 3
    loader = dist.shard_loader(DataLoader((x, y), batch_size=4), shuffle=True, seed=5)
    args = argparse.Namespace(resume=path)
    plugin._resume_mid_epoch(args, Run(train_loader=loader, main_process=False))
    expected = dist.DistributedSampler(30, shuffle=True, seed=5)
    expected.set_epoch(1)
    assert isinstance(args.resume, dict) and args.resume["batch"] == 2
    assert list(args.resume["order"]) == list(expected)         # this rank's shard of epoch 1
    args = argparse.Namespace(resume=save_checkpoint(tmp_path / "last.ckpt", model, epoch=1, batch=0))
    plugin._resume_mid_epoch(args, Run(train_loader=loader, main_process=False))
    assert args.resume == str(tmp_path / "last.ckpt")            # end of epoch: nothing to change
