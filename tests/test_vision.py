"""minicnn.vision: torchvision's datasets, transforms and make_grid, checked by hand.

CIFAR-10 cannot be downloaded here: its reader is tested on small files written
in CIFAR's exact binary layout, the download path on a fake archive served from
a file:// URL with the expected MD5 patched.
"""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest

import minicnn as mc
from minicnn.autograd.tensor import Tensor
from minicnn.cli.commands import load_checkpoint_file, main
from minicnn.data import cifar, download
from minicnn.data.datasets import load_cifar10_arrays
from minicnn.data.idx import DataError
from minicnn.io import to_numpy
from minicnn.utils.data import DataLoader
from minicnn.vision import datasets, transforms as T
from minicnn.vision.utils import make_grid

from conftest import full_data_dir


# -----------------------------------------------------------------------------
# CIFAR-10 in its binary layout
# -----------------------------------------------------------------------------
def cifar_records(n, seed=0):
    """(bytes, images (n, 3, 32, 32), labels): records of 1 label byte + R, G, B planes."""
    r = np.random.default_rng(seed)
    images = r.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = r.integers(0, 10, n).astype(np.uint8)
    raw = b"".join(bytes([labels[i]]) + images[i, 0].tobytes() + images[i, 1].tobytes()
                   + images[i, 2].tobytes() for i in range(n))
    return raw, images, labels.astype(np.int64)


def write_cifar(folder, n_train=4, n_test=3):
    """A cifar-10-batches-bin folder with five small training batches and a test batch."""
    folder = os.path.join(folder, cifar.FOLDER)
    os.makedirs(folder, exist_ok=True)
    train_images, train_labels = [], []
    for k, name in enumerate(cifar.TRAIN_FILES):
        raw, images, labels = cifar_records(n_train, seed=k)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(raw)
        train_images.append(images)
        train_labels.append(labels)
    raw, test_images, test_labels = cifar_records(n_test, seed=99)
    with open(os.path.join(folder, "test_batch.bin"), "wb") as f:
        f.write(raw)
    return (np.concatenate(train_images), np.concatenate(train_labels)), (test_images, test_labels)


def test_one_record_by_hand(tmp_path):
    record = bytearray(cifar.RECORD)
    record[0] = 7
    record[1 + 0] = 11                      # R plane, row 0, col 0
    record[1 + 32 + 2] = 22                 # R plane, row 1, col 2
    record[1 + 1024 + 5] = 33               # G plane, row 0, col 5
    record[1 + 2048 + 31 * 32 + 31] = 44    # B plane, row 31, col 31
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(record))
    images, labels = cifar.read_batch(str(path))
    assert labels.tolist() == [7] and images.shape == (1, 3, 32, 32)
    assert images[0, 0, 0, 0] == 11 and images[0, 0, 1, 2] == 22
    assert images[0, 1, 0, 5] == 33 and images[0, 2, 31, 31] == 44
    assert int(images.sum()) == 11 + 22 + 33 + 44


def test_reader_rejects_bad_files(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="whole number of CIFAR-10 records"):
        cifar.read_batch(str(tmp_path / "short.bin"))
    (tmp_path / "label.bin").write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(DataError, match="labels must be 0..9"):
        cifar.read_batch(str(tmp_path / "label.bin"))
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(bytes(cifar.RECORD))
    with pytest.raises(DataError, match="incomplete"):
        cifar.batch_files(str(folder))


def test_vision_cifar10_items_are_hwc_and_chw_after_to_tensor(tmp_path):
    (train_images, train_labels), (test_images, test_labels) = write_cifar(str(tmp_path))
    ds = datasets.CIFAR10(str(tmp_path), train=True)
    assert len(ds) == 20 and ds.data.shape == (20, 32, 32, 3) and ds.targets == train_labels.tolist()
    image, label = ds[5]
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and label == train_labels[5]
    assert np.array_equal(image[:, :, 0], train_images[5, 0])       # R plane -> channel 0 of HWC
    assert np.array_equal(image[:, :, 2], train_images[5, 2])
    chw = datasets.CIFAR10(str(tmp_path), train=False, transform=T.ToTensor())[1][0]
    assert isinstance(chw, Tensor) and chw.shape == (3, 32, 32)
    assert np.allclose(to_numpy(chw), test_images[1] / 255.0)
    with pytest.raises(RuntimeError, match="download=True"):
        datasets.CIFAR10(str(tmp_path / "nothing"))


def _tar_gz(members):
    """bytes of a .tar.gz holding ``members``: [(TarInfo, data or None)]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_download_verifies_the_md5_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar(str(src))
    members = [_file(f"{cifar.FOLDER}/{n}", (src / cifar.FOLDER / n).read_bytes())
               for n in cifar.TRAIN_FILES + cifar.TEST_FILES]
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(_tar_gz(members))
    url = archive.as_uri()
    dest = tmp_path / "root"
    with pytest.raises(download.DownloadError, match="checksum mismatch"):
        cifar.download(str(dest), url=url, progress=False)             # the real MD5: not this file
    assert not os.path.exists(dest / cifar.ARCHIVE) and not os.path.exists(dest / cifar.FOLDER)
    monkeypatch.setattr(cifar, "URL", url)
    monkeypatch.setattr(cifar, "MD5", download.md5_of_file(archive))
    images, labels, where = load_cifar10_arrays(train=False, root=str(dest), download=True, progress=False)
    assert images.shape == (3, 3, 32, 32) and "downloaded" in where
    assert os.path.isfile(dest / cifar.FOLDER / "data_batch_5.bin")


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "absolute", "dotdot"])
def test_extraction_refuses_malicious_members(tmp_path, kind):
    if kind in ("symlink", "hardlink"):
        info = tarfile.TarInfo(f"{cifar.FOLDER}/data_batch_1.bin")
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        member = (info, None)
    else:
        member = _file("/tmp/evil.bin" if kind == "absolute" else f"{cifar.FOLDER}/../../evil.bin", b"x")
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz([_file(f"{cifar.FOLDER}/ok.bin", b"fine"), member]))
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="refusing member"):
        cifar.extract(str(archive), str(dest))
    assert not (dest / cifar.FOLDER / "ok.bin").exists()       # nothing written unless all pass
    assert not (tmp_path / "evil.bin").exists()


# -----------------------------------------------------------------------------
# MNIST through torchvision's interface
# -----------------------------------------------------------------------------
@pytest.mark.skipif(full_data_dir() is None, reason="MINICNN_DATA_DIR with full MNIST not set")
def test_mnist_from_minicnns_data_dir():
    ds = datasets.MNIST(root=full_data_dir(), train=False, transform=T.ToTensor())
    assert len(ds) == 10000 and ds.data.shape == (10000, 28, 28)
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == np.float32 and label == 7
    x, y = next(iter(DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 1, 28, 28) and y.dtype == np.int64


def test_mnist_in_torchvisions_layout(tmp_path):
    from minicnn.data import write_idx
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    write_idx(str(raw / "t10k-images-idx3-ubyte"), images)
    write_idx(str(raw / "t10k-labels-idx1-ubyte"), np.array([4, 0, 9], dtype=np.uint8))
    ds = datasets.MNIST(str(tmp_path), train=False, target_transform=lambda t: t + 1)
    assert np.array_equal(ds[1][0], images[1]) and ds[1][1] == 1 and len(ds) == 3
    with pytest.raises(RuntimeError, match="download=True"):
        datasets.MNIST(str(tmp_path), train=True)
    with pytest.raises(RuntimeError, match="download=True"):
        datasets.FashionMNIST(str(tmp_path), train=False)


# -----------------------------------------------------------------------------
# Transforms, by hand
# -----------------------------------------------------------------------------
def test_to_tensor_and_normalize():
    img = np.array([[[0, 255, 51], [102, 0, 0]]], dtype=np.uint8)          # (H=1, W=2, C=3)
    t = T.ToTensor()(img)
    assert t.shape == (3, 1, 2) and t.dtype == np.float32
    assert np.allclose(to_numpy(t)[:, 0, 0], [0, 1, 0.2]) and np.allclose(to_numpy(t)[:, 0, 1], [0.4, 0, 0])
    assert T.ToTensor()(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5)
    kept = T.ToTensor()(np.full((2, 2), 3.0))                                  # float: no scaling
    assert kept.dtype == np.float64 and float(to_numpy(kept).max()) == 3.0
    n = T.Normalize((0.5, 0.0, 0.2), (0.5, 1.0, 0.1))(t)
    assert np.allclose(to_numpy(n)[:, 0, 0], [-1.0, 1.0, 0.0]) and np.allclose(to_numpy(n)[:, 0, 1], [-0.2, 0.0, -2.0])
    with pytest.raises(TypeError, match="float"):
        T.Normalize((0.5,), (0.5,))(mc.tensor(np.zeros((1, 2, 2), np.int64)))
    pipeline = T.Compose([T.ToTensor(), T.Lambda(lambda x: x * 2)])
    assert np.allclose(to_numpy(pipeline(np.full((1, 1), 255, np.uint8))), 2.0)


def test_random_crop_draws_top_then_left_from_minicnns_generator():
    img = mc.tensor(np.arange(16, dtype=np.float32).reshape(1, 4, 4))
    mc.manual_seed(5)
    out = T.RandomCrop(2, padding=1)(img)
    mc.manual_seed(5)
    g = mc.rng.generator()
    i, j = int(g.integers(0, 6 - 2 + 1)), int(g.integers(0, 6 - 2 + 1))
    padded = np.pad(np.arange(16, dtype=np.float32).reshape(4, 4), 1)
    assert np.array_equal(to_numpy(out)[0], padded[i:i + 2, j:j + 2])
    hwc = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(T.RandomCrop(2)(hwc), hwc)                        # same size: no draw
    edge = T.Pad((1, 0), padding_mode="edge")(np.array([[1, 2], [3, 4]]))     # (left/right, top/bottom)
    assert edge.tolist() == [[1, 1, 2, 2], [3, 3, 4, 4]]
    with pytest.raises(ValueError, match="larger than input"):
        T.RandomCrop(5)(img)
    grown = T.RandomCrop(3, pad_if_needed=True)(mc.tensor(np.ones((1, 2, 2), np.float32)))
    assert grown.shape == (1, 3, 3)


def test_flips():
    hwc = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(T.RandomHorizontalFlip(p=1.0)(hwc), hwc[:, ::-1])
    assert np.array_equal(T.RandomVerticalFlip(p=1.0)(hwc), hwc[::-1])
    assert T.RandomHorizontalFlip(p=0.0)(hwc) is hwc
    chw = mc.tensor(np.array([[[1.0, 2.0, 3.0]]], np.float32))
    assert to_numpy(T.RandomHorizontalFlip(p=1.0)(chw)).tolist() == [[[3.0, 2.0, 1.0]]]
    mc.manual_seed(0)
    flips = [T.RandomHorizontalFlip()(chw) is not chw for _ in range(200)]
    mc.manual_seed(0)
    expected = [mc.rng.generator().random() < 0.5 for _ in range(200)]
    assert flips == expected and 60 < sum(flips) < 140


# -----------------------------------------------------------------------------
# make_grid, by hand
# -----------------------------------------------------------------------------
def test_make_grid_by_hand():
    x = np.arange(3 * 1 * 2 * 2, dtype=np.float32).reshape(3, 1, 2, 2) + 1    # three 2x2 grey images
    grid = to_numpy(make_grid(mc.tensor(x), nrow=2, padding=1, pad_value=-1))
    # xmaps = 2, ymaps = 2, grid (3, 2*(2+1)+1, 2*(2+1)+1) = (3, 7, 7); channels repeated
    assert grid.shape == (3, 7, 7) and np.array_equal(grid[0], grid[2])
    expected = np.array([[-1, -1, -1, -1, -1, -1, -1],
                         [-1, 1, 2, -1, 5, 6, -1],
                         [-1, 3, 4, -1, 7, 8, -1],
                         [-1, -1, -1, -1, -1, -1, -1],
                         [-1, 9, 10, -1, -1, -1, -1],
                         [-1, 11, 12, -1, -1, -1, -1],
                         [-1, -1, -1, -1, -1, -1, -1]], dtype=np.float32)
    assert np.array_equal(grid[0], expected)
    # the default padding 2, nrow 8: one row of three, (3, 2+2+2, 3*(2+2)+2)
    assert make_grid(mc.tensor(x)).shape == (3, 6, 14)
    # normalize: min 1 -> 0, max 12 -> 1 over the whole batch; padding keeps pad_value
    norm = to_numpy(make_grid(mc.tensor(x), nrow=3, padding=0, normalize=True))
    assert np.allclose(norm[0, 0, :2], [0.0, 1 / 11]) and np.isclose(norm.max(), 1.0)
    each = to_numpy(make_grid([mc.tensor(x[0]), mc.tensor(x[1])], padding=0, normalize=True,
                              scale_each=True))
    assert np.allclose(each[0], [[0, 1 / 3, 0, 1 / 3], [2 / 3, 1, 2 / 3, 1]])
    single = make_grid(mc.tensor(x[:1]))
    assert single.shape == (3, 2, 2)


# -----------------------------------------------------------------------------
# The command line on tiny CIFAR files
# -----------------------------------------------------------------------------
def test_cli_trains_cifar10_and_evaluates(tmp_path, capsys):
    write_cifar(str(tmp_path / "data" / "cifar10"), n_train=8, n_test=8)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
               "--batch-size", "16", "--limit-train", "32", "--limit-test", "8", "--out", str(out),
               "--no-download"])
    assert rc == 0, capsys.readouterr().err
    ckpt = str(out / "last.ckpt")
    config = load_checkpoint_file(ckpt)["config"]
    assert list(config["input_shape"]) == [3, 32, 32] and config["dataset"] == "cifar10"
    assert dict(config["model_kwargs"]) == {"in_channels": 3, "input_size": 32}
    assert np.allclose(config["normalization"][0], cifar.MEAN)
    capsys.readouterr()
    assert main(["evaluate", ckpt, "--data-dir", str(tmp_path / "data"), "--limit-test", "8",
                 "--no-download", "--out", str(tmp_path / "eval")]) == 0, capsys.readouterr().err
    from PIL import Image
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 90).save(tmp_path / "photo.png")
    capsys.readouterr()
    assert main(["predict", ckpt, str(tmp_path / "photo.png")]) == 0, capsys.readouterr().err
    assert "1." in capsys.readouterr().out


def test_cli_without_cifar_offline_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cifar, "URL", (tmp_path / "absent.tar.gz").as_uri())
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINICNN_DATA_DIR", raising=False)
    rc = main(["train", "--dataset", "cifar10", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "CIFAR-10 not found locally" in err[0] and "--data-dir" in err[0]
