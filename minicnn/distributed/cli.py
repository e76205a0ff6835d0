"""`minicnn train --distributed`: data-parallel training under mpirun.

    mpirun -n 2 minicnn train --distributed --dataset mnist --epochs 3
    minicnn train --distributed            # one process: a world of 1, the same code path

``--batch-size`` is per rank (as in PyTorch): the global batch is
world_size x batch_size. The learning rate is left alone unless
``--scale-lr linear`` asks for lr x world_size (Goyal et al.'s linear scaling
rule for a batch that is world_size times bigger); either way the run says
what it uses.

What the plug-in changes in the Run (everything else is the ordinary `train`):

* BatchNorm layers become SyncBatchNorm (global-batch statistics);
* the model is wrapped in DistributedDataParallel (rank 0's weights
  broadcast and hash-checked);
* the training loader draws from a DistributedSampler (this rank's shard),
  and a callback calls its ``set_epoch`` and reseeds this rank's dropout /
  augmentation stream from (seed, rank, epoch) before every epoch;
* the validation loader is sharded too and its metrics are all-reduced;
* ``train_step`` all-reduces the gradients between backward and step;
* ranks > 0 print nothing and write nothing (no out_dir): rank 0 alone writes
  checkpoints, plots and history. Every rank reads the checkpoint on --resume;
  resuming from an end-of-epoch checkpoint (last.ckpt, best.ckpt) is exact.
  A Ctrl-C checkpoint (interrupted.ckpt) resumes with each rank's own shard,
  but its dropout/augmentation streams restart at the epoch's beginning.
* the training loss and accuracy in the history and the progress bar are
  rank 0's shard's (the validation metrics are the whole validation set's).
"""
from __future__ import annotations


def add_train_arguments(parser):
    g = parser.add_argument_group("data-parallel training (mpirun -n N minicnn train --distributed)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over the MPI world (one process without mpirun); --batch-size is "
                        "per rank, the global batch is world_size x batch_size")
    g.add_argument("--scale-lr", default="none", choices=("none", "linear"),
                   help="linear: multiply --lr by the world size (the global batch grows with it); "
                        "default none")


def _say(run, text):
    if run.main_process:
        print(text, flush=True)


def configure_model(args, run):
    from ..cli.commands import CLIError
    if not args.distributed:
        if args.scale_lr != "none":
            raise CLIError("--scale-lr only applies with --distributed")
        return
    from . import data_parallel as dist
    rank, world = dist.init()
    run.main_process = rank == 0
    if rank > 0:
        run.out = None                                   # fit writes no checkpoints on this rank
    dist.convert_sync_batchnorm(run.model)
    run.ddp = dist.DistributedDataParallel(run.model)
    run.train_loader = dist.shard_loader(run.train_loader, shuffle=True, seed=args.seed)
    if run.val_loader is not None:
        run.val_loader = dist.shard_loader(run.val_loader, eval=True)
    lr = args.lr
    if args.scale_lr == "linear":
        args.lr = lr * world
        lr_text = f"--scale-lr linear: lr {lr:g} x {world} = {args.lr:g}"
    else:
        lr_text = f"lr {lr:g} unchanged (--scale-lr none)"
    threads = _share_cores(world)
    run.config["world_size"] = world
    run.config["lr_used"] = args.lr
    _say(run, f"distributed: {world} rank(s) | {dist.mpi_library()} | global batch {world} x "
              f"{args.batch_size} = {world * args.batch_size} | {len(run.train_loader)} steps per epoch "
              f"| {lr_text} | BatchNorm -> SyncBatchNorm" + threads)


def _share_cores(world):
    """Ranks on one machine split its cores: N ranks x all cores each would oversubscribe them."""
    import os
    from ..backend import get_backend
    from . import data_parallel as dist
    if world == 1 or get_backend() != "numba" or "NUMBA_NUM_THREADS" in os.environ:
        return ""
    import numba
    n = max(1, (os.cpu_count() or 1) // dist.local_size())
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return f" | {numba.get_num_threads()} Numba thread(s) per rank (set NUMBA_NUM_THREADS to choose)"


def configure_training(args, run):
    from ..cli.commands import CLIError
    if not args.distributed:
        return
    from . import data_parallel as dist
    if run.train_step is not None:
        raise CLIError("--distributed cannot yet be combined with another option that replaces the "
                       "training step")
    if getattr(args, "nan_policy", "stop") != "stop":
        # each rank sees only its own loss: one rank skipping a batch while the others step would
        # desynchronise the replicas; with "stop", the rank that sees NaN aborts the whole job
        raise CLIError(f"--distributed supports only --nan-policy stop, got {args.nan_policy!r}")
    ddp = run.ddp
    run.train_step = dist.make_train_step(ddp)
    run.callbacks.append(dist.SamplerEpochCallback(run.train_loader.sampler, seed=args.seed))
    run.evaluate_fn = lambda model, loader, loss_fn: dist.evaluate(model, loader, loss_fn, ddp=ddp)
    if args.resume:
        _resume_mid_epoch(args, run)


def _resume_mid_epoch(args, run):
    """A checkpoint written mid-epoch (interrupted.ckpt) holds rank 0's shard order: give each
    rank its own. End-of-epoch checkpoints (last.ckpt, best.ckpt) need nothing and resume exactly."""
    from ..cli.commands import CLIError
    from ..train.loop import load_checkpoint
    from ..train.schema import RESUME_SCHEMA, SchemaError, check
    state = load_checkpoint(args.resume)
    try:                                    # its types and ranges, before any is used (fit checks the rest)
        check({k: state[k] for k in RESUME_SCHEMA["properties"].keys() | {"epoch"} if k in state},
              RESUME_SCHEMA, f"{args.resume}")
    except SchemaError as e:
        raise CLIError(str(e)) from None
    if not state.get("batch") or state.get("order") is None:
        return
    sampler = run.train_loader.sampler
    sampler.set_epoch(state["epoch"])
    state["order"] = run.train_loader.epoch_order()
    args.resume = state                     # fit accepts a loaded checkpoint
    _say(run, f"resuming mid-epoch (epoch {state['epoch'] + 1}, batch {state['batch']}): each rank takes "
              "its own shard again; dropout/augmentation streams restart from (seed, rank, epoch), so "
              "this resume is deterministic but not bit-identical to an uninterrupted run (end-of-epoch "
              "checkpoints are)")
