"""CIFAR-10 from its binary distribution: reading the batches, extracting the archive safely.

CIFAR-10 (Krizhevsky, 2009): 60,000 colour photos of 32×32 pixels in 10
classes, 50,000 for training (five files of 10,000) and 10,000 for testing.

Why the *binary* version. The archive comes in three flavours; the "python"
one holds pickles, and unpickling a file can run arbitrary code. Nothing
minicnn loads from disk may run code, so only ``cifar-10-binary.tar.gz`` is
used. It unpacks to ``cifar-10-batches-bin/``::

    data_batch_1.bin ... data_batch_5.bin    training, 10,000 records each
    test_batch.bin                           test, 10,000 records
    batches.meta.txt                         the class names, one a line

Each record is 3,073 bytes::

    offset  size   content
    0       1      the label, 0..9
    1       1024   the red plane, 32 rows of 32 pixels, row-major
    1025    1024   the green plane
    2049    1024   the blue plane

so ``record[1:].reshape(3, 32, 32)`` is the image in (C, H, W) order.
Files are checked by structure (a whole number of records, labels in 0..9);
the downloaded archive by the MD5 of the ``.tar.gz`` file itself, and it is
unpacked member by member, refusing links, absolute paths and ``..``.
"""
from __future__ import annotations

import os
import tarfile

import numpy as np

from .idx import DataError, read_bytes

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
#: MD5 of the archive file as published (not of its decompressed content).
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
RECORD = 1 + 3 * 32 * 32
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: Training-set per-channel pixel statistics on the [0, 1] scale (R, G, B).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def read_batch(path):
    """One batch file: ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``."""
    raw = np.frombuffer(read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(f"{path}: {raw.size:,} bytes is not a whole number of CIFAR-10 records "
                        f"({RECORD:,} bytes each: 1 label byte + 3x32x32 pixel bytes)")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: labels must be 0..9, found {int(labels.max())} "
                        "(is this the CIFAR-100 or another file?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def batch_files(folder, train=True):
    """The paths of one split's batch files in ``folder``, or None when none is there."""
    names = TRAIN_FILES if train else TEST_FILES
    found = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if not found:
        return None
    if len(found) != len(names):
        missing = sorted(set(names) - {os.path.basename(p) for p in found})
        raise DataError(f"{folder}: incomplete CIFAR-10 folder: {', '.join(missing)} missing")
    return found


def read_split(folder, train=True):
    """A split read from ``folder``: ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``."""
    files = batch_files(folder, train)
    if files is None:
        raise DataError(f"{folder}: no CIFAR-10 {'training' if train else 'test'} files")
    parts = [read_batch(p) for p in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def safe_members(tar, dest):
    """The archive's members, each checked: regular files and folders only, inside ``dest``."""
    root = os.path.realpath(dest)
    members = []
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{tar.name}: refusing member {m.name!r}: not a regular file or folder "
                            "(links and devices are not extracted)")
        if os.path.isabs(m.name) or ".." in m.name.replace("\\", "/").split("/"):
            raise DataError(f"{tar.name}: refusing member {m.name!r}: absolute path or '..'")
        target = os.path.realpath(os.path.join(root, m.name))
        if os.path.commonpath([root, target]) != root:
            raise DataError(f"{tar.name}: refusing member {m.name!r}: it would land outside {dest}")
        members.append(m)
    return members


def extract(archive, dest):
    """Unpack a ``.tar.gz`` into ``dest`` after checking every member (see :func:`safe_members`).

    Nothing is written unless every member passes; files are written through
    :func:`minicnn.io.atomic_write`, so an interrupted extraction leaves no
    half-written batch behind.
    """
    from ..io import atomic_write
    with tarfile.open(archive, "r:gz") as tar:
        members = safe_members(tar, dest)
        for m in members:
            path = os.path.join(dest, m.name)
            if m.isdir():
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            source = tar.extractfile(m)
            with source, atomic_write(path) as f:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    f.write(chunk)


def download(folder, url=None, md5=None, **kwargs):
    """Download the binary archive into ``folder``, verify its MD5, unpack it there.

    Returns the folder holding the batch files (``folder/cifar-10-batches-bin``).
    ``url``/``md5`` default to :data:`URL` and :data:`MD5`; extra keyword
    arguments go to :func:`minicnn.data.download.download_file`.
    """
    from . import download as _download           # urllib and tqdm load only when needed
    md5 = MD5 if md5 is None else md5
    archive = os.path.join(os.fspath(folder), ARCHIVE)
    if not (os.path.isfile(archive) and _download.md5_of_file(archive) == md5):
        _download.download_file(url or URL, archive, md5, checksum="file", **kwargs)
    extract(archive, folder)
    return os.path.join(folder, FOLDER)
