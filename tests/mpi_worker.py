"""Programs that tests/test_distributed.py runs under ``mpiexec -n N``.

    mpiexec -n N python tests/mpi_worker.py equivalence OUT_DIR
    mpiexec -n 2 python tests/mpi_worker.py cli-fault ARGS...      (minicnn train, rank 1 fails)

``equivalence``: 10 float64 SGD steps of two tiny models (one without BN, one
with BatchNorm converted to SyncBatchNorm), each rank with a local batch of
GLOBAL_BATCH / N from a DistributedSampler. On the way it checks that the
gradients after ``sync_gradients`` are bit-identical on every rank and that
the parameters are identical after every step; it also checks SyncBatchNorm's
forward and backward directly, and that mismatched models are detected.
Rank 0 writes the final weights (safetensors) and a JSON of the checks; the
test compares the weights with :func:`train_tiny` run in one process with the
whole batch (``world == 1``), to 1e-10.
"""
import json
import os
import sys
import time

import numpy as np

import minicnn as mc
import minicnn.nn as nn
from minicnn import distributed as dist
from minicnn import functional as F
from minicnn import optim

GLOBAL_BATCH = 12
STEPS = 10
N_SAMPLES = GLOBAL_BATCH * STEPS          # one epoch of 10 steps, no padding for N = 1, 2, 3


def tiny_data(n=N_SAMPLES, seed=0):
    rs = np.random.default_rng(seed)
    x = rs.standard_normal((n, 1, 6, 6))
    y = rs.integers(0, 3, n)
    x[np.arange(n), 0, y, y] += 2.0                    # a learnable signal
    return x, y


def tiny_model(bn, seed=0):
    mc.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3)]
    if bn:
        layers += [nn.BatchNorm2d(4)]
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)]
    return nn.Sequential(*layers).double()


def _grads_identical(model):
    flat = np.concatenate([mc.backend.to_host(p.grad.array).ravel() for p in model.parameters()])
    return dist.get_world_size() == 1 or all(
        np.array_equal(g, flat) for g in dist.data_parallel._world.comm.allgather(flat))


def train_tiny(bn, sync=True, global_batch=GLOBAL_BATCH, steps=STEPS, lr=0.1, checks=None):
    """10 SGD steps; each rank takes global_batch / world samples of every global batch."""
    rank, world = dist.init()
    x, y = tiny_data()
    model = tiny_model(bn)
    if bn and sync:
        dist.convert_sync_batchnorm(model)
    ddp = dist.DistributedDataParallel(model)
    opt = optim.SGD(model.parameters(), lr=lr)
    sampler = dist.DistributedSampler(len(x), shuffle=True, seed=0)
    sampler.set_epoch(0)
    mine = np.array(list(sampler))
    b = global_batch // world
    for k in range(steps):
        idx = mine[k * b:(k + 1) * b]
        loss = F.cross_entropy(ddp(mc.tensor(x[idx], dtype="float64")), mc.tensor(y[idx]))
        opt.zero_grad()
        loss.backward()
        ddp.sync_gradients()
        if checks is not None:
            checks["grads_identical"] = checks.get("grads_identical", True) and _grads_identical(model)
        opt.step()
        if checks is not None and world > 1:
            hashes = dist.data_parallel._world.comm.allgather(dist.state_hash(model))
            checks["params_identical"] = checks.get("params_identical", True) and len(set(hashes)) == 1
    return {k: mc.backend.to_host(v.array).copy() for k, v in model.state_dict().items()}


class AsFloat64(nn.Module):
    """DataLoader batches are float32; the comparison wants float64 from the first layer on."""

    def forward(self, x):
        return mc.tensor(x.array.astype(np.float64), dtype="float64")


def fit_tiny(distributed):
    """Two epochs of train.fit (float32 batches, float64 model with BatchNorm), validation each epoch.

    distributed=True: DDP step, SyncBatchNorm, sharded loaders, all-reduced validation (the
    --distributed plug-in's recipe); False: the ordinary fit with the whole batch of 12.
    """
    from minicnn.data import DataLoader
    from minicnn.train import fit
    rank, world = dist.init()
    x, y = tiny_data(96 + 20)
    xt, yt, xv, yv = x[:96].astype(np.float32), y[:96], x[96:].astype(np.float32), y[96:]
    model = nn.Sequential(AsFloat64(), tiny_model(bn=True))
    opt_params = list(model.parameters())
    sampler = dist.DistributedSampler(96, shuffle=True, seed=0)
    kwargs = dict(callbacks=[dist.SamplerEpochCallback(sampler)])
    if distributed:
        dist.convert_sync_batchnorm(model)
        ddp = dist.DistributedDataParallel(model)
        train = DataLoader((xt, yt), batch_size=GLOBAL_BATCH // world, sampler=sampler)
        val = dist.shard_loader(DataLoader((xv, yv), batch_size=8), eval=True)
        kwargs.update(train_step=dist.make_train_step(ddp),
                      evaluate_fn=lambda m, loader, loss_fn: dist.evaluate(m, loader, loss_fn, ddp=ddp))
    else:
        train = DataLoader((xt, yt), batch_size=GLOBAL_BATCH, sampler=sampler)
        val = DataLoader((xv, yv), batch_size=8)
    history = fit(model, optim.SGD(opt_params, lr=0.1), train, 2, val_loader=val, progress=False,
                  log=lambda *a, **k: None, **kwargs)
    weights = {k: mc.backend.to_host(v.array).copy() for k, v in model.state_dict().items()}
    return weights, history


def syncbn_direct(C=3):
    """SyncBatchNorm on each rank's slice of a global batch == BatchNorm on the whole batch."""
    rank, world = dist.init()
    rs = np.random.default_rng(7)
    N = 6
    x = rs.standard_normal((N, C, 4, 4)) * 3 + 1
    w = rs.standard_normal((N, C, 4, 4))               # the loss: sum(y * w)
    ref = nn.BatchNorm2d(C).double()
    dev = mc.backend.to_device
    ref.weight.array, ref.bias.array = dev(rs.standard_normal(C)), dev(rs.standard_normal(C))
    xt = mc.tensor(x, requires_grad=True, dtype="float64")
    y_ref = ref(xt)
    (y_ref * mc.tensor(w, dtype="float64")).sum().backward()
    sync = nn.SyncBatchNorm(C).double()
    sync.weight.array, sync.bias.array = ref.weight.array.copy(), ref.bias.array.copy()
    part = np.array_split(np.arange(N), world)[rank]
    xs = mc.tensor(x[part], requires_grad=True, dtype="float64")
    ys = sync(xs)
    (ys * mc.tensor(w[part], dtype="float64")).sum().backward()
    comm = dist.data_parallel._world.comm
    gather = (lambda a: np.concatenate(comm.allgather(a))) if world > 1 else (lambda a: a)
    y_all, dx_all = gather(ys.numpy()), gather(xs.grad.numpy())
    dgamma = np.array(dist.all_reduce_numbers(sync.weight.grad.numpy().tolist()))
    return {"y": float(np.abs(y_all - y_ref.numpy()).max()),
            "dx": float(np.abs(dx_all - xt.grad.numpy()).max()),
            "dgamma": float(np.abs(dgamma - ref.weight.grad.numpy()).max()),
            "running_mean": float(np.abs(sync.running_mean.numpy() - ref.running_mean.numpy()).max()),
            "running_var": float(np.abs(sync.running_var.numpy() - ref.running_var.numpy()).max())}


def mismatch_checks():
    """A different architecture, or different weights without broadcast, must be an error on every rank."""
    rank, world = dist.init()
    out = {}
    arch = tiny_model(bn=(rank == 1))
    try:
        dist.DistributedDataParallel(arch)
        out["architecture"] = "not detected"
    except ValueError as e:
        out["architecture"] = str(e)
    seeded = tiny_model(bn=False, seed=rank)
    try:
        dist.DistributedDataParallel(seeded, broadcast=False)
        out["weights"] = "not detected"
    except ValueError as e:
        out["weights"] = str(e)
    dist.DistributedDataParallel(seeded)               # broadcast: now identical
    out["after_broadcast"] = len(set(dist.data_parallel._world.comm.allgather(dist.state_hash(seeded)))) == 1
    return out


def main_equivalence(out_dir):
    from safetensors.numpy import save_file
    rank, world = dist.init()
    checks = {}
    plain = train_tiny(bn=False, checks=checks)
    bn = train_tiny(bn=True, checks=checks)
    fitted, history = fit_tiny(distributed=True)
    checks["world"] = world
    checks["fit_val_loss"] = history["val_loss"]
    checks["fit_val_acc"] = history["val_acc"]
    checks["syncbn"] = syncbn_direct()
    dist.seed_per_rank(0, epoch=3)                     # dropout streams: one per rank, repeatable
    mask = F.dropout(mc.tensor(np.ones(64)), 0.5).numpy()
    dist.seed_per_rank(0, epoch=3)
    again = F.dropout(mc.tensor(np.ones(64)), 0.5).numpy()
    masks = dist.data_parallel._world.comm.allgather(mask) if world > 1 else [mask]
    checks["dropout_repeatable"] = bool(np.array_equal(mask, again))
    checks["dropout_distinct_ranks"] = len({m.tobytes() for m in masks}) == world
    if world > 1:
        checks["mismatch"] = mismatch_checks()
    if rank == 0:
        save_file({f"plain.{k}": v for k, v in plain.items()} | {f"bn.{k}": v for k, v in bn.items()}
                  | {f"fit.{k}": v for k, v in fitted.items()},
                  os.path.join(out_dir, f"weights_{world}.safetensors"))
        with open(os.path.join(out_dir, f"checks_{world}.json"), "w") as f:
            json.dump(checks, f)


def main_cli_fault(argv):
    """`minicnn train --distributed ...` in which rank 1 raises at its 4th training batch."""
    from minicnn.cli import commands as cli
    from minicnn.data import loader
    rank, world = dist.init()
    if rank == 1:
        original, calls = loader.DataLoader._batch, [0]

        def failing(self, index):
            if self.sampler is not None and isinstance(self.sampler, dist.DistributedSampler):
                calls[0] += 1
                if calls[0] == 4:
                    print(f"FAULT_AT {time.time():.3f}", flush=True)
                    raise RuntimeError("injected fault on rank 1 at batch 4")
            return original(self, index)

        loader.DataLoader._batch = failing
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    if sys.argv[1] == "equivalence":
        main_equivalence(sys.argv[2])
    elif sys.argv[1] == "cli-fault":
        main_cli_fault(sys.argv[2:])
    else:
        raise SystemExit(f"unknown program {sys.argv[1]!r}")
