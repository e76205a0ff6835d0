"""``torch.utils.data`` under minicnn: the same names, arguments and defaults.

A PyTorch program runs after changing ``torch.utils.data`` to ``minicnn.utils.data``::

    from minicnn.utils.data import DataLoader, TensorDataset, random_split
    train, val = random_split(dataset, [0.9, 0.1])
    loader = DataLoader(train, batch_size=64, shuffle=True)
    for x, y in loader:          # minicnn Tensors on the active backend
        ...

Two DataLoaders, on purpose:

* :class:`DataLoader` here is PyTorch's: ``batch_size=1`` by default, any
  dataset whose items are Tensors, arrays, numbers, tuples or dicts, batched
  by :func:`default_collate` (or your ``collate_fn``);
* :class:`minicnn.data.DataLoader` is minicnn's image loader (``batch_size=64``,
  a batch ``transform=`` run on the whole ``(B, C, H, W)`` array), which the
  CLI, the tutorials and the tests have used all along; unchanged.

Both cut batches of minicnn's own array datasets (MNIST, CIFAR10, ... with no
per-image transform and ``__getitem__`` not overridden), of a
:class:`TensorDataset`, and of a :class:`Subset` of either, with one
fancy-index per batch instead of ``batch_size`` calls to ``__getitem__``; the
numbers are the ones ``default_collate`` would give. Any other dataset —
including a subclass that overrides ``__getitem__`` — is read item by item.
"""
from __future__ import annotations

import bisect
import collections.abc
import itertools
import math
import numbers
import warnings

import numpy as np

from .. import rng
from ..autograd.tensor import Tensor
from ..backend import to_device
from ..data.loader import batch_from_arrays, fast_arrays
from ..io import to_numpy

__all__ = ["ConcatDataset", "DataLoader", "Dataset", "Subset", "TensorDataset", "default_collate",
           "random_split"]


class Dataset:
    """The base of map-style datasets: subclasses define ``__getitem__`` (and ``__len__``).

    ``a + b`` is ``ConcatDataset([a, b])``.
    """

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __add__(self, other):
        return ConcatDataset([self, other])


class TensorDataset(Dataset):
    """Samples are the ``index``-th rows of equally long tensors: ``ds[i] == (t1[i], t2[i], ...)``.

    ``tensors`` are minicnn Tensors or arrays; ``ds.tensors`` holds them as given.
    """

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("Size mismatch between tensors: lengths "
                             f"{[len(t) for t in tensors]} (every tensor needs the same first dimension)")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return len(self.tensors[0])


class ConcatDataset(Dataset):
    """Datasets one after another: index ``i`` of the whole is found with ``cumulative_sizes``."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("datasets should not be an empty iterable")
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, index):
        if index < 0:
            if -index > len(self):
                raise ValueError("absolute value of index should not exceed dataset length")
            index = len(self) + index
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``: ``Subset(ds, idx)[k] == ds[idx[k]]``."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, index):
        if isinstance(index, list):
            return self.dataset[[self.indices[i] for i in index]]
        return self.dataset[self.indices[index]]

    def __len__(self):
        return len(self.indices)


def random_split(dataset, lengths, generator=None):
    """Split ``dataset`` into non-overlapping random :class:`Subset` s of the given lengths.

    ``lengths`` are counts summing to ``len(dataset)``, or fractions summing
    to 1: each split then gets ``floor(N * fraction)`` samples and the
    remainder is dealt one by one, round-robin, from the first split on
    (PyTorch's rule). The permutation is drawn from ``generator`` (a NumPy
    ``Generator``) or, when None, from minicnn's generator, so
    ``mc.manual_seed`` fixes it.
    """
    n = len(dataset)
    lengths = list(lengths)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        counts = []
        for i, frac in enumerate(lengths):
            if frac < 0 or frac > 1:
                raise ValueError(f"Fraction at index {i} is not between 0 and 1")
            counts.append(int(math.floor(n * frac)))
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        for i, count in enumerate(counts):
            if count == 0:
                warnings.warn(f"Length of split at index {i} is 0. This might result in an empty dataset.")
        lengths = counts
    if sum(lengths) != n:
        raise ValueError("Sum of input lengths does not equal the length of the input dataset!")
    order = (generator if generator is not None else rng.generator()).permutation(n).tolist()
    return [Subset(dataset, order[end - length:end])
            for end, length in zip(itertools.accumulate(lengths), lengths)]


# -----------------------------------------------------------------------------
# Collation
# -----------------------------------------------------------------------------
def _to_tensor(array):
    return Tensor(to_device(array), dtype=array.dtype)


def default_collate(batch):
    """Merge a list of samples into a batch, as ``torch.utils.data.default_collate``:

    * Tensors and NumPy arrays -> one Tensor, stacked along a new first axis
      (dtype kept);
    * Python ints -> int64 Tensor, floats -> float64 Tensor, bools -> bool,
      NumPy scalars -> their dtype;
    * strings (and bytes) -> the sequence of them as is;
    * dicts -> a dict of collated values; namedtuples -> the same namedtuple;
      tuples and lists -> a list of collated columns (every sample must have
      as many elements).
    """
    elem = batch[0]
    if isinstance(elem, (Tensor, np.ndarray)):
        if isinstance(elem, np.ndarray) and elem.dtype.kind in "OSUV":
            raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, "
                            f"dicts or lists; found array of {elem.dtype}")
        return _to_tensor(np.stack([to_numpy(b) for b in batch]))
    if isinstance(elem, np.generic):
        return _to_tensor(np.array(batch))
    if isinstance(elem, bool):
        return _to_tensor(np.array(batch, dtype=np.bool_))
    if isinstance(elem, numbers.Integral):
        return _to_tensor(np.array(batch, dtype=np.int64))
    if isinstance(elem, numbers.Real):
        return _to_tensor(np.array(batch, dtype=np.float64))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        return {key: default_collate([d[key] for d in batch]) for key in elem}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):           # namedtuple
        return type(elem)(*(default_collate(s) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        if any(len(s) != len(elem) for s in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        return [default_collate(s) for s in zip(*batch)]
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts "
                    f"or lists; found {type(elem)}")


def _fast_batcher(dataset):
    """A function ``indices -> batch`` equal to ``default_collate([dataset[i] for i in indices])``
    when that can be done with one fancy-index per array, else None."""
    arrays = fast_arrays(dataset)
    if arrays is not None:
        def batch(index):
            return [_to_tensor(a) for a in batch_from_arrays(*arrays, index)]
        return batch
    if type(dataset) is TensorDataset:
        hosts = [to_numpy(t) if isinstance(t, Tensor) else np.asarray(t) for t in dataset.tensors]
        if all(isinstance(h, np.ndarray) and h.ndim >= 1 and h.dtype.kind in "biuf" for h in hosts):
            return lambda index: [_to_tensor(np.ascontiguousarray(h[index])) for h in hosts]
    if type(dataset) is Subset:
        inner = _fast_batcher(dataset.dataset)
        if inner is not None:
            indices = np.asarray(dataset.indices, dtype=np.int64)
            return lambda index: inner(indices[index])
    return None


# -----------------------------------------------------------------------------
# The loader
# -----------------------------------------------------------------------------
class DataLoader:
    """PyTorch's ``DataLoader``: iterate over ``dataset`` in batches made by ``collate_fn``.

    The arguments are PyTorch's, with its names and defaults.

    Args:
        dataset: anything with ``__len__`` and ``__getitem__``.
        batch_size: samples per batch (default **1**, as in PyTorch); None
            yields the samples one by one, uncollated.
        shuffle: a new order every epoch, drawn from ``generator`` or minicnn's
            generator (``mc.manual_seed`` fixes it).
        sampler: an iterable of indices with ``len()`` (excludes ``shuffle``).
        batch_sampler: an iterable of index lists (excludes batch_size,
            shuffle, sampler, drop_last).
        num_workers: accepted and validated (>= 0), but the batches are always
            built **in this process**, one after the other. Why: minicnn's
            fast batches are NumPy fancy-indexes that worker processes would
            have to copy back through pipes, a CuPy context cannot survive a
            ``fork``, and a single process keeps the order and the random
            numbers exactly reproducible. ``worker_init_fn(worker_id)`` is
            called for each of the ``num_workers`` ids at the start of each
            epoch (once only with ``persistent_workers``).
        collate_fn: merges a list of samples (default :func:`default_collate`).
        pin_memory: accepted (bool); a no-op — the batches are moved to the
            backend's device once, when the Tensor is made.
        drop_last: drop the last, incomplete batch.
        timeout, prefetch_factor, persistent_workers: validated as PyTorch does
            (prefetch_factor and persistent_workers need ``num_workers > 0``).
        generator: a NumPy ``Generator`` for shuffling instead of minicnn's.

    Yields whatever ``collate_fn`` returns; by default, for ``(image, label)``
    samples, the list ``[images Tensor (B, ...), labels int64 Tensor (B,)]``
    on the active backend.
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None,
                 num_workers=0, collate_fn=None, pin_memory=False, drop_last=False, timeout=0,
                 worker_init_fn=None, multiprocessing_context=None, generator=None, *,
                 prefetch_factor=None, persistent_workers=False, pin_memory_device="",
                 in_order=True):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError("DataLoader: expected a map-style dataset (with __len__ and __getitem__), "
                            f"got {type(dataset).__name__}")
        if not isinstance(num_workers, numbers.Integral) or num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                             "disable multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing. "
                             "let num_workers > 0 to enable multiprocessing, otherwise set "
                             "prefetch_factor to None.")
        if prefetch_factor is not None and prefetch_factor < 0:
            raise ValueError("prefetch_factor option should be non-negative")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        for name, value in (("pin_memory", pin_memory), ("persistent_workers", persistent_workers),
                            ("drop_last", drop_last)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"DataLoader: {name} must be a bool, got {value!r}")
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError(f"DataLoader: worker_init_fn must be callable, got {worker_init_fn!r}")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None:
            if drop_last:
                raise ValueError("batch_size=None option disables auto-batching and is mutually "
                                 "exclusive with drop_last")
        elif (not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool)
              or batch_size < 1):
            raise ValueError(f"batch_size should be a positive integer value, but got "
                             f"batch_size={batch_size!r}")
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"DataLoader: collate_fn must be callable, got {collate_fn!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = int(num_workers)
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.pin_memory = bool(pin_memory)
        self.drop_last = bool(drop_last)
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.generator = generator
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = bool(persistent_workers)
        self._fast = _fast_batcher(dataset) if collate_fn is None else None
        self._workers_started = False

    def _order(self):
        if self.sampler is not None:
            return list(self.sampler)
        n = len(self.dataset)
        if self.shuffle:
            g = self.generator if self.generator is not None else rng.generator()
            return g.permutation(n).tolist()
        return range(n)

    def _index_batches(self):
        if self.batch_sampler is not None:
            yield from self.batch_sampler
            return
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield list(chunk)

    def _start_workers(self):
        if self.worker_init_fn is not None and not (self.persistent_workers and self._workers_started):
            for worker_id in range(self.num_workers):
                self.worker_init_fn(worker_id)
        self._workers_started = True

    def __iter__(self):
        self._start_workers()
        if self.batch_size is None and self.batch_sampler is None:     # no auto-batching
            for i in self._order():
                yield self.dataset[i]
            return
        for index in self._index_batches():
            if self._fast is not None:
                yield self._fast(np.asarray(index, dtype=np.int64))
            else:
                yield self.collate_fn([self.dataset[i] for i in index])

    def __len__(self):
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __repr__(self):
        return (f"DataLoader({len(self)} batches of {self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, num_workers={self.num_workers} (in-process))")
