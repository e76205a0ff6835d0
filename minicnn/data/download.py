"""Downloading MNIST and Fashion-MNIST safely: mirrors, retries, checksums, atomic files.

What can go wrong when fetching a file, and what this module does about it:

==========================================  ===========================================
problem                                     answer
==========================================  ===========================================
a mirror is down or the file moved (404)    try the next mirror in :data:`MIRRORS`
a transient failure (timeout, reset, 5xx)   retry the same mirror, waiting
                                            ``backoff * 2**attempt`` seconds (1 s, 2 s, ...)
the connection drops mid-file               detected (fewer bytes than Content-Length),
                                            retried
the bytes are wrong (corrupted mirror,      MD5 checksum of the *decompressed* content
proxy error page, bit rot)                  compared with :data:`CHECKSUMS`; try the next
                                            mirror
the process is killed mid-download          bytes go to a hidden ``.part`` file, renamed
                                            to the real name only once verified
                                            (see :mod:`minicnn.io`)
every mirror fails                          :class:`DownloadError` listing every URL
                                            with its error
==========================================  ===========================================

Why the checksum of the decompressed content rather than of the ``.gz``
file: gzip output depends on the compressor and its settings, so a
re-compressed copy of the very same data has a different ``.gz`` checksum.
Hashing what is inside accepts every faithful copy and nothing else.

Mirrors can be replaced, for a local server or an institutional cache:

* the ``mirrors=`` argument of :func:`download_file` / :func:`download_dataset`;
* the environment variable ``MINICNN_MIRRORS``, e.g.
  ``mnist=http://host/mnist/,http://other/mnist/;fashion-mnist=http://host/fashion/``;
* or by editing the module-level dict :data:`MIRRORS`.

Only the standard library's :mod:`urllib` is used.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
import zlib

from tqdm import tqdm

from ..io import atomic_write
from .idx import DataError

#: Base URLs, in the order they are tried. A file's URL is base + file name.
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ],
}

#: MD5 of the *decompressed* content of each file.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

ENV_MIRRORS = "MINICNN_MIRRORS"
USER_AGENT = "minicnn-downloader (Python urllib)"
_CHUNK = 1 << 16  # 64 KiB per read


class DownloadError(RuntimeError):
    """No mirror delivered a correct copy of a file; the message lists every attempt."""


class ChecksumError(DataError):
    """Downloaded bytes whose checksum is not the expected one."""


class _Incomplete(OSError):
    """The server closed the connection before sending the whole file."""


# ----------------------------------------------------------------------------
# Mirrors
# ----------------------------------------------------------------------------
def parse_mirrors_env(text: str) -> dict:
    """Parse ``MINICNN_MIRRORS``: ``name=url1,url2;name2=url3`` -> ``{name: [urls]}``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, urls = part.partition("=")
        urls = [u.strip() for u in urls.split(",") if u.strip()]
        if not sep or not name.strip() or not urls:
            raise ValueError(f"{ENV_MIRRORS}: cannot parse {part!r}; expected "
                             "'name=url1,url2;name2=url3', e.g. "
                             "'mnist=http://127.0.0.1:8000/mnist/'")
        out[name.strip()] = urls
    return out


def mirrors_for(name: str, mirrors=None) -> list:
    """The base URLs to try for dataset ``name``.

    Precedence: the ``mirrors`` argument (a list of base URLs, or a dict
    ``{name: [urls]}``), then ``MINICNN_MIRRORS``, then :data:`MIRRORS`.
    """
    if mirrors is not None:
        if isinstance(mirrors, str):
            return [mirrors]
        if isinstance(mirrors, dict):
            if name in mirrors:
                return list(mirrors[name])
        else:
            return list(mirrors)
    env = os.environ.get(ENV_MIRRORS, "").strip()
    if env:
        from_env = parse_mirrors_env(env)
        if name in from_env:
            return from_env[name]
    if name not in MIRRORS:
        raise ValueError(f"no mirrors known for dataset {name!r}; known: {', '.join(MIRRORS)}")
    return list(MIRRORS[name])


def join_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + filename


# ----------------------------------------------------------------------------
# Checksums
# ----------------------------------------------------------------------------
def md5_of_content(path) -> str:
    """MD5 (hex) of the file's content, decompressed first if it is gzip.

    Hashing is streamed in 64 KiB pieces, so a large file never sits in memory
    twice. Broken gzip data raises :class:`DataError`.
    """
    path = os.fspath(path)
    h = hashlib.md5()
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupted gzip data ({e})") from e
    return h.hexdigest()


def md5_of_file(path) -> str:
    """MD5 (hex) of the file's bytes as stored (an archive's published checksum), streamed."""
    h = hashlib.md5()
    with open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path, md5, checksum="content"):
    if md5 is None:
        return
    if checksum == "file":
        found = md5_of_file(path)
        if found != md5:
            raise ChecksumError(f"checksum mismatch: MD5 of the file is {found}, expected {md5}")
        return
    try:
        found = md5_of_content(path)
    except DataError as e:
        raise ChecksumError(f"content is not valid gzip ({e.__cause__})") from None
    if found != md5:
        raise ChecksumError(f"checksum mismatch: MD5 of the decompressed content is "
                            f"{found}, expected {md5}")


# ----------------------------------------------------------------------------
# One URL, one attempt
# ----------------------------------------------------------------------------
def _fetch(url, dest, md5, timeout, progress, checksum="content"):
    """Stream ``url`` into a temporary file beside ``dest``, verify, publish atomically."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=os.path.basename(dest), disable=not progress, leave=False)
        with bar, atomic_write(dest) as f:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            if total is not None and received != total:
                raise _Incomplete(f"connection closed after {received:,} of {total:,} bytes")
            f.flush()
            _verify(f.name, md5, checksum)  # raising here deletes the temporary file


def _is_permanent(error) -> bool:
    """True when retrying the same URL cannot help (404, 403, bad content...)."""
    if isinstance(error, ChecksumError):
        return True
    if isinstance(error, urllib.error.HTTPError):
        return 400 <= error.code < 500 and error.code not in (408, 425, 429)
    return False


def _describe(error) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({error.reason})"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed early ({len(error.partial):,} bytes read, more expected)"
    if isinstance(error, (ChecksumError, _Incomplete)):
        return str(error)
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------
def download_file(urls, dest, md5=None, retries: int = 3, backoff: float = 1.0,
                  timeout: float = 30.0, progress=None, sleep=time.sleep,
                  checksum: str = "content") -> str:
    """Download the first good copy among ``urls`` to ``dest``; return the URL used.

    Args:
        urls: full URLs of the same file, tried in order (a fallback mirror
            after the primary).
        dest: the final path; its folder is created if needed.
        md5: expected MD5 of the decompressed content, or None to skip checking.
        retries: attempts per URL for transient errors (timeouts, dropped
            connections, HTTP 5xx). Permanent errors (HTTP 404, checksum
            mismatch) move on to the next URL at once.
        backoff: seconds before the first retry; doubled after each failure.
        timeout: socket timeout in seconds for connecting and for each read.
        progress: show a tqdm progress bar; ``None`` = only when stderr is a
            terminal.
        sleep: the function used to wait (tests pass a no-op).
        checksum: what ``md5`` is of: ``"content"`` (decompressed, the IDX
            files) or ``"file"`` (the bytes as published, e.g. CIFAR-10's
            ``.tar.gz``).

    ``dest`` appears only when a complete, verified copy is in hand; on
    failure nothing is left under ``dest`` (nor any temporary file) and
    :class:`DownloadError` lists each URL with its last error.
    """
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ValueError("download_file: no URLs given")
    if retries < 1:
        raise ValueError(f"download_file: retries must be at least 1, got {retries}")
    if checksum not in ("content", "file"):
        raise ValueError(f"download_file: checksum must be 'content' or 'file', got {checksum!r}")
    if progress is None:
        progress = sys.stderr.isatty()
    dest = os.fspath(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    failures = []
    for url in urls:
        for attempt in range(retries):
            try:
                _fetch(url, dest, md5, timeout, progress, checksum)
                return url
            except (OSError, http.client.HTTPException, ChecksumError) as e:
                # URLError, HTTPError, timeouts and resets are all OSErrors
                error = e
                if _is_permanent(e) or attempt == retries - 1:
                    break
                sleep(backoff * 2 ** attempt)
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        failures.append(f"  {url}: {_describe(error)}{tries}")
    raise DownloadError(f"could not download {os.path.basename(dest)}: every mirror failed:\n"
                        + "\n".join(failures))


def download_dataset(name: str, folder, files=None, mirrors=None, **kwargs) -> dict:
    """Download the files of dataset ``name`` (``"mnist"``, ``"fashion-mnist"``) into ``folder``.

    ``files`` defaults to all four standard files. A file already present
    whose checksum matches is kept. Returns ``{file name: URL used, or
    "already present"}``. Extra keyword arguments go to :func:`download_file`.
    """
    if name not in CHECKSUMS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(CHECKSUMS)}")
    files = list(CHECKSUMS[name]) if files is None else list(files)
    bases = mirrors_for(name, mirrors)
    used = {}
    for filename in files:
        if filename not in CHECKSUMS[name]:
            raise ValueError(f"{name} has no file {filename!r}; expected one of "
                             f"{', '.join(CHECKSUMS[name])}")
        md5 = CHECKSUMS[name][filename]
        dest = os.path.join(os.fspath(folder), filename)
        if os.path.exists(dest):
            try:
                if md5_of_content(dest) == md5:
                    used[filename] = "already present"
                    continue
            except DataError:
                pass  # a bad copy: download over it (os.replace is atomic)
        used[filename] = download_file([join_url(b, filename) for b in bases], dest, md5, **kwargs)
    return used
