"""The validation split: stratified, seeded, disjoint from training, never the test set."""
import numpy as np
import pytest

from minicnn.cli.commands import build_loaders, main
from minicnn.data import stratified_split

pytestmark = pytest.mark.tutorial08        # what tutorials/08_*.ipynb teaches (tests/README.md)


def test_stratified_split_is_disjoint_covering_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [100, 50, 30, 20, 10, 10, 10, 10, 10, 250])
    tr, va = stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(tr, va)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
    counts = np.bincount(labels[va], minlength=10)
    np.testing.assert_array_equal(counts, [10, 5, 3, 2, 1, 1, 1, 1, 1, 25])
    tr2, va2 = stratified_split(labels, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(labels, 0.1, seed=4)[1])
    assert len(stratified_split(labels, 0.0)[1]) == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, "0.1"])
def test_stratified_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="fraction must be in"):
        stratified_split(np.zeros(10), bad)


def test_build_loaders_carves_validation_from_training_images_not_test():
    train, val, test, _, _ = build_loaders("digits", 64, limit_train=1000, val_split=0.2, seed=0)
    assert len(train.arrays[0]) == 800 and len(val.arrays[0]) == 200
    tr_imgs = train.arrays[0].reshape(800, -1)
    va_imgs = val.arrays[0].reshape(200, -1)
    te_imgs = test.arrays[0].reshape(len(test.arrays[0]), -1)
    # validation images are training images, none is a test image
    te_set = {row.tobytes() for row in te_imgs}
    assert not any(row.tobytes() in te_set for row in va_imgs)
    tr_set = {row.tobytes() for row in tr_imgs}
    assert sum(row.tobytes() in tr_set for row in va_imgs) <= 2     # exact duplicates only
    assert build_loaders("digits", 64, limit_train=100, val_split=0.0)[1] is None


def test_cli_rejects_bad_val_split(capsys):
    assert main(["train", "--val-split", "1.5", "--no-progress", "--epochs", "1"]) == 2
    assert "--val-split must be in [0, 1), got 1.5" in capsys.readouterr().err
