"""DataLoader: cut a dataset into mini-batches of Tensors on the active backend.

One epoch = one pass over a permutation of the sample indices::

    order = permutation(N) if shuffle else 0, 1, ..., N-1
    batch k = order[k*B : (k+1)*B]            (the last one may be shorter)

Each batch is built on the host and moved to the device once:

* **fast path** — one of minicnn's own array datasets
  (:class:`~minicnn.data.ArrayDataset`: MNIST, CIFAR10, ...) whose
  ``__getitem__`` is not overridden and which has no per-image ``transform``,
  or a pair ``(images, labels)`` passed directly: the whole batch is one
  fancy-index, ``images[order[k*B:(k+1)*B]]`` — no Python loop over samples;
* **general path** — any other object with ``__len__`` and ``__getitem__``
  returning ``(image, label)``, including a subclass that overrides
  ``__getitem__`` (what it returns is what gets batched): the items are
  fetched one by one and stacked.

Then the batch transform (``transform=``, e.g. augmentation from
:mod:`minicnn.data.transforms`) runs on the whole ``(B, C, H, W)`` float32
array at once, and :func:`minicnn.backend.to_device` moves images and labels
to the backend (a no-op for NumPy and Numba, one host->GPU copy each for CuPy).

Shuffling draws from :func:`minicnn.rng.generator`, so ``mc.manual_seed(s)``
fixes the order of every epoch.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import rng as _rng
from ..io import to_numpy
from ..backend import to_device, to_host
from ..autograd.tensor import Tensor
from .datasets import ArrayDataset
from .transforms import to_float


def fast_arrays(dataset):
    """``(images, labels)`` when ``dataset[i]`` is known to equal ``(to_float(images[i]), labels[i])``.

    True of :class:`ArrayDataset` (and subclasses such as MNIST) when neither
    ``__getitem__`` is overridden nor a per-image ``transform`` is set; then a
    batch is one fancy-index. Anything else returns None: its own
    ``__getitem__`` must run for every item.
    """
    if (isinstance(dataset, ArrayDataset) and getattr(dataset, "transform", None) is None
            and type(dataset).__getitem__ is ArrayDataset.__getitem__):
        return dataset.arrays()
    return None


def batch_from_arrays(images, labels, index):
    """Host arrays of one batch cut from ``(images, labels)``: float32 ``(B, C, H, W)`` in
    [0, 1] for uint8 pixels (``(B, H, W)`` gains its channel), int64 ``(B,)``."""
    x = to_float(images[index])
    return (x[:, None] if x.ndim == 3 else x), np.asarray(labels[index], dtype=np.int64)


class DataLoader:
    """Iterate over a dataset in mini-batches ``(x, y)``.

    Args:
        dataset: a dataset (``__len__`` + ``__getitem__``; ``arrays()`` enables
            the fast path) or a pair of arrays ``(images, labels)`` with images
            ``(N, H, W)`` or ``(N, C, H, W)``, uint8 (scaled to [0, 1]) or float.
        batch_size: samples per batch.
        shuffle: a new random order every epoch (from the framework's generator).
        drop_last: drop the final batch when it is smaller than ``batch_size``.
        transform: a batch transform, called on the float32 ``(B, C, H, W)``
            host array of each batch (``batch_transform`` is another name for it).
        sampler: an iterable of sample indices with ``len()`` that decides each
            epoch's order instead of ``shuffle`` (e.g. a
            :class:`minicnn.distributed.DistributedSampler`: this rank's shard).

    Yields:
        ``x``: float32 Tensor ``(B, C, H, W)``; ``y``: int64 Tensor ``(B,)``;
        both on the active backend.
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, drop_last=False,
                 transform=None, batch_transform=None, sampler=None):
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if transform is not None and batch_transform is not None:
            raise ValueError("give transform= or batch_transform= (two names for the same "
                             "thing), not both")
        transform = transform if transform is not None else batch_transform
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {transform!r}")

        if sampler is not None and shuffle:
            raise ValueError("DataLoader: give shuffle=True or a sampler, not both (the sampler decides "
                             "the order)")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self._arrays = self._find_arrays(dataset)

    @staticmethod
    def _find_arrays(dataset):
        """``(images, labels)`` when batches can be cut from arrays directly, else None."""
        if isinstance(dataset, (tuple, list)):
            if len(dataset) != 2:
                raise ValueError("DataLoader: expected a dataset or a pair (images, labels), "
                                 f"got a sequence of {len(dataset)} items")
            images, labels = (np.asarray(to_host(a)) for a in dataset)
        elif (arrays := fast_arrays(dataset)) is not None:
            images, labels = arrays
        else:
            if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
                raise TypeError("DataLoader: expected a dataset with __len__ and __getitem__, "
                                f"or a pair (images, labels); got {type(dataset).__name__}")
            return None
        if images.ndim not in (3, 4):
            raise ValueError(f"DataLoader: images must be (N, H, W) or (N, C, H, W), "
                             f"got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"DataLoader: expected labels of shape ({len(images)},) to match "
                             f"{len(images)} images, got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"DataLoader: labels must be integers (class indices), got {labels.dtype}")
        return images, labels

    @property
    def arrays(self):
        """``(images, labels)``, the host arrays batches are cut from, or None for a dataset read
        item by item. Read-only: the loader's own arrays (use them, don't change them)."""
        return self._arrays

    def __len__(self):
        """Number of batches per epoch: ``N // B`` with drop_last, else ``ceil(N / B)``."""
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        return self.batches(self.epoch_order())

    def epoch_order(self):
        """The sample order of a new epoch: a fresh permutation (shuffle) or 0..N-1.

        Drawn from the framework's generator, so ``mc.manual_seed`` fixes it.
        """
        if self.sampler is not None:
            return np.fromiter(iter(self.sampler), dtype=np.int64, count=len(self.sampler))
        n = self._num_samples()
        return _rng.generator().permutation(n) if self.shuffle else np.arange(n)

    def _num_samples(self):
        if self.sampler is not None:
            return len(self.sampler)
        return len(self._arrays[0]) if self._arrays is not None else len(self.dataset)

    def batches(self, order, start=0, start_sample=0):
        """Yield the batches of an epoch with sample ``order``, from batch ``start`` on.

        Splitting iteration into (order, batches) is what lets a training run
        resume mid-epoch exactly: the trainer saves the order and its position,
        and replays the rest of the epoch. ``start_sample`` skips the first
        samples of ``order`` before cutting batches: a run resumed with another
        batch size continues from the same *sample* (batch ``k`` is then
        ``order[start_sample + k*B : start_sample + (k+1)*B]``).
        """
        rest = order[start_sample:]
        n = len(rest)
        count = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        for k in range(start, count):
            yield self._batch(rest[k * self.batch_size:(k + 1) * self.batch_size])

    def _batch(self, index):
        if self._arrays is not None:
            x, y = batch_from_arrays(*self._arrays, index)          # one gather each
        else:
            items = [self.dataset[int(i)] for i in index]
            x = np.stack([to_float(to_numpy(img)) for img, _ in items])
            y = np.array([int(to_numpy(label)) for _, label in items])
            if x.ndim == 3:
                x = x[:, None]                                      # (B, H, W) -> (B, 1, H, W)
        if self.transform is not None:
            x = np.asarray(self.transform(x), dtype=np.float32)
        x = Tensor(to_device(x), dtype=np.float32)
        y = Tensor(to_device(np.asarray(y, dtype=np.int64)), dtype=np.int64)
        return x, y

    def __repr__(self):
        return (f"DataLoader({len(self)} batches of {self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, transform={self.transform!r})")
