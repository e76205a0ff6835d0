"""Pruning (minicnn.nn.utils.prune, in minicnn/compress/prune.py): masks equal torch.nn.utils.prune's, gradients are
masked, pruning composes, remove is permanent, and bad arguments are clear errors."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn.nn.utils import prune

pytestmark = pytest.mark.tutorial12        # what tutorials/12_*.ipynb teaches (tests/README.md)

try:
    import torch
    import torch.nn.utils.prune as tprune
except ImportError:                                   # hand-worked cases below still run
    torch = tprune = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")


def _pair(kind="conv", seed=0):
    """A minicnn layer and a torch layer with the same (distinct-valued) weights."""
    rs = np.random.default_rng(seed)
    if kind == "conv":
        m, t = nn.Conv2d(3, 6, 3), torch.nn.Conv2d(3, 6, 3)
    else:
        m, t = nn.Linear(7, 5), torch.nn.Linear(7, 5)
    w = rs.standard_normal(m.weight.shape).astype(np.float32)
    m.weight.array[...] = w
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(w))
    return m, t


def _mask(m, name="weight"):
    return getattr(m, name + "_mask").numpy()


@needs_torch
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 1.0, 7, 0])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_l1_unstructured_matches_torch(kind, amount):
    m, t = _pair(kind)
    prune.l1_unstructured(m, "weight", amount)
    tprune.l1_unstructured(t, "weight", amount)
    np.testing.assert_array_equal(_mask(m), t.weight_mask.numpy())
    np.testing.assert_allclose(m.weight.numpy(), t.weight.detach().numpy())


@needs_torch
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("n", [1, 2, float("inf")])
@pytest.mark.parametrize("amount", [0.5, 2, 0.34])
def test_ln_structured_matches_torch(dim, n, amount):
    m, t = _pair("conv", seed=3)
    prune.ln_structured(m, "weight", amount, n=n, dim=dim)
    tprune.ln_structured(t, "weight", amount, n=n, dim=dim)
    np.testing.assert_array_equal(_mask(m), t.weight_mask.numpy())


@needs_torch
@pytest.mark.parametrize("amount", [0.5, 0.9, 100])
def test_global_unstructured_matches_torch(amount):
    (c, tc), (l, tl) = _pair("conv", 1), _pair("linear", 2)
    prune.global_unstructured([(c, "weight"), (l, "weight")], pruning_method=prune.L1Unstructured,
                              amount=amount)
    tprune.global_unstructured([(tc, "weight"), (tl, "weight")], pruning_method=tprune.L1Unstructured,
                               amount=amount)
    np.testing.assert_array_equal(_mask(c), tc.weight_mask.numpy())
    np.testing.assert_array_equal(_mask(l), tl.weight_mask.numpy())


@needs_torch
def test_composition_matches_torch():
    """l1 then l1, then structured on dims 0 and 1, then global: every step equal to torch."""
    (m, t), (l, tl) = _pair("conv", 4), _pair("linear", 5)
    steps = [
        (lambda a: prune.l1_unstructured(a, "weight", 0.3), lambda a: tprune.l1_unstructured(a, "weight", 0.3)),
        (lambda a: prune.l1_unstructured(a, "weight", 5), lambda a: tprune.l1_unstructured(a, "weight", 5)),
        (lambda a: prune.ln_structured(a, "weight", 0.34, n=2, dim=0),
         lambda a: tprune.ln_structured(a, "weight", 0.34, n=2, dim=0)),
        (lambda a: prune.ln_structured(a, "weight", 1, n=1, dim=1),
         lambda a: tprune.ln_structured(a, "weight", 1, n=1, dim=1)),
    ]
    for ours, theirs in steps:
        ours(m)
        theirs(t)
        np.testing.assert_array_equal(_mask(m), t.weight_mask.numpy())
    prune.l1_unstructured(l, "weight", 0.4)
    tprune.l1_unstructured(tl, "weight", 0.4)
    prune.global_unstructured([(m, "weight"), (l, "weight")], prune.L1Unstructured, amount=0.5)
    tprune.global_unstructured([(t, "weight"), (tl, "weight")], tprune.L1Unstructured, amount=0.5)
    np.testing.assert_array_equal(_mask(m), t.weight_mask.numpy())
    np.testing.assert_array_equal(_mask(l), tl.weight_mask.numpy())
    assert len(m._forward_pre_hooks) == 1                  # one container, as torch


@needs_torch
def test_state_dict_keys_match_torch():
    m, t = _pair("conv")
    prune.l1_unstructured(m, "weight", 0.5)
    tprune.l1_unstructured(t, "weight", 0.5)
    assert list(m.state_dict()) == list(t.state_dict()) == ["bias", "weight_orig", "weight_mask"]


def test_l1_hand_worked():
    m = nn.Linear(3, 2, bias=False)
    m.weight.array[...] = np.array([[0.5, -0.1, 3.0], [-2.0, 0.2, 0.05]], np.float32)
    prune.l1_unstructured(m, "weight", amount=0.5)            # round(3.0) = 3 smallest |w|
    np.testing.assert_array_equal(m.weight_mask.numpy(), [[1, 0, 1], [1, 0, 0]])
    prune.l1_unstructured(m, "weight", amount=1)              # the smallest of the 3 left: 0.5
    np.testing.assert_array_equal(m.weight_mask.numpy(), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(m.weight.numpy(), [[0, 0, 3.0], [-2.0, 0, 0]])
    assert round(2.5) == 2                                    # banker's rounding, as torch


def test_ln_structured_hand_worked():
    m = nn.Linear(2, 3, bias=False)                           # rows = output neurons (dim 0)
    m.weight.array[...] = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, -6.0]], np.float32)  # L2: 5, 1.41, 6
    prune.ln_structured(m, "weight", amount=1, n=2, dim=0)
    np.testing.assert_array_equal(m.weight_mask.numpy(), [[1, 1], [0, 0], [1, 1]])
    prune.ln_structured(m, "weight", amount=1, n=1, dim=0)    # of the live rows, L1 7 vs 6
    np.testing.assert_array_equal(m.weight_mask.numpy(), [[1, 1], [0, 0], [0, 0]])


def test_reparametrization_and_masked_gradients(cpu_backend):
    m = nn.Conv2d(2, 4, 3).double()
    w_before = m.weight
    prune.l1_unstructured(m, "weight", 0.6)
    assert m.weight_orig is w_before and isinstance(m.weight_orig, nn.Parameter)
    assert "weight" not in dict(m.named_parameters()) and "weight_mask" in dict(m.named_buffers())
    assert prune.is_pruned(m) and prune.is_pruned(nn.Sequential(m))
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 2, 6, 6)), dtype="float64")
    m(x).sum().backward()
    g, mask = m.weight_orig.grad.numpy(), m.weight_mask.numpy()
    assert np.all(g[mask == 0] == 0) and np.all(g[mask == 1] != 0)
    # the forward pass uses orig * mask, recomputed after the orig changes
    m.weight_orig.array = m.weight_orig.array * 2
    ref = mc.functional.conv2d(x, mc.tensor(m.weight_orig.numpy() * mask, dtype="float64"), m.bias)
    np.testing.assert_allclose(m(x).numpy(), ref.numpy())
    mc.gradcheck(m, [x])                                      # gradient to weight_orig is exact


def test_remove_makes_it_permanent():
    m = nn.Linear(6, 4)
    prune.random_unstructured(m, "weight", amount=10)
    mask = m.weight_mask.numpy()
    assert (mask == 0).sum() == 10
    w = m.weight.numpy()
    prune.remove(m, "weight")
    assert isinstance(m.weight, nn.Parameter) and not prune.is_pruned(m)
    assert list(m.state_dict()) == ["bias", "weight"]
    np.testing.assert_array_equal(m.weight.numpy(), w)
    assert (m.weight.numpy() == 0).sum() >= 10
    with pytest.raises(ValueError, match="has to be pruned before"):
        prune.remove(m, "weight")


def test_random_unstructured_is_seeded_and_composes():
    masks = []
    for _ in range(2):
        mc.manual_seed(7)
        m = nn.Linear(10, 10)
        prune.random_unstructured(m, "weight", 0.5)
        masks.append(m.weight_mask.numpy())
        prune.random_unstructured(m, "weight", 0.5)
        assert m.weight_mask.numpy().sum() == 25                  # half of the 50 left
        assert np.all(m.weight_mask.numpy() <= masks[-1])         # only removes
    np.testing.assert_array_equal(*masks)


def test_sparsity_report():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    prune.l1_unstructured(model[0], "weight", 10)
    rep = prune.sparsity(model)
    assert rep["0.weight"] == 0.5 and rep["2.weight"] == 0.0
    assert rep.global_sparsity == 10 / 30
    assert "0.weight" in str(rep) and "33.33%" in str(rep)


@pytest.mark.parametrize("amount", [-1, 1.5, -0.1, "half", None, True])
def test_bad_amount_is_a_clear_error(amount):
    m = nn.Linear(3, 3)
    with pytest.raises((ValueError, TypeError), match="amount"):
        prune.l1_unstructured(m, "weight", amount)
    assert not prune.is_pruned(m) and "weight" in dict(m.named_parameters())


def test_other_errors():
    m = nn.Linear(3, 3)
    with pytest.raises(AttributeError, match="no parameter named 'wieght'.*weight, bias"):
        prune.l1_unstructured(m, "wieght", 0.5)
    with pytest.raises(ValueError, match="smaller than the number of parameters"):
        prune.l1_unstructured(m, "weight", 10)
    with pytest.raises(ValueError, match="multidimensional"):
        prune.ln_structured(m, "bias", 1, n=2, dim=0)
    assert not prune.is_pruned(m)                               # failed calls changed nothing
    with pytest.raises(TypeError, match="unstructured"):
        prune.global_unstructured([(m, "weight")], prune.LnStructured, amount=0.5, n=2, dim=0)


@needs_torch
def test_fixed_mask_matches_torch():
    """A random mask drawn once, applied with custom_from_mask after l1 pruning, as torch composes it."""
    m, t = _pair("linear", 6)
    fixed = (np.random.default_rng(9).random(m.weight.shape) > 0.4).astype(np.float32)
    prune.l1_unstructured(m, "weight", 0.3)
    tprune.l1_unstructured(t, "weight", 0.3)
    prune.custom_from_mask(m, "weight", fixed)
    tprune.custom_from_mask(t, "weight", torch.from_numpy(fixed))
    np.testing.assert_array_equal(_mask(m), t.weight_mask.numpy())


def test_global_hand_worked():
    """One threshold over two layers: the 3 smallest |w| of all 6 weights go, wherever they are."""
    a, b = nn.Linear(2, 1, bias=False), nn.Linear(4, 1, bias=False)
    a.weight.array[...] = [[0.1, 5.0]]
    b.weight.array[...] = [[0.2, 0.3, 4.0, -0.05]]
    prune.global_unstructured([(a, "weight"), (b, "weight")], prune.L1Unstructured, amount=0.5)
    np.testing.assert_array_equal(a.weight_mask.numpy(), [[0, 1]])
    np.testing.assert_array_equal(b.weight_mask.numpy(), [[0, 1, 1, 0]])   # 0.1, -0.05, 0.2 go
    assert prune.sparsity(nn.Sequential(a, b)).global_sparsity == 0.5
