"""Dropout's statistics, and the output-size formula checked with hypothesis."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn


# -- dropout --------------------------------------------------------------------------
@pytest.mark.tutorial05
def test_dropout_is_identity_in_eval():
    x = mc.tensor(np.random.default_rng(0).standard_normal((50, 40)))
    layer = nn.Dropout(0.5).eval()
    assert layer(x) is x
    assert F.dropout(x, 0.5, training=False) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.tutorial05
def test_dropout_keeps_about_1_minus_p_and_preserves_the_mean(p):
    x = mc.tensor(np.ones((400, 500)))
    y = F.dropout(x, p).numpy()
    kept = (y != 0).mean()
    assert kept == pytest.approx(1 - p, abs=0.01)                  # 200,000 draws: sd ~ 0.001
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-6)  # inverted scaling
    assert y.mean() == pytest.approx(1.0, abs=0.02)                # E[y] = x


@pytest.mark.tutorial05
def test_dropout_same_seed_same_mask_and_backward_uses_it():
    x = mc.tensor(np.ones((20, 30)), requires_grad=True)
    mc.manual_seed(42)
    a = F.dropout(x, 0.5)
    mc.manual_seed(42)
    b = F.dropout(x, 0.5)
    c = F.dropout(x, 0.5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(b.numpy(), c.numpy())
    a.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), a.numpy())       # dx = mask (x is ones)


@pytest.mark.tutorial05
def test_dropout_edge_probabilities():
    x = mc.tensor(np.ones((3, 3)))
    assert F.dropout(x, 0.0) is x
    assert (F.dropout(x, 1.0).numpy() == 0).all()
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        F.dropout(x, 1.5)


# -- output sizes: property tests -------------------------------------------------------
@st.composite
def conv_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    span = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    hw = [draw(st.integers(max(1, span[i] - 2 * p[i]), span[i] + 6)) for i in range(2)]
    groups = draw(st.sampled_from([1, 2]))
    return k, s, p, d, hw, groups


@settings(max_examples=60, deadline=None)
@given(conv_configs(), st.integers(1, 3))
@pytest.mark.tutorial02
def test_conv_output_shape_matches_formula(config, n):
    k, s, p, d, (H, W), g = config
    x = mc.tensor(np.zeros((n, 2, H, W)))
    w = mc.tensor(np.zeros((4, 2 // g, *k)))
    y = F.conv2d(x, w, stride=s, padding=p, dilation=d, groups=g)
    expected = tuple((size + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, size in enumerate((H, W)))
    assert y.shape == (n, 4) + expected
    assert F.conv_output_shape((H, W), k, s, p, d) == expected


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.data())
@pytest.mark.tutorial03
def test_pool_output_shape_matches_formula(kh, kw, stride, data):
    ph, pw = data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kw // 2))
    H = data.draw(st.integers(max(1, kh - 2 * ph), 12))
    W = data.draw(st.integers(max(1, kw - 2 * pw), 12))
    x = mc.tensor(np.random.default_rng(0).standard_normal((1, 2, H, W)))
    for pool in (F.max_pool2d, F.avg_pool2d):
        y = pool(x, (kh, kw), stride, (ph, pw))
        assert y.shape == (1, 2, (H + 2 * ph - kh) // stride + 1, (W + 2 * pw - kw) // stride + 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))
@pytest.mark.tutorial03
def test_adaptive_pool_output_shape_and_mean_preserved_when_dividing(H, W, oh, ow):
    x = mc.tensor(np.random.default_rng(1).standard_normal((1, 1, H, W)), dtype="float64")
    y = F.adaptive_avg_pool2d(x, (oh, ow))
    assert y.shape == (1, 1, oh, ow)
    if H % oh == 0 and W % ow == 0:              # equal bins: the overall mean is unchanged
        assert y.numpy().mean() == pytest.approx(x.numpy().mean())
