"""The downloader against a local HTTP server: checksums, retries, fallback, atomicity.

No test here touches the internet: a ``http.server`` on 127.0.0.1 (port 0 = any
free port) serves small generated IDX files and misbehaves on request
(404, 503, corrupted bytes, connections closed early, a stalled transfer).
"""
import gzip
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from minicnn.data import datasets, download
from minicnn.data.download import (ChecksumError, DownloadError, download_dataset, download_file,
                                   md5_of_content, mirrors_for, parse_mirrors_env)
from minicnn.data.idx import encode_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILENAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _fake_mnist():
    """Small IDX files: {name: (gz bytes, md5 of the decompressed content)}."""
    g = np.random.default_rng(7)
    arrays = {
        "train-images-idx3-ubyte.gz": g.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(12) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": g.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(5, dtype=np.uint8),
    }
    out = {}
    for name, a in arrays.items():
        raw = encode_idx(a)
        out[name] = (gzip.compress(raw, mtime=0), hashlib.md5(raw).hexdigest())
    return out


FAKE = _fake_mnist()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]``, misbehaving as ``server.modes[path]`` says:

    ``404`` | ``503:N`` (the first N requests fail with 503) | ``truncate``
    (announce the full length, send half, hang up) | ``stall`` (send half,
    then wait for ``server.release``).
    """

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.hits[self.path] = hits = srv.hits.get(self.path, 0) + 1
        mode = srv.modes.get(self.path, "")
        body = srv.files.get(self.path)
        if body is None or mode == "404":
            self.send_error(404, "Not Found")
            return
        if mode.startswith("503:") and hits <= int(mode[4:]):
            self.send_error(503, "Service Unavailable")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("truncate", "stall"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                srv.release.wait(timeout=20)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


class LocalServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.files, self.httpd.modes, self.httpd.hits = {}, {}, {}
        self.httpd.lock = threading.Lock()
        self.httpd.release = threading.Event()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def serve(self, path, body, mode=""):
        self.httpd.files[path] = body
        if mode:
            self.httpd.modes[path] = mode
        return self.url + path

    def hits(self, path):
        return self.httpd.hits.get(path, 0)

    def stop(self):
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.stop()


@pytest.fixture
def refused_url():
    """A URL on a port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/t10k-labels-idx1-ubyte.gz"


FAST = dict(timeout=5, backoff=0.0, sleep=lambda s: None, progress=False)


def _leftovers(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ----------------------------------------------------------------------------
def test_success_verifies_checksum_and_leaves_only_the_file(server, tmp_path):
    body, md5 = FAKE["t10k-labels-idx1-ubyte.gz"]
    url = server.serve("/a/t10k-labels-idx1-ubyte.gz", body)
    dest = tmp_path / "t10k-labels-idx1-ubyte.gz"
    assert download_file([url], dest, md5=md5, **FAST) == url
    assert dest.read_bytes() == body
    assert md5_of_content(dest) == md5
    assert _leftovers(tmp_path) == [dest.name]


def test_progress_bar_runs(server, tmp_path, capsys):
    body, md5 = FAKE["t10k-images-idx3-ubyte.gz"]
    url = server.serve("/a/t10k-images-idx3-ubyte.gz", body)
    download_file(url, tmp_path / "x.gz", md5=md5, **{**FAST, "progress": True})
    assert "x.gz" in capsys.readouterr().err      # tqdm's description is the file name


def test_checksum_mismatch_falls_back_to_next_mirror(server, tmp_path):
    body, md5 = FAKE["t10k-labels-idx1-ubyte.gz"]
    wrong = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07", mtime=0)
    bad = server.serve("/bad/f.gz", wrong)
    good = server.serve("/good/f.gz", body)
    dest = tmp_path / "f.gz"
    assert download_file([bad, good], dest, md5=md5, retries=3, **FAST) == good
    assert server.hits("/bad/f.gz") == 1          # bad content is not retried on the same mirror
    assert dest.read_bytes() == body
    assert _leftovers(tmp_path) == ["f.gz"]


def test_checksum_mismatch_everywhere_is_a_clear_error(server, tmp_path):
    _, md5 = FAKE["t10k-labels-idx1-ubyte.gz"]
    urls = [server.serve("/m1/f.gz", b"not gzip at all"),
            server.serve("/m2/f.gz", gzip.compress(b"wrong content"))]
    with pytest.raises(DownloadError) as info:
        download_file(urls, tmp_path / "f.gz", md5=md5, **FAST)
    msg = str(info.value)
    assert "every mirror failed" in msg and "f.gz" in msg
    assert urls[0] in msg and urls[1] in msg
    assert "checksum mismatch" in msg and md5 in msg
    assert _leftovers(tmp_path) == []             # nothing half-written, no temp files


def test_404_primary_uses_fallback(server, tmp_path):
    body, md5 = FAKE["t10k-labels-idx1-ubyte.gz"]
    missing = server.url + "/gone/f.gz"
    good = server.serve("/good/f.gz", body)
    assert download_file([missing, good], tmp_path / "f.gz", md5=md5, retries=3, **FAST) == good
    assert server.hits("/gone/f.gz") == 1         # a 404 is permanent: no retries


def test_all_mirrors_fail_lists_each_url_and_error(server, tmp_path, refused_url):
    missing = server.url + "/gone/f.gz"
    with pytest.raises(DownloadError) as info:
        download_file([missing, refused_url], tmp_path / "f.gz", retries=2, **FAST)
    msg = str(info.value)
    assert f"{missing}: HTTP 404" in msg
    assert f"{refused_url}: cannot connect" in msg and "after 2 attempts" in msg
    assert _leftovers(tmp_path) == []


def test_transient_errors_are_retried_with_backoff(server, tmp_path):
    body, md5 = FAKE["t10k-labels-idx1-ubyte.gz"]
    url = server.serve("/flaky/f.gz", body, mode="503:2")
    waits = []
    got = download_file([url], tmp_path / "f.gz", md5=md5, retries=3, timeout=5, backoff=0.5,
                        sleep=waits.append, progress=False)
    assert got == url and server.hits("/flaky/f.gz") == 3
    assert waits == [0.5, 1.0]                     # backoff * 2**attempt


def test_retries_are_bounded(server, tmp_path):
    url = server.serve("/down/f.gz", b"x", mode="503:100")
    with pytest.raises(DownloadError, match="HTTP 503.*after 3 attempts"):
        download_file([url], tmp_path / "f.gz", retries=3, **FAST)
    assert server.hits("/down/f.gz") == 3


def test_connection_closed_early_leaves_nothing(server, tmp_path):
    body, md5 = FAKE["train-images-idx3-ubyte.gz"]
    url = server.serve("/cut/f.gz", body, mode="truncate")
    with pytest.raises(DownloadError, match="closed"):
        download_file([url], tmp_path / "f.gz", md5=md5, retries=2, **FAST)
    assert server.hits("/cut/f.gz") == 2
    assert _leftovers(tmp_path) == []


def test_interrupted_download_removes_its_temporary_file(server, tmp_path, monkeypatch):
    body, md5 = FAKE["train-images-idx3-ubyte.gz"]
    url = server.serve("/a/f.gz", body)

    class InterruptingBar:                         # Ctrl-C after the first chunk arrives
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            assert any(name.endswith(".part") for name in os.listdir(tmp_path))
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        download_file([url], tmp_path / "f.gz", md5=md5, **FAST)
    assert _leftovers(tmp_path) == []


def test_killed_download_leaves_nothing_that_looks_valid(server, tmp_path):
    """SIGKILL mid-transfer: no cleanup can run, yet no file under the real name."""
    body, _ = FAKE["train-images-idx3-ubyte.gz"]
    url = server.serve("/slow/train-images-idx3-ubyte.gz", body, mode="stall")
    folder = tmp_path / "mnist"
    dest = folder / "train-images-idx3-ubyte.gz"
    code = ("import sys; from minicnn.data.download import download_file; "
            "download_file([sys.argv[1]], sys.argv[2], retries=1, timeout=30, progress=False)")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MINICNN_BACKEND": "numpy"}
    proc = subprocess.Popen([sys.executable, "-c", code, url, str(dest)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not (server.hits("/slow/train-images-idx3-ubyte.gz")
                   and any(n.endswith(".part") for n in _leftovers(folder))):
            assert proc.poll() is None, "the download process ended before it could be killed"
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        time.sleep(0.2)                            # let it write some of the bytes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    left = _leftovers(folder)
    assert not dest.exists()
    assert left and all(n.startswith(".") and n.endswith(".part") for n in left), left
    # and the dataset lookup does not mistake the leftover for data
    assert datasets._find_pair(str(folder), datasets.SPLIT_FILES[True]) is None


# ----------------------------------------------------------------------------
# Mirrors and whole datasets
# ----------------------------------------------------------------------------
def test_mirrors_env_and_argument(monkeypatch):
    assert mirrors_for("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert mirrors_for("fashion-mnist")[1].startswith("https://github.com/zalandoresearch")
    monkeypatch.setenv("MINICNN_MIRRORS", "mnist=http://a/x/, http://b/y/; fashion-mnist=http://c/")
    assert mirrors_for("mnist") == ["http://a/x/", "http://b/y/"]
    assert mirrors_for("fashion-mnist") == ["http://c/"]
    assert mirrors_for("mnist", mirrors=["http://arg/"]) == ["http://arg/"]          # argument wins
    assert mirrors_for("mnist", mirrors={"fashion-mnist": ["http://z/"]}) == ["http://a/x/", "http://b/y/"]
    with pytest.raises(ValueError, match="name=url1,url2"):
        parse_mirrors_env("http://no-name/")


def test_md5_is_of_the_decompressed_content(tmp_path):
    raw = encode_idx(np.arange(10, dtype=np.uint8))
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=123))
    (tmp_path / "c").write_bytes(raw)
    digests = {md5_of_content(tmp_path / n) for n in ("a.gz", "b.gz", "c")}
    assert digests == {hashlib.md5(raw).hexdigest()}


def _serve_fake_mnist(server, prefix):
    for name, (body, _) in FAKE.items():
        server.serve(f"{prefix}{name}", body)
    return server.url + prefix


@pytest.fixture
def fake_checksums(monkeypatch):
    monkeypatch.setitem(download.CHECKSUMS, "mnist", {n: md5 for n, (_, md5) in FAKE.items()})


def test_download_dataset_with_env_mirrors(server, tmp_path, monkeypatch, fake_checksums):
    good = _serve_fake_mnist(server, "/mirror2/")
    monkeypatch.setenv("MINICNN_MIRRORS", f"mnist={server.url}/mirror1/,{good}")  # mirror1: all 404
    used = download_dataset("mnist", tmp_path, **FAST)
    assert sorted(used) == sorted(FILENAMES)
    assert all(u.startswith(good) for u in used.values())
    assert sorted(_leftovers(tmp_path)) == sorted(FILENAMES)
    again = download_dataset("mnist", tmp_path, **FAST)             # verified copies are kept
    assert set(again.values()) == {"already present"}


def test_dataset_downloads_into_cache_then_reads_cache(server, tmp_path, monkeypatch, fake_checksums):
    base = _serve_fake_mnist(server, "/mnist/")
    monkeypatch.delenv("MINICNN_DATA_DIR", raising=False)
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MINICNN_MIRRORS", f"mnist={base}")
    first = datasets.MNIST(train=False, download=True, progress=False)
    assert len(first) == 5 and first.targets.tolist() == [0, 1, 2, 3, 4]
    assert f"downloaded from {base}" in first.source
    assert sorted(_leftovers(tmp_path / "cache" / "mnist")) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]   # only the split asked for
    second = datasets.MNIST(train=False, download=True)
    assert "(cache)" in second.source and server.hits(f"/mnist/{FILENAMES[2]}") == 1


def test_dataset_download_failure_explains_what_to_do(tmp_path, monkeypatch, refused_url):
    monkeypatch.delenv("MINICNN_DATA_DIR", raising=False)
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path / "cache"))
    base = refused_url.rsplit("/", 1)[0] + "/"
    monkeypatch.setenv("MINICNN_MIRRORS", f"mnist={base}")
    monkeypatch.setattr(download, "download_file",
                        lambda *a, **k: download_file(*a, **{**k, **FAST, "retries": 1}))
    with pytest.raises(DownloadError) as info:
        datasets.MNIST(train=True)
    msg = str(info.value)
    assert base + "train-images-idx3-ubyte.gz" in msg and "cannot connect" in msg
    assert "MINICNN_DATA_DIR" in msg and "'digits'" in msg
    assert _leftovers(tmp_path / "cache" / "mnist") == []


def test_checksum_error_is_a_data_error():
    assert issubclass(ChecksumError, ValueError) and issubclass(DownloadError, RuntimeError)
