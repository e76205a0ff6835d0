"""minicnn.utils.data against torch.utils.data: the same names, defaults and batch shapes."""
from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

import minicnn as mc
from minicnn.autograd.tensor import Tensor
from minicnn.data import ArrayDataset
from minicnn.data import DataLoader as ImageLoader
from minicnn.utils import data as D

try:
    import torch
    import torch.utils.data as TD
except ImportError:            # the comparisons skip; the rest still runs
    torch = TD = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def images(n=10, seed=0):
    r = np.random.default_rng(seed)
    return ArrayDataset(r.integers(0, 256, (n, 28, 28), dtype=np.uint8), r.integers(0, 10, n))


def host(t):
    return mc.io.to_numpy(t) if isinstance(t, Tensor) else np.asarray(t)


# -----------------------------------------------------------------------------
# Datasets
# -----------------------------------------------------------------------------
def test_dataset_base_and_concat():
    class Squares(D.Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return i * i

    both = Squares(3) + Squares(2)
    assert isinstance(both, D.ConcatDataset)
    assert len(both) == 5 and [both[i] for i in range(5)] == [0, 1, 4, 0, 1]
    assert both[-1] == 1 and both.cumulative_sizes == [3, 5]
    with pytest.raises(NotImplementedError):
        D.Dataset()[0]


def test_tensor_dataset():
    x, y = mc.tensor(np.arange(12.0).reshape(6, 2)), np.arange(6)
    ds = D.TensorDataset(x, y)
    assert len(ds) == 6 and ds.tensors[0] is x
    a, b = ds[2]
    assert host(a).tolist() == [4.0, 5.0] and int(b) == 2
    with pytest.raises(ValueError, match="Size mismatch"):
        D.TensorDataset(x, np.arange(5))


@needs_torch
def test_subset_and_tensor_dataset_match_torch():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    ours = D.Subset(D.TensorDataset(x), [3, 1, 7])
    theirs = TD.Subset(TD.TensorDataset(torch.from_numpy(x)), [3, 1, 7])
    assert len(ours) == len(theirs) == 3
    for k in range(3):
        assert host(ours[k][0]).tolist() == theirs[k][0].tolist()


@needs_torch
@pytest.mark.parametrize("n, lengths", [(10, [3, 7]), (10, [0.5, 0.5]), (11, [0.3, 0.3, 0.4]),
                                        (7, [0.1, 0.2, 0.7]), (100, [0.8, 0.1, 0.1]), (5, [1.0])])
def test_random_split_lengths_match_torch(n, lengths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = [len(s) for s in D.random_split(list(range(n)), lengths)]
        theirs = [len(s) for s in TD.random_split(list(range(n)), lengths)]
    assert ours == theirs


def test_random_split_is_a_partition_drawn_from_minicnns_generator():
    mc.manual_seed(3)
    a = D.random_split(range(10), [4, 6])
    mc.manual_seed(3)
    b = D.random_split(range(10), [4, 6])
    assert [s.indices for s in a] == [s.indices for s in b]
    assert sorted(a[0].indices + a[1].indices) == list(range(10))
    g = np.random.default_rng(0)
    assert D.random_split(range(10), [0.5, 0.5], generator=g)[0].indices == \
        np.random.default_rng(0).permutation(10).tolist()[:5]
    with pytest.raises(ValueError, match="Sum of input lengths"):
        D.random_split(range(10), [4, 5])


# -----------------------------------------------------------------------------
# default_collate
# -----------------------------------------------------------------------------
Point = collections.namedtuple("Point", "x y")


@needs_torch
def test_default_collate_matches_torch_shapes_and_dtypes():
    samples = [(np.ones((1, 2, 2), np.float32) * i, i, float(i), {"k": np.arange(3, dtype=np.int32)},
                "s", Point(i, 0.5)) for i in range(4)]
    ours = D.default_collate(samples)
    theirs = TD.default_collate(samples)
    assert type(ours) is type(theirs) is list and len(ours) == len(theirs)
    for o, t in [(ours[0], theirs[0]), (ours[1], theirs[1]), (ours[2], theirs[2]),
                 (ours[3]["k"], theirs[3]["k"]), (ours[5].x, theirs[5].x), (ours[5].y, theirs[5].y)]:
        assert isinstance(o, Tensor)
        assert o.shape == tuple(t.shape)
        assert str(o.dtype) == str(t.dtype).replace("torch.", "")
        assert np.array_equal(host(o), t.numpy())
    assert ours[4] == theirs[4] == ("s",) * 4
    assert isinstance(ours[5], Point)


def test_default_collate_stacks_minicnn_tensors():
    out = D.default_collate([mc.tensor(np.full(3, i, np.float32)) for i in range(2)])
    assert out.shape == (2, 3) and out.dtype == np.float32
    with pytest.raises(RuntimeError, match="equal size"):
        D.default_collate([(1, 2), (1,)])


# -----------------------------------------------------------------------------
# DataLoader
# -----------------------------------------------------------------------------
def test_defaults_are_pytorchs():
    loader = D.DataLoader(images(5))
    assert loader.batch_size == 1 and len(loader) == 5
    x, y = next(iter(loader))
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (1,) and y.dtype == np.int64


@needs_torch
@pytest.mark.parametrize("n, bs, drop_last", [(10, 3, False), (10, 3, True), (9, 3, True), (1, 4, False),
                                              (1, 4, True), (7, 1, False)])
def test_batch_counts_match_torch(n, bs, drop_last):
    x = np.arange(n, dtype=np.float32)
    ours = D.DataLoader(D.TensorDataset(x), batch_size=bs, drop_last=drop_last)
    theirs = TD.DataLoader(TD.TensorDataset(torch.from_numpy(x)), batch_size=bs, drop_last=drop_last)
    assert len(ours) == len(theirs)
    assert [b[0].shape for b in ours] == [tuple(b[0].shape) for b in theirs]


@needs_torch
def test_a_generic_dataset_batches_like_torch():
    class Pairs:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((2, 3), i, np.float32), i

    ours = [[host(t) for t in b] for b in D.DataLoader(Pairs(), batch_size=2)]
    theirs = [[t.numpy() for t in b] for b in TD.DataLoader(Pairs(), batch_size=2)]
    for o, t in zip(ours, theirs):
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(o, t))


def test_fast_paths_equal_item_by_item():
    ds = images(10)
    fast = list(D.DataLoader(ds, batch_size=4))
    slow = list(D.DataLoader(ds, batch_size=4, collate_fn=D.default_collate))
    sub = D.Subset(ds, [9, 2, 5])
    fast_sub = list(D.DataLoader(sub, batch_size=2))
    slow_sub = list(D.DataLoader(sub, batch_size=2, collate_fn=D.default_collate))
    for a, b in zip(fast + fast_sub, slow + slow_sub):
        assert all(np.array_equal(host(u), host(v)) and u.dtype == v.dtype for u, v in zip(a, b))


def test_an_overridden_getitem_is_honoured_by_both_loaders():
    class Inverted(ArrayDataset):
        def __getitem__(self, i):
            image, label = super().__getitem__(i)
            return 1.0 - image, label + 100

    base = images(6)
    ds = Inverted(base.data, base.targets)
    for loader in (D.DataLoader(ds, batch_size=3), ImageLoader(ds, batch_size=3)):
        x, y = next(iter(loader))
        assert np.allclose(host(x), 1.0 - base.data[:3, None] / 255.0, atol=1e-6)
        assert host(y).tolist() == (base.targets[:3] + 100).tolist()
    assert ImageLoader(ds).arrays is None and ImageLoader(base).arrays is not None


def test_shuffle_sampler_and_batch_sampler():
    ds = D.TensorDataset(np.arange(6))
    mc.manual_seed(1)
    a = np.concatenate([host(b[0]) for b in D.DataLoader(ds, batch_size=4, shuffle=True)])
    mc.manual_seed(1)
    b = np.concatenate([host(b[0]) for b in D.DataLoader(ds, batch_size=4, shuffle=True)])
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == list(range(6))
    got = [host(b[0]).tolist() for b in D.DataLoader(ds, batch_size=2, sampler=[5, 4, 3])]
    assert got == [[5, 4], [3]]
    got = [host(b[0]).tolist() for b in D.DataLoader(ds, batch_sampler=[[0, 5], [1]])]
    assert got == [[0, 5], [1]]
    assert [int(host(s[0])) for s in D.DataLoader(ds, batch_size=None)] == list(range(6))
    with pytest.raises(ValueError, match="mutually exclusive"):
        D.DataLoader(ds, sampler=[0], shuffle=True)


def test_workers_run_in_process_and_options_are_validated():
    seen = []
    loader = D.DataLoader(D.TensorDataset(np.arange(4)), batch_size=2, num_workers=2, pin_memory=True,
                          persistent_workers=True, prefetch_factor=2, worker_init_fn=seen.append)
    assert [host(b[0]).tolist() for b in loader] == [[0, 1], [2, 3]]
    list(loader)
    assert seen == [0, 1]                       # persistent: started once
    with pytest.raises(ValueError, match="persistent_workers"):
        D.DataLoader([1], persistent_workers=True)
    with pytest.raises(ValueError, match="prefetch_factor"):
        D.DataLoader([1], prefetch_factor=2)
    with pytest.raises(ValueError, match="num_workers"):
        D.DataLoader([1], num_workers=-1)
    with pytest.raises(TypeError, match="pin_memory"):
        D.DataLoader([1], pin_memory="yes")
    with pytest.raises(ValueError, match="batch_size"):
        D.DataLoader([1], batch_size=0)


def test_collate_fn_and_dict_samples():
    ds = [{"x": np.ones(2, np.float32) * i, "y": i} for i in range(3)]
    batch = next(iter(D.DataLoader(ds, batch_size=3)))
    assert batch["x"].shape == (3, 2) and batch["y"].dtype == np.int64
    assert next(iter(D.DataLoader(ds, batch_size=2, collate_fn=len))) == 2
