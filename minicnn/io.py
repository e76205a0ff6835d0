"""One I/O layer: atomic writes, "to host NumPy", and ``mc.save`` / ``mc.load``.

**Atomic writes** (every file minicnn writes: checkpoints, JSON reports,
plots, notebooks, ONNX files, downloads). Writing a file in place is not safe: a crash, a full disk or Ctrl-C in the
middle leaves a truncated file under the final name, and the next run trusts
it. The standard cure, used here for IDX files and downloads alike:

1. write everything to a temporary file *in the same folder* (same file system,
   so the rename in step 3 is a single atomic operation);
2. flush it and ``fsync`` it to disk (optionally check it — a download checks
   its checksum here);
3. ``os.replace(temp, final)`` — atomic on POSIX and on Windows: a reader sees
   either the old file, or no file, or the complete new one.

If anything fails before step 3 the temporary file is deleted. If the process
is killed outright (SIGKILL, power cut) nothing can run, so the temporary name
is chosen to look nothing like the real one: ``.<name>.<pid>.<random>.part``
(hidden, ``.part`` suffix) — no loader ever mistakes it for data.

**To host NumPy.** :func:`to_numpy` takes a Tensor, a NumPy array, a device
(CuPy or simulator) array, a list or a number and returns a host NumPy array —
the one way metrics, plots and reports read results.

**Saving and loading without pickle** (:func:`save`, :func:`load`,
:func:`save_file`, :func:`load_file`). A safetensors file is an 8-byte header length, a JSON header (each tensor's
name, dtype, shape and byte range, plus a free-form ``__metadata__`` map of
strings) and then the raw bytes of the tensors. Reading one parses JSON and
copies bytes — nothing in the file can run code, unlike a pickle (whose
``__reduce__`` may call ``os.system``; that is why ``torch.load`` now defaults
to ``weights_only=True``).

minicnn stores a nested state — dicts, lists, tuples, arrays, numbers, strings
— in one such file:

* every array becomes a tensor named by its path in the state, the keys joined
  with dots: ``model.conv1.weight``, ``optimizer.state.0.exp_avg``, ...;
* everything else (epoch, history, RNG state, sample order metadata, config)
  is kept as JSON in the metadata, one entry per top-level key, with an array
  replaced by ``{"__tensor__": name}``. Tuples, dicts with non-string keys,
  NumPy scalars and non-finite floats are tagged so that they come back as
  exactly what was saved (the RNG state's 128-bit integers are exact in JSON).

Because a model's weights are plain tensors named ``model.<state_dict key>``,
PyTorch reads them with one line::

    sd = {k[len("model."):]: v for k, v in safetensors.torch.load_file("best.ckpt").items()
          if k.startswith("model.")}

``mc.save(state_dict, path)`` / ``mc.load(path)`` do the same for any state
dict (flat ones get exactly their keys as tensor names, so
``safetensors.torch.load_file`` returns them as they are).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets

import numpy as np

from .autograd.tensor import Tensor
from .backend import to_host

FORMAT_KEY = "__minicnn__"          # metadata entry describing the file itself
FORMAT_VERSION = 2                  # 1 was the pickle format (no longer read)


# -----------------------------------------------------------------------------
# Atomic writes
# -----------------------------------------------------------------------------
def temp_path_for(path) -> str:
    """A fresh temporary name beside ``path``: ``<folder>/.<name>.<pid>.<hex>.part``."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part")


# the storage's own failures, which deserve the file's name in the message
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
TEMP_PATTERN = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.part$")   # what temp_path_for makes


def _pid_alive(pid):
    try:
        os.kill(pid, 0)                 # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:                     # exists, owned by someone else (PermissionError)
        return True
    return True


def sweep_temp_files(folder) -> list:
    """Delete the temporary files that killed writers left in ``folder``; return their paths.

    A process killed outright (``kill -9``, OOM killer, power cut) mid-write
    leaves its ``.<name>.<pid>.<hex>.part`` behind: nothing could run to remove
    it. Those whose pid is no longer running are removed; a live process's are
    left alone (it may be writing right now). Run at the start of a run.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in sorted(names):
        match = TEMP_PATTERN.match(name)
        if match and (int(match.group(1)) != os.getpid()) and not _pid_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Context manager: yield a file opened on a temporary name, then move it to ``path``.

    ``f.name`` is the temporary path, so the body may re-read what it wrote
    (after ``f.flush()``) to verify it before the file is published. Raise
    inside the block to abandon the write: the temporary file is removed and
    ``path`` is left untouched.

    >>> with atomic_write("out.bin") as f:      # doctest: +SKIP
    ...     f.write(b"all or nothing")
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode such as 'wb' or 'w', got {mode!r}")
    final = os.fspath(path)
    tmp = temp_path_for(final)
    # "x": create exclusively (never clobber another writer's temp file); the
    # permissions follow the umask like any normal new file.
    try:
        f = open(tmp, mode.replace("w", "x"))
    except OSError as e:                                  # a read-only or missing folder
        raise OSError(e.errno, f"cannot write {final}: {e.strerror}") from e
    try:
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:   # a full disk, a quota: name the file, and say the old one is intact
            if e.errno not in STORAGE_ERRNOS:      # e.g. a download's network error: as it is
                raise
            kept = " (the previous file is intact)" if os.path.exists(final) else ""
            raise OSError(e.errno, f"cannot write {final}: {e.strerror}{kept}") from e
    except BaseException:  # including KeyboardInterrupt: never leave the temp behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return ``path`` as a str."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path`` as a str."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent=1) -> str:
    """Write ``obj`` as JSON atomically (NumPy numbers become floats); return ``path`` as a str."""
    return write_text(path, json.dumps(obj, indent=indent, default=float) + "\n")


# -----------------------------------------------------------------------------
# To host NumPy
# -----------------------------------------------------------------------------
def to_numpy(x) -> np.ndarray:
    """A host NumPy array of ``x``: a Tensor, any backend's array, a list or a number.

    A Tensor gives its data (no copy on the CPU backends; device arrays are
    copied to the host). Use ``Tensor.numpy()`` when you need a copy you may modify.
    """
    return to_host(x.array if isinstance(x, Tensor) else x)
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__float__", "__scalar__")


class CheckpointError(ValueError):
    """A file that is not a (readable) minicnn safetensors file."""


def _version():
    from . import __version__
    return __version__


# -----------------------------------------------------------------------------
# Encoding: a nested state -> (tensors, JSON-able tree)
# -----------------------------------------------------------------------------
def _host_array(value):
    """Tensors and backend arrays (NumPy or CuPy) -> a C-contiguous host NumPy array."""
    return np.array(to_numpy(value), order="C")      # (ascontiguousarray would turn 0-d into 1-d)


def _is_array(value):
    return isinstance(value, (Tensor, np.ndarray)) or (
        hasattr(value, "__array__") and hasattr(value, "shape") and not isinstance(value, np.generic))


def _encode(value, path, tensors):
    """Return the JSON form of ``value``; arrays go to ``tensors`` under their dotted path."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"cannot save {path or 'the value'}: NumPy scalar of dtype {value.dtype}")
        return {"__scalar__": value.dtype.str, "value": _encode(value.item(), path, tensors)}
    if _is_array(value):
        array = _host_array(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"cannot save {path}: arrays of dtype {array.dtype} are not supported "
                            "(numbers and booleans only)")
        if path in tensors:
            raise ValueError(f"cannot save: two entries would both be stored as the tensor {path!r} "
                             "(a key containing a dot clashes with a nested key)")
        tensors[path] = array
        return {"__tensor__": path}
    if isinstance(value, dict):
        def child(key):
            return f"{path}.{key}" if path else str(key)
        if all(isinstance(k, str) for k in value) and not set(value) & set(_TAGS):
            return {k: _encode(v, child(k), tensors) for k, v in value.items()}
        pairs = []
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool, tuple)) and k is not None:
                raise TypeError(f"cannot save {path or 'the state'}: dict key {k!r} of type "
                                f"{type(k).__name__} (str, int, float or tuple keys only)")
            pairs.append([_encode(k, "", {}), _encode(v, child(k), tensors)])
        return {"__dict__": pairs}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    raise TypeError(f"cannot save {path or 'the value'}: objects of type {type(value).__name__} "
                    "are not supported (dicts, lists, tuples, arrays, numbers, strings, None)")


def _decode(node, tensors, where):
    """Inverse of :func:`_encode`; every malformed piece is a :class:`CheckpointError`."""
    if node is None or isinstance(node, (bool, str, int, float)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors, where) for v in node]
    if not isinstance(node, dict):
        raise CheckpointError(f"{where}: unexpected JSON value of type {type(node).__name__}")
    tag = next((t for t in _TAGS if t in node), None)
    if tag is None:
        return {k: _decode(v, tensors, where) for k, v in node.items()}
    body = node[tag]
    if tag == "__tensor__":
        if not isinstance(body, str) or body not in tensors:
            raise CheckpointError(f"{where}: refers to a tensor {body!r} that the file does not hold")
        return tensors[body]
    if tag == "__tuple__":
        if not isinstance(body, list):
            raise CheckpointError(f"{where}: malformed tuple entry")
        return tuple(_decode(v, tensors, where) for v in body)
    if tag == "__dict__":
        if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
            raise CheckpointError(f"{where}: malformed dict entry")
        out = {}
        for k, v in body:
            key = _decode(k, tensors, where)
            if isinstance(key, (list, dict)):
                raise CheckpointError(f"{where}: a dict key that is a {type(key).__name__}")
            out[key] = _decode(v, tensors, where)
        return out
    if tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise CheckpointError(f"{where}: malformed non-finite float {body!r}")
        return float(body)
    # "__scalar__": a NumPy scalar of a given dtype
    try:
        dtype = np.dtype(body)
        if dtype.kind not in "biuf":
            raise TypeError(dtype)
        return dtype.type(_decode(node["value"], tensors, where))
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{where}: malformed NumPy scalar entry ({e})") from None


# -----------------------------------------------------------------------------
# Files
# -----------------------------------------------------------------------------
def _sniff(path):
    """Name the format of a file that safetensors could not read (for the error message)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return ""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return ("it is a Python pickle (an old minicnn checkpoint, or a torch.save file). "
                "minicnn never unpickles: loading a pickle can run any code it contains")
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive (a torch.save .pt file?); save the state dict with safetensors instead"
    if head[:1] in (b"(", b"}", b"]", b"c") and b"\n" in head:
        return "it looks like a protocol-0 Python pickle, which minicnn never loads"
    return "it does not start with a safetensors header"


#: the bytes per element of each safetensors dtype NumPy can hold (safetensors.numpy's list)
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "U32": 4, "I32": 4,
                        "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8}
#: the largest JSON header read (safetensors' own limit): a longer declared length is junk
MAX_HEADER_BYTES = 100_000_000


def read_safetensors(path):
    """The bytes of a safetensors file, after its header has been checked against the file.

    Only the 8-byte length and the JSON header are read first, and checked
    (so a 1 GB file with a junk header is refused after a few bytes, not read
    whole): the declared length fits in the file (and under
    :data:`MAX_HEADER_BYTES`); the header is a JSON object; each tensor entry
    has a known ``dtype``, a ``shape`` of non-negative ints and ``data_offsets``
    ``[begin, end]`` holding exactly ``prod(shape) * itemsize`` bytes; and the
    tensors' byte ranges tile the body — from 0, no gap, no overlap, ending at
    the last byte of the file. safetensors checks all of this again when it
    parses the bytes; the point here is to check before reading them.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"the file has {size} bytes, fewer than the 8 of a header length")
        n = int.from_bytes(prefix, "little")
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise ValueError(f"the header length says {n} bytes, but the file has {size - 8} after it"
                             + (f" (and headers stop at {MAX_HEADER_BYTES})" if n <= size - 8 else ""))
        if f.read(1) != b"{":
            raise ValueError("the header is not a JSON object")
        f.seek(8)
        header = json.loads(f.read(n))          # ValueError (UnicodeDecodeError too) if not JSON
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        check_tensor_table(header, body_size=size - 8 - n)
        f.seek(0)
        return f.read()


def check_tensor_table(header, body_size):
    """The tensor entries of a safetensors header against a body of ``body_size`` bytes (see above)."""
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {name!r}: expected dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not one NumPy reads "
                             f"({', '.join(SAFETENSORS_ITEMSIZE)})")
        ints = lambda v: isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)  # noqa: E731
        if not ints(shape):
            raise ValueError(f"tensor {name!r}: shape must be a list of non-negative ints, got {shape!r}")
        if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise ValueError(f"tensor {name!r}: data_offsets must be [begin, end], got {offsets!r}")
        nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise ValueError(f"tensor {name!r}: shape {shape} of {dtype} is {nbytes} bytes, but its "
                             f"data_offsets {offsets} hold {offsets[1] - offsets[0]}")
        ranges.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(ranges):
        if begin != end:
            raise ValueError(f"tensor {name!r} starts at byte {begin} of the data, expected {end} "
                             f"({'an overlap' if begin < end else 'a gap'})")
        end = stop
    if end != body_size:
        raise ValueError(f"the tensors hold {end} bytes of data, but the file has {body_size}")


def save_file(state, path, kind="state"):
    """Write a nested ``state`` (see the module docstring) atomically; returns the path."""
    from safetensors.numpy import save as st_save
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise TypeError(f"save: expected a dict with string keys, got {type(state).__name__}")
    tensors, meta = {}, {}
    for key, value in state.items():
        if key == FORMAT_KEY:
            raise ValueError(f"save: {FORMAT_KEY!r} is reserved")
        meta[key] = json.dumps(_encode(value, key, tensors), allow_nan=False)
    meta[FORMAT_KEY] = json.dumps({"kind": kind, "format_version": FORMAT_VERSION,
                                   "minicnn_version": _version(), "keys": list(state)})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_bytes(path, st_save(tensors, metadata=meta))


def load_file(path, allow_plain=False):
    """Read a file written by :func:`save_file`; returns ``(state, info)``.

    Arrays come back as host NumPy arrays whatever backend saved them. Any
    file that is not such a file raises :class:`CheckpointError` saying why.
    ``allow_plain``: a safetensors file without minicnn's metadata (e.g. from
    ``safetensors.torch.save_file``) gives its flat dict of tensors.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = read_safetensors(path)           # the header checked before the body is read
        tensors = st_load(raw)
    except (SafetensorError, ValueError, TypeError, OverflowError, UnicodeDecodeError, KeyError,
            RecursionError) as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: {_sniff(path)} "
                              f"({type(e).__name__}: {str(e)[:120]})") from None
    # private, writable copies (the optimizer updates its state in place)
    tensors = {k: np.array(v, copy=True) for k, v in tensors.items()}
    meta = _metadata(raw, path)
    if meta is None:
        if allow_plain:
            return tensors, {"kind": "plain"}
        raise CheckpointError(f"{path} is a safetensors file but not one minicnn wrote "
                              f"(no {FORMAT_KEY!r} entry in its metadata; mc.load reads it)")
    try:
        info = json.loads(meta[FORMAT_KEY])
        if not isinstance(info, dict):
            raise TypeError("not an object")
        keys = info["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TypeError("keys")
        version = info["format_version"]
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is a safetensors file but not one minicnn wrote "
                              f"(no valid {FORMAT_KEY!r} metadata: {type(e).__name__})") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has minicnn format version {version!r}; this minicnn reads "
                              f"version {FORMAT_VERSION}")
    state = {}
    for key in keys:
        if key not in meta:
            raise CheckpointError(f"{path}: the metadata lacks the entry {key!r}")
        try:
            node = json.loads(meta[key])
            state[key] = _decode(node, tensors, f"{path} [{key}]")
        except (ValueError, RecursionError) as e:          # CheckpointError is a ValueError
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: the metadata entry {key!r} is not valid "
                                  f"({type(e).__name__}: {str(e)[:80]})") from None
    return state, info


def _metadata(raw, path):
    """The ``__metadata__`` map of a safetensors buffer (already validated by safetensors)."""
    n = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8:8 + n])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or FORMAT_KEY not in meta:
        return None
    return meta


# -----------------------------------------------------------------------------
# mc.save / mc.load
# -----------------------------------------------------------------------------
def save(obj, path):
    """Save a state dict (or any dict of arrays, numbers, strings, lists) as safetensors.

    After ``torch.save``, but never a pickle. A flat state dict such as
    ``model.state_dict()`` is stored with its keys as the tensor names, so
    ``safetensors.torch.load_file(path)`` gives the same dict in PyTorch.
    """
    from collections import OrderedDict
    if isinstance(obj, OrderedDict):
        obj = dict(obj)
    return save_file(obj, path, kind="state")


def load(path, map_location=None, weights_only=True):
    """Load what :func:`save` wrote (arrays as host NumPy arrays); never runs code.

    A plain safetensors file (``safetensors.torch.save_file(torch_model.state_dict(), path)``)
    loads too, as its flat dict of tensors: ``model.load_state_dict(mc.load(path))``.

    ``map_location`` and ``weights_only`` are PyTorch's arguments, accepted so that
    ``torch.load(path, map_location=device, weights_only=True)`` runs unchanged:
    minicnn's files hold weights only, whatever ``weights_only`` says (nothing in
    them can run code), and ``load_state_dict`` puts the arrays where the model lives.
    """
    if map_location is not None:
        from .device import device as as_device
        if not callable(map_location) and not isinstance(map_location, dict):
            as_device(map_location)        # a device PyTorch would refuse is refused here too
    if not isinstance(weights_only, bool):
        raise TypeError(f"load: weights_only must be True or False, got {weights_only!r}")
    state, _ = load_file(path, allow_plain=True)
    return state
