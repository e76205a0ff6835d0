"""Data-parallel training on MPI (through mpi4py): every process holds a
replica of the model and a different shard of every batch.

    mpirun -n 2 python train.py            # or: mpirun -n 2 minicnn train --distributed

One step on rank r of N, with a global batch of B samples split B/N per rank::

    loss_r = mean over rank r's B/N samples of loss(model(x), y)
    g_r    = d loss_r / d theta                     (ordinary backward, local)
    g      = (g_0 + g_1 + ... + g_{N-1}) / N        (Allreduce, then divide)
    theta <- optimizer(theta, g)                    (identical on every rank)

Because the per-rank losses are means over equal shards, the mean of the
per-rank gradients *is* the gradient of the mean loss over the whole global
batch: N ranks x batch B/N compute exactly what one process with batch B
computes, up to the order of floating-point additions (the tests check 1e-10
in float64). The replicas start identical (rank 0's parameters and buffers
are broadcast at construction and the result is checked with a hash), receive
identical averaged gradients, and run the same optimizer, so they stay
identical without ever sending parameters again.

The pieces, named after PyTorch's DDP and Horovod:

* :func:`init` -> ``(rank, world_size)``; ``(0, 1)`` without MPI, and then
  everything here is a no-op, so one script runs with and without mpirun.
* :class:`DistributedDataParallel` — broadcast + hash check at construction;
  ``ddp(x)`` runs the model; ``ddp.sync_gradients()`` after ``backward()``
  averages the gradients, packed into a few flat *buckets* (one Allreduce per
  bucket instead of one per parameter: each call has a fixed latency, and
  big messages use the network's bandwidth better).
* :class:`DistributedSampler` — each rank's disjoint shard of a new
  permutation every epoch (``set_epoch``), padded to equal sizes.
* :class:`minicnn.nn.SyncBatchNorm` / :func:`convert_sync_batchnorm` — batch
  statistics over the global batch.
* :func:`seed_per_rank` — each rank its own dropout / augmentation stream,
  seeded by ``(seed, rank, epoch)``.
* :func:`make_train_step`, :class:`SamplerEpochCallback`, :func:`evaluate` —
  how ``train.fit`` (the one training loop) runs data-parallel.
* :func:`abort` — a failing rank takes the whole job down (``MPI_Abort``)
  instead of leaving the others waiting forever inside a collective.

GPU (cupy backend): gradients are reduced on the device with NCCL
(``cupy.cuda.nccl``) when it is available, or by passing the device buffer
straight to MPI when the MPI library is CUDA-aware
(``MINICNN_DIST_GPU=cuda-aware``); otherwise (``MINICNN_DIST_GPU=host``, or
neither is available) each bucket is copied to the host, reduced there and
copied back — correct, but the copies cost two PCIe transfers per bucket.
"""
from __future__ import annotations

import hashlib
import os
import sys
import traceback

import numpy as np

from .. import rng
from ..backend import current, get_backend, to_device, to_host
from ..autograd.tensor import Tensor, no_grad


# Set by mpiexec / mpirun (MPICH, Open MPI, MVAPICH; srun with PMI) to the number of processes started.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class _World:
    """The MPI world as this process sees it (filled in by :func:`init`)."""

    def __init__(self):
        self.initialized = False
        self.comm = None          # mpi4py.MPI.COMM_WORLD, or None without MPI
        self.MPI = None
        self.rank, self.size = 0, 1
        self.nccl = None          # a cupy NCCL communicator, built on first use on the GPU


_world = _World()


def init():
    """Join the MPI world; return ``(rank, world_size)``.

    Without mpi4py (or started without mpirun) this is rank 0 of a world of 1,
    and every collective below returns its input. Calling it again is free.
    With more than one rank, an uncaught exception on any rank aborts the whole
    job (``MPI_Abort``) after printing its traceback, so no rank is left
    waiting in a collective for a peer that died.
    """
    if _world.initialized:
        return _world.rank, _world.size
    try:
        from mpi4py import MPI
    except Exception as e:                  # not installed, or no MPI library to load
        launched = max(int(os.environ.get(k, "1") or 1) for k in _LAUNCHER_SIZE_VARS)
        if launched > 1:                    # N copies that each think they are alone: refuse
            raise RuntimeError(f"started by an MPI launcher with {launched} processes, but mpi4py cannot "
                               f"be used ({type(e).__name__}: {e}); pip install 'minicnn[distributed]'") \
                from None
        MPI = None
    if MPI is not None:
        _world.MPI, _world.comm = MPI, MPI.COMM_WORLD
        _world.rank, _world.size = _world.comm.Get_rank(), _world.comm.Get_size()
    _world.initialized = True
    if _world.size > 1:
        sys.excepthook = _abort_on_uncaught
        if get_backend() == "cupy":
            _select_gpu()
    return _world.rank, _world.size


def _select_gpu():
    """One GPU per rank: rank k on a machine uses GPU k mod (GPUs visible).

    Arrays made before :func:`init` live on the default GPU, so call ``init()``
    before building the model — or, as clusters usually do (Slurm's
    ``--gpus-per-task=1``), let each rank see just its own GPU.
    """
    local_rank = _world.comm.Split_type(_world.MPI.COMM_TYPE_SHARED).Get_rank()
    use_device_for_rank(local_rank)


def get_rank() -> int:
    return init()[0]


def get_world_size() -> int:
    return init()[1]


def local_size() -> int:
    """How many ranks of the job run on this machine (they share its cores)."""
    if get_world_size() == 1:
        return 1
    return _world.comm.Split_type(_world.MPI.COMM_TYPE_SHARED).Get_size()


def is_main_process() -> bool:
    """True on rank 0, the one rank that prints and writes files."""
    return get_rank() == 0


def mpi_library() -> str:
    """One line naming the MPI library mpi4py is linked to (or why there is none)."""
    try:
        from mpi4py import MPI
    except Exception as e:
        return f"mpi4py unavailable ({type(e).__name__}: {e}); pip install 'minicnn[distributed]'"
    import mpi4py
    return f"mpi4py {mpi4py.__version__}, {' '.join(MPI.Get_library_version().splitlines()[0].split())}"


def _abort_on_uncaught(exc_type, exc, tb):
    traceback.print_exception(exc_type, exc, tb)
    abort(f"uncaught {exc_type.__name__}: {exc}")


def abort(message, code=1):
    """Print ``message`` with this rank's number and end every process of the job.

    ``MPI_Abort`` is the only reliable way out of a failure on one rank: the
    others may be blocked in an Allreduce that will never complete. Without
    MPI (one process) it raises SystemExit instead.
    """
    rank, size = _world.rank, _world.size
    print(f"minicnn.distributed: rank {rank} of {size} failed: {message}\n"
          f"minicnn.distributed: aborting all {size} processes (MPI_Abort)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if _world.comm is not None and size > 1:
        _world.comm.Abort(code)
    raise SystemExit(code)


def barrier():
    if get_world_size() > 1:
        _world.comm.Barrier()


# -----------------------------------------------------------------------------
# Collectives on backend arrays
# -----------------------------------------------------------------------------
def all_reduce_(buf, average=False):
    """Sum (or average) ``buf`` over all ranks, in place; returns ``buf``.

    ``buf`` is a contiguous backend array (NumPy, or CuPy on the GPU). Every
    rank must call this with a buffer of the same size and dtype, in the same
    order — MPI matches collectives by their order, not by name.
    """
    rank, size = init()
    if size == 1:
        return buf
    MPI = _world.MPI
    if isinstance(buf, np.ndarray):
        _world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    elif get_backend() == "cupy":
        _all_reduce_device_(buf)
    else:                                   # a device without a device path (the simulator): via the host
        host = np.ascontiguousarray(to_host(buf))
        _world.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        buf[...] = to_device(host)
    if average:
        buf /= size
    return buf


# -----------------------------------------------------------------------------
# The GPU's side (cupy backend only): device choice and NCCL, through CuPy
# -----------------------------------------------------------------------------
# Process and device set-up, not kernels: they live here, beside the code that
# uses them. CuPy is the backend's array module, ``current.xp``; NCCL is CuPy's
# ``cupy.cuda.nccl``, imported only when a GPU job asks for it.
def use_device_for_rank(local_rank):
    """One GPU per rank: rank k on a machine uses GPU k mod (number of visible GPUs)."""
    cuda = current.xp.cuda
    n = cuda.runtime.getDeviceCount()
    if n > 1:
        cuda.Device(local_rank % n).use()
    return n


def _nccl():
    from cupy.cuda import nccl          # the cupy backend is active: CuPy is installed
    return nccl


def nccl_available():
    """Whether CuPy was built with NCCL (``cupy.cuda.nccl``)."""
    try:
        return bool(_nccl().available)
    except Exception:
        return False


def nccl_unique_id():
    """A new NCCL id (rank 0 makes it; MPI sends it to the others)."""
    return _nccl().get_unique_id()


def nccl_communicator(world_size, unique_id, rank):
    """This rank's NCCL communicator among ``world_size`` ranks sharing ``unique_id``."""
    return _nccl().NcclCommunicator(world_size, unique_id, rank)


def nccl_all_reduce_sum_(comm, buf):
    """In-place sum of a float32/float64 device buffer over the NCCL communicator's ranks."""
    nccl = _nccl()
    dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    if buf.dtype not in dtypes:
        raise TypeError(f"nccl_all_reduce_sum_: expected float32 or float64, got {buf.dtype}")
    stream = current.xp.cuda.get_current_stream()
    comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtypes[buf.dtype], nccl.NCCL_SUM, stream.ptr)
    return buf


def synchronize():
    """Wait for the current stream's kernels (before another library reads device memory)."""
    current.xp.cuda.get_current_stream().synchronize()


def _gpu_mode():
    mode = os.environ.get("MINICNN_DIST_GPU", "auto")
    if mode not in ("auto", "nccl", "cuda-aware", "host"):
        raise ValueError(f"MINICNN_DIST_GPU must be auto, nccl, cuda-aware or host, got {mode!r}")
    if mode == "auto":
        return "nccl" if nccl_available() else "host"
    return mode


def _nccl_comm():
    """A NCCL communicator over the MPI world: rank 0 makes an id, MPI broadcasts it."""
    if _world.nccl is None:
        uid = nccl_unique_id() if _world.rank == 0 else None
        uid = _world.comm.bcast(uid, root=0)
        _world.nccl = nccl_communicator(_world.size, uid, _world.rank)
    return _world.nccl


def _all_reduce_device_(buf):
    """Sum a CuPy buffer over ranks on the GPU (NCCL / CUDA-aware MPI) or through the host."""
    mode = _gpu_mode()
    if mode == "nccl":
        nccl_all_reduce_sum_(_nccl_comm(), buf)
    elif mode == "cuda-aware":
        synchronize()       # MPI reads the memory directly: the kernels must be done
        _world.comm.Allreduce(_world.MPI.IN_PLACE, buf, op=_world.MPI.SUM)
    else:
        host = np.ascontiguousarray(to_host(buf))
        _world.comm.Allreduce(_world.MPI.IN_PLACE, host, op=_world.MPI.SUM)
        buf[...] = to_device(host)


def all_reduce_numbers(values, average=False):
    """Sum a short list of Python numbers over ranks (in float64); returns a list."""
    buf = np.asarray(values, dtype=np.float64).copy()
    if get_world_size() > 1:
        _world.comm.Allreduce(_world.MPI.IN_PLACE, buf, op=_world.MPI.SUM)
        if average:
            buf /= get_world_size()
    return buf.tolist()


def all_gather_object(object_list, obj):
    """``object_list[r]`` = rank r's ``obj`` on every rank (PyTorch's ``dist.all_gather_object``).

    For small Python objects (a hash, a count): they travel pickled, between the
    ranks of this job only — never from disk. ``object_list`` must have one slot per rank.
    """
    if len(object_list) != get_world_size():
        raise ValueError(f"all_gather_object: object_list needs one slot per rank ({get_world_size()}), "
                         f"got {len(object_list)}")
    object_list[:] = _world.comm.allgather(obj) if get_world_size() > 1 else [obj]


def broadcast_(buf, root=0):
    """Overwrite ``buf`` (a host array) with rank ``root``'s; returns it."""
    if get_world_size() > 1:
        _world.comm.Bcast(buf, root=root)
    return buf


# -----------------------------------------------------------------------------
# Model replicas
# -----------------------------------------------------------------------------
def _state_tensors(model):
    """(name, Tensor) for every parameter and buffer, in the model's fixed order."""
    out = [(name, p) for name, p in model.named_parameters()]
    out += [(name, b) for name, b in model.named_buffers() if b is not None]
    return out


def _signature(model):
    return [(name, tuple(int(s) for s in t.shape), str(t.array.dtype)) for name, t in _state_tensors(model)]


def state_hash(model) -> str:
    """SHA-256 of every parameter's and buffer's name, shape, dtype and bytes."""
    h = hashlib.sha256()
    for name, t in _state_tensors(model):
        a = np.ascontiguousarray(to_host(t.array))
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_same_structure(model):
    """Every rank must hold the same architecture; raise on all ranks, naming the difference."""
    sigs = _world.comm.allgather(_signature(model))
    for r, sig in enumerate(sigs):
        if sig == sigs[0]:
            continue
        zero = {n: (shape, dt) for n, shape, dt in sigs[0]}
        other = {n: (shape, dt) for n, shape, dt in sig}
        diffs = [f"{n}: {zero.get(n, 'missing')} on rank 0, {other.get(n, 'missing')} on rank {r}"
                 for n in list(zero) + [n for n in other if n not in zero] if zero.get(n) != other.get(n)]
        raise ValueError(f"DistributedDataParallel: rank {r}'s model differs from rank 0's "
                         f"({len(diffs)} tensor(s); (shape, dtype) shown): " + "; ".join(diffs[:5]))


def broadcast_state(model, root=0):
    """Copy rank ``root``'s parameters and buffers into every rank's model."""
    if get_world_size() == 1:
        return model
    for _, t in _state_tensors(model):
        host = np.ascontiguousarray(to_host(t.array)).copy()
        broadcast_(host, root)
        t.array = to_device(host)
    return model


def check_replicas(model, what="models"):
    """Raise on every rank unless every rank's model hashes to rank 0's."""
    if get_world_size() == 1:
        return
    hashes = _world.comm.allgather(state_hash(model))
    bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if bad:
        raise ValueError(f"DistributedDataParallel: the {what} of rank(s) {bad} differ from rank 0's "
                         f"(state hash {hashes[bad[0]][:12]} vs {hashes[0][:12]}): the replicas would "
                         "train apart. Broadcast rank 0's state (broadcast=True) or seed every rank alike.")


class DistributedDataParallel:
    """Wrap a model for data-parallel training across the MPI world.

    At construction: check that every rank has the same architecture, copy
    rank 0's parameters and buffers to every rank (``broadcast=True``), then
    check with a hash that all replicas are identical — a clear error on every
    rank otherwise. ``ddp(x)`` runs the model; after ``loss.backward()``,
    :meth:`sync_gradients` replaces every gradient by its mean over the ranks.

    Buckets: the trainable parameters, in reverse registration order (the
    order backward produces their gradients, which is what a version that
    overlaps communication with backward would use), are packed into flat
    contiguous buffers of at most ``bucket_cap_mb`` MiB each; one Allreduce per
    bucket. ``bucket_cap_mb=0`` gives one bucket per parameter (for the
    benchmark). The layout depends only on the model, so every rank issues
    the same Allreduces in the same order.

    A parameter whose gradient is None on a rank (unused in its forward)
    contributes zeros; after the sync every rank holds the same averaged
    gradient for it. Frozen parameters (``requires_grad=False``) are skipped.

    Unlike PyTorch's DDP this is not a Module: ``ddp.module`` is the model
    itself, and its ``state_dict()`` has the model's own keys (no ``module.``
    prefix), so checkpoints load into the plain model.
    """

    def __init__(self, model, broadcast=True, bucket_cap_mb=1.0):
        self.rank, self.world_size = init()
        self.module = model
        self.bucket_cap_bytes = int(bucket_cap_mb * 2**20)
        self._layout_key, self._buckets = None, []
        if self.world_size > 1:
            _check_same_structure(model)
            if broadcast:
                broadcast_state(model)
            check_replicas(model, "initial models")

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def train(self, mode=True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state, strict=True):
        return self.module.load_state_dict(state, strict)

    def buckets(self):
        """Lists of parameters, one per Allreduce (built once per set of trainable parameters)."""
        params = [p for p in self.module.parameters() if p.requires_grad][::-1]
        key = tuple(id(p) for p in params)
        if key != self._layout_key:
            buckets, size, dtype = [], 0, None
            for p in params:
                nbytes = p.array.nbytes
                if not buckets or size + nbytes > self.bucket_cap_bytes or p.array.dtype != dtype:
                    buckets.append([])
                    size, dtype = 0, p.array.dtype
                buckets[-1].append(p)
                size += nbytes
            self._layout_key, self._buckets = key, buckets
        return self._buckets

    def sync_gradients(self):
        """Average every trainable parameter's gradient over the ranks (bucketed Allreduce)."""
        if self.world_size == 1:
            return
        xp = current.xp
        for bucket in self.buckets():
            flat = xp.concatenate([(p.grad.array if p.grad is not None else xp.zeros_like(p.array)).ravel()
                                   for p in bucket])                       # one contiguous buffer
            all_reduce_(flat, average=True)
            offset = 0
            for p in bucket:
                n = p.array.size
                g = flat[offset:offset + n].reshape(p.array.shape)
                if p.grad is None:
                    p.grad = Tensor(g)
                else:
                    p.grad.array = g
                offset += n

    def broadcast_buffers(self):
        """Copy rank 0's buffers (e.g. plain BatchNorm running statistics) to every rank."""
        if self.world_size == 1:
            return
        for _, b in self.module.named_buffers():
            if b is not None:
                host = np.ascontiguousarray(to_host(b.array)).copy()
                b.array = to_device(broadcast_(host))


# -----------------------------------------------------------------------------
# Data
# -----------------------------------------------------------------------------
class DistributedSampler:
    """Each rank's share of the sample indices for one epoch (PyTorch's semantics).

    Every rank draws the *same* permutation, from ``(seed, epoch)`` alone, and
    takes every ``num_replicas``-th index starting at its rank::

        order  = permutation(N) seeded by (seed, epoch)    (0..N-1 if not shuffle)
        order += order[:pad]          pad = ceil(N / R) * R - N   (repeat the first few)
        rank r gets order[r::R]       (ceil(N / R) indices, disjoint across ranks)

    So the shards are disjoint, together cover the dataset, and all have the
    same length — needed because every rank must run the same number of steps
    (each step is a collective). With padding, up to R-1 samples are seen
    twice per epoch; ``drop_last=True`` instead drops the last ``N mod R``
    indices of the permutation (different ones each epoch).

    Cut rank r's shard into local batches of b and batch k of every rank
    together is exactly samples ``k*R*b .. (k+1)*R*b - 1`` of the padded
    permutation: one process with batch R*b and this order sees the same
    global batches — the basis of the equivalence tests.

    Call ``set_epoch(e)`` before each epoch, or every epoch repeats the same
    order (the classic bug; :class:`SamplerEpochCallback` does it inside ``fit``).
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        r, w = init()
        self.num_replicas = w if num_replicas is None else int(num_replicas)
        self.rank = r if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"DistributedSampler: rank {self.rank} outside [0, {self.num_replicas})")
        self.n = dataset if isinstance(dataset, (int, np.integer)) else len(dataset)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = -(-self.n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def global_order(self):
        """The padded (or truncated) permutation that all ranks share this epoch."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.total_size > self.n:
            order = np.resize(order, self.total_size)      # repeats from the start
        return order[:self.total_size]

    def __iter__(self):
        return iter(self.global_order()[self.rank::self.num_replicas].tolist())

    def __len__(self):
        return self.num_samples


class _EvalShard:
    """Contiguous, unpadded shards for evaluation (padding would count samples twice)."""

    def __init__(self, n, rank, world):
        self.indices = np.array_split(np.arange(n), world)[rank]

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.indices.tolist())

    def __len__(self):
        return len(self.indices)


def shard_loader(loader, shuffle=True, seed=0, eval=False):
    """A DataLoader over the same data with this rank's shard (a DistributedSampler)."""
    from ..data import DataLoader
    r, w = init()
    n = len(loader.arrays[0]) if loader.arrays is not None else len(loader.dataset)
    sampler = _EvalShard(n, r, w) if eval else DistributedSampler(n, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset if loader.arrays is None else loader.arrays,
                      batch_size=loader.batch_size, drop_last=loader.drop_last,
                      transform=loader.transform, sampler=sampler)


# -----------------------------------------------------------------------------
# Randomness per rank
# -----------------------------------------------------------------------------
def seed_per_rank(seed, epoch=None):
    """Reseed the framework's generator from ``(seed, rank[, epoch])``.

    Dropout masks and augmentation must differ between ranks (otherwise the N
    shards see N copies of the same noise) yet be repeatable: each rank gets
    its own stream, a deterministic function of the seed and its rank.
    Including the epoch makes every epoch's stream known in advance, which is
    what lets a resumed run (from an end-of-epoch checkpoint) continue exactly.
    """
    entropy = [int(seed), get_rank()] + ([] if epoch is None else [int(epoch)])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    rng.manual_seed(int(state[0]) << 32 | int(state[1]))


# -----------------------------------------------------------------------------
# The training loop's side: a train_step, a callback, evaluation
# -----------------------------------------------------------------------------
def make_train_step(ddp):
    """A ``train_step`` for :func:`minicnn.train.fit`: the standard step plus the gradient sync."""

    def ddp_step(model, optimizer, x, y, loss_fn):
        out = ddp(x)
        loss = loss_fn(out, y)              # mean over this rank's share of the global batch
        optimizer.zero_grad()
        loss.backward()
        ddp.sync_gradients()                # now: the gradient of the mean loss over the global batch
        optimizer.step()
        return loss, out

    return ddp_step


class SamplerEpochCallback:
    """``fit`` callback: ``sampler.set_epoch(epoch)`` and the per-rank RNG, before each epoch."""

    def __init__(self, sampler, seed=None):
        self.sampler, self.seed = sampler, seed

    def on_epoch_begin(self, epoch, model):
        self.sampler.set_epoch(epoch)
        if self.seed is not None:
            seed_per_rank(self.seed, epoch)

    def on_epoch_end(self, epoch, model, logs):
        pass


def evaluate(model, loader, loss_fn=None, ddp=None) -> dict:
    """Loss and accuracy over every rank's shard of ``loader``, summed over ranks.

    Each rank evaluates its own part (``shard_loader(..., eval=True)``) and
    the sums (loss x count, correct, count) are all-reduced, so every rank gets
    the metrics of the whole set. Rank 0's buffers (plain BatchNorm running
    statistics, which each rank updates from its own shard) are broadcast
    first, so every rank evaluates the same model — the one rank 0 saves.
    """
    from .. import functional as F
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if ddp is not None:
        ddp.broadcast_buffers()
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    try:
        with no_grad():
            for x, y in loader:
                out = model(x)
                total += loss_fn(out, y).item() * len(y)
                correct += int((out.array.argmax(axis=1) == y.array).sum())
                count += len(y)
    finally:
        model.train(was_training)
    total, correct, count = all_reduce_numbers([total, correct, count])
    if count == 0:
        raise ValueError("distributed.evaluate: the loader produced no samples on any rank")
    return {"loss": total / count, "accuracy": correct / count, "count": int(count)}


def convert_sync_batchnorm(model):
    """Replace every BatchNorm1d / BatchNorm2d in ``model`` by a SyncBatchNorm (in place; returns it).

    Parameters, running statistics and train/eval mode carry over, so a
    converted model computes the same thing on one process, and its
    ``state_dict`` keys are unchanged.
    """
    from ..nn import SyncBatchNorm
    from ..nn.layers import BatchNormBase
    if isinstance(model, BatchNormBase) and not isinstance(model, SyncBatchNorm):
        return SyncBatchNorm.from_batchnorm(model)
    for name, child in list(model.named_children()):
        new = convert_sync_batchnorm(child)
        if new is not child:
            model._modules[name] = new           # in place: keeps the children's order
    return model
