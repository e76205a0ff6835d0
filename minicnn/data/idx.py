"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a tiny header followed by raw array data, all big-endian::

    offset  size       content
    0       2 bytes    0x00 0x00
    2       1 byte     element type: 0x08 unsigned byte, 0x09 signed byte,
                       0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    3       1 byte     number of dimensions d
    4       4*d bytes  the size of each dimension, uint32 big-endian
    4+4d    ...        prod(sizes) elements in C (row-major) order

Bytes 0-3 read as one big-endian uint32 form the *magic number*. MNIST uses
two of them:

* ``0x00000803`` — images: unsigned bytes, 3 dimensions ``(N, 28, 28)``,
  0 = background, 255 = ink;
* ``0x00000801`` — labels: unsigned bytes, 1 dimension ``(N,)``, values 0-9.

Files are usually gzip-compressed (``.gz``). The reader recognises gzip by
its content (the two bytes ``1f 8b``), not by the file name, so a
decompressed or re-compressed copy reads the same.

Everything is checked: a file that is truncated, has the wrong magic number,
the wrong image size, extra bytes at the end, or broken compression raises
:class:`DataError`, whose message names the file and says what was expected
and what was found.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib

import numpy as np

from ..io import atomic_write

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

#: IDX element-type byte -> NumPy dtype (big-endian, as stored on disk).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
#: The most a gzip file may decompress to (MNIST's largest file is 47 MB): a
#: few kilobytes of crafted gzip can otherwise expand to gigabytes in memory.
MAX_DECOMPRESSED_BYTES = 1 << 30


class DataError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


def _describe_magic(magic: int) -> str:
    if magic == IMAGES_MAGIC:
        return "0x00000803 (an image file)"
    if magic == LABELS_MAGIC:
        return "0x00000801 (a label file)"
    return f"0x{magic:08X}"


def read_bytes(path) -> bytes:
    """The content of ``path``, decompressed if it is gzip (detected by content).

    A broken gzip stream (bad CRC, cut short, not gzip after all) raises
    :class:`DataError` naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        chunks, size = [], 0
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
            # in 1 MiB pieces (read(n) would reserve n bytes at once), stopping past the limit
            while size <= MAX_DECOMPRESSED_BYTES:
                chunk = g.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        data = b"".join(chunks)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupted gzip data ({e}); delete the file and "
                        "download or copy it again") from e
    if len(data) > MAX_DECOMPRESSED_BYTES:
        raise DataError(f"{path}: decompresses to more than {MAX_DECOMPRESSED_BYTES:,} bytes, far more "
                        "than any MNIST-style IDX file; refusing it (a gzip bomb?)")
    return data


def parse_idx(buf: bytes, name: str = "<bytes>", expected_magic: int | None = None) -> np.ndarray:
    """Decode the IDX bytes ``buf`` into an array; ``name`` is used in error messages.

    With ``expected_magic`` the element type and the number of dimensions must
    match it (e.g. :data:`IMAGES_MAGIC`). The payload must be *exactly*
    ``prod(dims) * itemsize`` bytes: fewer means a truncated file, more means
    trailing garbage — both are errors rather than silently ignored.
    Returns a writable array in native byte order.
    """
    if len(buf) < 4:
        raise DataError(f"{name}: {len(buf)} bytes is too short for an IDX file "
                        "(the magic number alone takes 4 bytes)")
    (magic,) = struct.unpack(">I", buf[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{name}: wrong magic number: expected {_describe_magic(expected_magic)}, "
                        f"found {_describe_magic(magic)}")
    if magic >> 16 != 0:
        raise DataError(f"{name}: not an IDX file: the magic number must start with two "
                        f"zero bytes, found 0x{magic:08X}")
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{name}: unknown IDX element type 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{name}: truncated header: {ndim} dimensions need {header} header "
                        f"bytes, the file has {len(buf)}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = IDX_DTYPES[code]
    count = math.prod(dims)
    expected, found = count * dtype.itemsize, len(buf) - header
    if found < expected:
        raise DataError(f"{name}: truncated: the header declares shape {dims}, i.e. {expected:,} "
                        f"bytes of data, but only {found:,} follow")
    if found > expected:
        raise DataError(f"{name}: {found - expected:,} unexpected trailing bytes: the header "
                        f"declares shape {dims}, i.e. {expected:,} bytes of data, but {found:,} follow")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # a writable native-order copy


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a NumPy array, checking it thoroughly."""
    path = os.fspath(path)
    return parse_idx(read_bytes(path), name=path, expected_magic=expected_magic)


def read_idx_images(path, rows: int | None = 28, cols: int | None = 28) -> np.ndarray:
    """Read an image file (magic 0x00000803) as a uint8 array ``(N, rows, cols)``.

    Pass ``rows=None`` / ``cols=None`` to accept any image size.
    """
    path = os.fspath(path)
    images = read_idx(path, expected_magic=IMAGES_MAGIC)
    n, h, w = images.shape
    if (rows is not None and h != rows) or (cols is not None and w != cols):
        raise DataError(f"{path}: wrong image size: expected {rows}x{cols} pixels, found {h}x{w}")
    return images


def read_idx_labels(path, num_classes: int | None = None) -> np.ndarray:
    """Read a label file (magic 0x00000801) as an int64 array ``(N,)``.

    With ``num_classes`` every label must lie in ``0 .. num_classes-1``.
    """
    path = os.fspath(path)
    labels = read_idx(path, expected_magic=LABELS_MAGIC).astype(np.int64)
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(f"{path}: label {labels[bad]} at index {bad} is out of range: "
                        f"expected 0..{num_classes - 1}")
    return labels


def encode_idx(array) -> bytes:
    """The IDX bytes (header + big-endian data) for ``array``."""
    a = np.asarray(array)
    if a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"write_idx: expected an array with 1 to 255 dimensions, got shape {a.shape}")
    code = next((c for c, dt in IDX_DTYPES.items()
                 if a.dtype.kind == dt.kind and a.dtype.itemsize == dt.itemsize), None)
    if code is None:
        kinds = ", ".join(str(dt.newbyteorder("=")) for dt in IDX_DTYPES.values())
        raise ValueError(f"write_idx: IDX cannot store dtype {a.dtype}; use one of {kinds}")
    dt = IDX_DTYPES[code]
    if any(d >= 2**32 for d in a.shape):
        raise ValueError(f"write_idx: dimension sizes must fit in uint32, got shape {a.shape}")
    header = struct.pack(f">BBBB{a.ndim}I", 0, 0, code, a.ndim, *a.shape)
    return header + np.ascontiguousarray(a, dtype=dt).tobytes()


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``.

    uint8 arrays with 3 dimensions get the image magic 0x00000803, 1-D uint8
    arrays the label magic 0x00000801 (the magic is just type + rank). The
    write is atomic: a temporary file in the same folder, then ``os.replace``.
    """
    path = os.fspath(path)
    data = encode_idx(array)
    with atomic_write(path) as f:
        if path.endswith(".gz"):
            # mtime=0 and no file name in the header: the same array always
            # gives the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(data)
        else:
            f.write(data)
