"""Data-parallel training on MPI (tutorial 17): ``from minicnn import distributed as dist``.

* ``data_parallel.py``  — :func:`init`, :class:`DistributedDataParallel`, :class:`DistributedSampler`,
  the collectives (MPI, and NCCL on GPUs);
* ``sync_batchnorm.py`` — :class:`SyncBatchNorm` (also ``nn.SyncBatchNorm``) and :func:`convert_sync_batchnorm`;
* ``cli.py``            — ``mpirun -n N minicnn train --distributed``.
"""
from .data_parallel import (DistributedDataParallel, DistributedSampler, SamplerEpochCallback, abort,
                            all_gather_object, all_reduce_, all_reduce_numbers, barrier, broadcast_, broadcast_state,
                            check_replicas, convert_sync_batchnorm, evaluate, get_rank, get_world_size, init,
                            is_main_process, local_size, make_train_step, mpi_library, seed_per_rank,
                            shard_loader, state_hash)
from .sync_batchnorm import SyncBatchNorm, SyncBatchNormFn

__all__ = ["init", "get_rank", "get_world_size", "local_size", "is_main_process", "mpi_library", "abort",
           "barrier", "all_gather_object", "all_reduce_", "all_reduce_numbers", "broadcast_", "state_hash", "broadcast_state",
           "check_replicas", "DistributedDataParallel", "DistributedSampler", "shard_loader", "seed_per_rank",
           "make_train_step", "SamplerEpochCallback", "evaluate", "convert_sync_batchnorm", "SyncBatchNorm",
           "SyncBatchNormFn"]
