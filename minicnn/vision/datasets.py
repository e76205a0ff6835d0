"""torchvision's datasets: ``MNIST``, ``FashionMNIST``, ``CIFAR10`` (same arguments).

``ds[i]`` is ``(image, label)``: the image a NumPy uint8 array, ``(28, 28)``
for (Fashion-)MNIST and ``(32, 32, 3)`` for CIFAR-10 (what
``np.asarray(pil_image)`` would give; minicnn has no PIL dependency), passed
through ``transform``; the label an int passed through ``target_transform``.

Where the files are found, with ``root`` given (the first that holds them):

* torchvision's layout, ``root/MNIST/raw/train-images-idx3-ubyte(.gz)``
  (``root/FashionMNIST/raw/`` for Fashion-MNIST); for CIFAR-10
  ``root/cifar-10-batches-bin/data_batch_1.bin ...`` (the unpacked binary
  archive);
* minicnn's layout, ``root/mnist/``, ``root/fashion-mnist/``,
  ``root/cifar10/cifar-10-batches-bin/`` (so ``root=$MINICNN_DATA_DIR`` works);
* ``root`` itself.

With ``download=True`` and no copy there, the files are downloaded into
torchvision's place (MD5-verified, see :mod:`minicnn.data.download` and
:mod:`minicnn.data.cifar`). ``root=None`` is minicnn's own search
(``$MINICNN_DATA_DIR``, then the cache; see :mod:`minicnn.data.datasets`).
The readers are minicnn's (:mod:`minicnn.data.idx`, :mod:`minicnn.data.cifar`):
the files are checked by structure; nothing read from disk can run code.
"""
from __future__ import annotations

import os

import numpy as np

from ..data import cifar
from ..data.datasets import SPLIT_FILES, load_cifar10_arrays, load_idx_arrays
from ..data.idx import DataError
from ..utils.data import Dataset

__all__ = ["CIFAR10", "FashionMNIST", "MNIST", "VisionDataset"]


class VisionDataset(Dataset):
    """What the datasets share: ``root``, ``transform``, ``target_transform``,
    ``data``, ``targets``, ``classes`` and ``__getitem__``."""

    classes = []

    def __init__(self, root=None, transform=None, target_transform=None):
        self.root = os.fspath(root) if root is not None else None
        for name, value in (("transform", transform), ("target_transform", target_transform)):
            if value is not None and not callable(value):
                raise TypeError(f"{type(self).__name__}: {name} must be callable, got {value!r}")
        self.transform = transform
        self.target_transform = target_transform

    def __getitem__(self, index):
        image, target = self.data[index], int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __len__(self):
        return len(self.data)

    @property
    def class_to_idx(self):
        return {c: i for i, c in enumerate(self.classes)}

    def __repr__(self):
        return (f"Dataset {type(self).__name__}\n    Number of datapoints: {len(self)}\n"
                f"    Split: {'Train' if self.train else 'Test'}\n    Source: {self.source}")


def _holds_split(folder, train):
    return all(os.path.isfile(os.path.join(folder, n)) or os.path.isfile(os.path.join(folder, n + ".gz"))
               for n in SPLIT_FILES[bool(train)])


class MNIST(VisionDataset):
    """MNIST, as ``torchvision.datasets.MNIST(root, train=True, transform=None,
    target_transform=None, download=False)``.

    ``data`` is ``(N, 28, 28)`` uint8, ``targets`` ``(N,)`` int64 (NumPy
    arrays); ``ds[i]`` is ``(uint8 (28, 28) array, int)`` before ``transform``.
    """

    key = "mnist"                 # minicnn's folder and download name
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
               "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]

    def __init__(self, root=None, train=True, transform=None, target_transform=None, download=False):
        super().__init__(root, transform, target_transform)
        self.train = bool(train)
        self.data, self.targets, self.source = self._load(download)

    @property
    def raw_folder(self):
        """``root/<ClassName>/raw``: where torchvision keeps (and downloads) the files."""
        return os.path.join(self.root, type(self).__name__, "raw")

    def _load(self, download):
        if self.root is None:
            return load_idx_arrays(self.key, self.train, root=None, download=download)
        candidates = [self.raw_folder, os.path.join(self.root, self.key), self.root]
        for folder in candidates:
            if _holds_split(folder, self.train):
                return load_idx_arrays(self.key, self.train, root=folder, download=False)
        if not download:
            raise RuntimeError(f"Dataset not found. You can use download=True to download it "
                               f"(searched {', '.join(candidates)})")
        from ..data import download as _download
        _download.download_dataset(self.key, self.raw_folder,
                                   files=[f + ".gz" for f in SPLIT_FILES[self.train]])
        images, labels, _ = load_idx_arrays(self.key, self.train, root=self.raw_folder, download=False)
        return images, labels, f"downloaded into {self.raw_folder}"


class FashionMNIST(MNIST):
    """Fashion-MNIST, as ``torchvision.datasets.FashionMNIST`` (arguments as :class:`MNIST`)."""

    key = "fashion-mnist"
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class CIFAR10(VisionDataset):
    """CIFAR-10, as ``torchvision.datasets.CIFAR10(root, train=True, transform=None,
    target_transform=None, download=False)``, read from the **binary** distribution.

    ``data`` is ``(N, 32, 32, 3)`` uint8 (height, width, RGB: torchvision's
    layout), ``targets`` a list of ints; ``ds[i]`` is ``(uint8 (32, 32, 3)
    array, int)`` before ``transform``. ``download=True`` fetches
    ``cifar-10-binary.tar.gz`` into ``root``, checks its MD5 and unpacks it
    safely (see :mod:`minicnn.data.cifar`).
    """

    base_folder = cifar.FOLDER
    url = cifar.URL
    tgz_md5 = cifar.MD5
    classes = cifar.CLASSES

    def __init__(self, root=None, train=True, transform=None, target_transform=None, download=False):
        super().__init__(root, transform, target_transform)
        self.train = bool(train)
        try:
            images, labels, self.source = load_cifar10_arrays(self.train, self.root, download)
        except DataError as e:
            if "not found" in str(e):
                raise RuntimeError(f"Dataset not found or corrupted. You can use download=True to "
                                   f"download it\n{e}") from None
            raise
        self.data = np.ascontiguousarray(images.transpose(0, 2, 3, 1))     # (N, C, H, W) -> (N, H, W, C)
        self.targets = labels.tolist()
