"""Small cases worked out by hand: the numbers themselves, not only gradients."""
import math

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn


@pytest.mark.tutorial02
def test_conv_3x3_kernel_on_4x4_input(backend):
    # x[r, c] = 4r + c;  out[i, j] = x[i, j] + 2 x[i, j+1] + x[i+1, j+1] - x[i+2, j+2]
    x = mc.tensor(np.arange(16.0).reshape(1, 1, 4, 4), requires_grad=True, dtype="float64")
    w = mc.tensor([[[[1, 2, 0], [0, 1, 0], [0, 0, -1]]]], requires_grad=True, dtype="float64")
    y = F.conv2d(x, w)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[-3, 0], [9, 12]])
    y.sum().backward()
    # dW[a, b] = sum of the 2x2 block of x at (a, b) = 16a + 4b + 10
    np.testing.assert_array_equal(w.grad.numpy()[0, 0], [[10, 14, 18], [26, 30, 34], [42, 46, 50]])
    # dx[r, c] = sum of the kernel taps that touch (r, c) over the 4 windows
    np.testing.assert_array_equal(x.grad.numpy()[0, 0],
                                  [[1, 3, 2, 0], [1, 4, 3, 0], [0, 1, 0, -1], [0, 0, -1, -1]])


@pytest.mark.tutorial02
def test_conv_with_padding_stride_and_bias(backend):
    x = mc.tensor(np.ones((1, 1, 3, 3)), dtype="float64")
    w = mc.tensor(np.ones((1, 1, 3, 3)), dtype="float64")
    # padding 1, stride 2: the four corner windows each see a 2x2 patch of ones
    y = F.conv2d(x, w, mc.tensor([0.5], dtype="float64"), stride=2, padding=1)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[4.5, 4.5], [4.5, 4.5]])


@pytest.mark.tutorial02
def test_depthwise_conv_keeps_channels_apart(backend):
    x = mc.tensor(np.stack([np.full((3, 3), 1.0), np.full((3, 3), 10.0)])[None], dtype="float64")
    w = mc.tensor(np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), -1.0)]), dtype="float64")
    y = F.conv2d(x, w, groups=2).numpy()[0]
    np.testing.assert_array_equal(y[0], np.full((2, 2), 4.0))
    np.testing.assert_array_equal(y[1], np.full((2, 2), -40.0))


@pytest.mark.tutorial02
def test_dilated_conv_skips_pixels(backend):
    x = mc.tensor(np.arange(25.0).reshape(1, 1, 5, 5), dtype="float64")
    w = mc.tensor(np.ones((1, 1, 2, 2)), dtype="float64")
    # dilation 2: taps at (0,0), (0,2), (2,0), (2,2) -> 4 * x[i+1, j+1]
    y = F.conv2d(x, w, dilation=2).numpy()[0, 0]
    expected = np.array([[0 + 2 + 10 + 12, 1 + 3 + 11 + 13, 2 + 4 + 12 + 14]])
    np.testing.assert_array_equal(y[0], expected[0])


@pytest.mark.tutorial03
def test_max_pool_2x2_with_ties_routes_to_the_first_maximum(backend):
    x = mc.tensor([[[[1, 1, 2, 0],
                     [0, 1, 2, 2],
                     [3, 3, 0, 0],
                     [3, 3, 0, 1]]]], requires_grad=True, dtype="float64")
    y = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[1, 2], [3, 1]])
    y.backward(mc.tensor([[[[1, 2], [3, 4]]]], dtype="float64"))
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[1, 0, 2, 0],
                                                          [0, 0, 0, 0],
                                                          [3, 0, 0, 0],
                                                          [0, 0, 0, 4]])


@pytest.mark.tutorial03
def test_overlapping_max_pool_sums_gradients(backend):
    x = mc.tensor([[[[0, 0, 0], [0, 9, 0], [0, 0, 0]]]], requires_grad=True, dtype="float64")
    y = F.max_pool2d(x, 2, stride=1)               # the centre wins all four windows
    np.testing.assert_array_equal(y.numpy()[0, 0], [[9, 9], [9, 9]])
    y.sum().backward()
    assert x.grad.numpy()[0, 0, 1, 1] == 4 and x.grad.numpy().sum() == 4


@pytest.mark.parametrize("count_include_pad,expected", [(True, [[0.25, 0.5], [0.75, 1.0]]),
                                                        (False, [[1, 2], [3, 4]])])
@pytest.mark.tutorial03
def test_avg_pool_padding_counts(backend, count_include_pad, expected):
    x = mc.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True, dtype="float64")
    y = F.avg_pool2d(x, 2, stride=2, padding=1, count_include_pad=count_include_pad)
    np.testing.assert_allclose(y.numpy()[0, 0], expected)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy()[0, 0], np.full((2, 2), 0.25 if count_include_pad else 1.0))


@pytest.mark.tutorial03
def test_adaptive_avg_pool_bins_like_pytorch():
    x = mc.tensor(np.arange(5.0).reshape(1, 1, 1, 5), dtype="float64")
    # 5 -> 3 bins: [0, 2), [1, 4), [3, 5)
    y = F.adaptive_avg_pool2d(x, (1, 3)).numpy()[0, 0, 0]
    np.testing.assert_allclose(y, [0.5, 2.0, 3.5])


@pytest.mark.tutorial05
def test_batch_norm_by_hand_and_running_statistics(backend):
    bn = nn.BatchNorm1d(2, eps=0.0).double()
    x = mc.tensor([[1.0, 2.0], [3.0, 6.0]], dtype="float64")
    y = bn(x).numpy()
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]])
    # running stats: 0.9 * initial + 0.1 * batch, with the unbiased variance (2 and 8)
    np.testing.assert_allclose(bn.running_mean.numpy(), [0.2, 0.4])
    np.testing.assert_allclose(bn.running_var.numpy(), [0.9 + 0.2, 0.9 + 0.8])
    assert bn.num_batches_tracked.item() == 1
    bn.eval()
    y_eval = bn(x).numpy()
    np.testing.assert_allclose(y_eval, (x.numpy() - [0.2, 0.4]) / np.sqrt([1.1, 1.7]))


@pytest.mark.tutorial00
def test_cross_entropy_by_hand(backend):
    z = mc.tensor(np.log([[1.0, 2.0, 5.0]]), requires_grad=True, dtype="float64")   # p = 1/8, 2/8, 5/8
    loss = F.cross_entropy(z, mc.tensor([2]))
    assert loss.item() == pytest.approx(-math.log(0.625))
    loss.backward()
    np.testing.assert_allclose(z.grad.numpy(), [[0.125, 0.25, -0.375]])      # p - onehot
    z.zero_grad()
    smooth = F.cross_entropy(z, mc.tensor([2]), label_smoothing=0.3)          # q = .1, .1, .8
    expected = -(0.1 * math.log(0.125) + 0.1 * math.log(0.25) + 0.8 * math.log(0.625))
    assert smooth.item() == pytest.approx(expected)
    smooth.backward()
    np.testing.assert_allclose(z.grad.numpy(), [[0.025, 0.15, -0.175]])      # p - q


@pytest.mark.tutorial03
def test_activation_values():
    x = mc.tensor([-1.0, 0.0, 1.0], dtype="float64")
    np.testing.assert_allclose(F.relu(x).numpy(), [0, 0, 1])
    np.testing.assert_allclose(F.leaky_relu(x, 0.1).numpy(), [-0.1, 0, 1])
    np.testing.assert_allclose(F.sigmoid(x).numpy(), [1 / (1 + math.e), 0.5, 1 / (1 + 1 / math.e)])
    np.testing.assert_allclose(F.tanh(x).numpy(), np.tanh([-1, 0, 1]))
    np.testing.assert_allclose(F.silu(x).numpy()[2], 0.7310585786300049)
    np.testing.assert_allclose(F.mish(x).numpy()[2], 0.8650983882673103)
    np.testing.assert_allclose(F.gelu(x).numpy()[2], 0.8413447460685429)
    np.testing.assert_allclose(F.gelu(x, approximate="tanh").numpy()[2], 0.8411919906082768)
    np.testing.assert_allclose(F.softmax(mc.tensor([[0.0, math.log(3.0)]], dtype="float64")).numpy(),
                               [[0.25, 0.75]])


def test_mse_smooth_l1_bce_by_hand():
    x = mc.tensor([0.0, 2.0, -3.0], dtype="float64")
    t = mc.tensor([0.5, 0.0, 0.0], dtype="float64")
    assert F.mse_loss(x, t).item() == pytest.approx((0.25 + 4 + 9) / 3)
    # |d| = .5 -> .5*.25 = .125; |d| = 2 -> 1.5; |d| = 3 -> 2.5
    assert F.smooth_l1_loss(x, t).item() == pytest.approx((0.125 + 1.5 + 2.5) / 3)
    bce = F.binary_cross_entropy_with_logits(mc.tensor([0.0], dtype="float64"), mc.tensor([1.0], dtype="float64"))
    assert bce.item() == pytest.approx(math.log(2))


@pytest.mark.tutorial01
def test_linear_by_hand():
    x = mc.tensor([[1.0, 2.0]], dtype="float64")
    w = mc.tensor([[1.0, 0.0], [1.0, -1.0], [0.5, 0.5]], dtype="float64")
    b = mc.tensor([0.0, 1.0, -1.0], dtype="float64")
    np.testing.assert_allclose(F.linear(x, w, b).numpy(), [[1.0, 0.0, 0.5]])


@pytest.mark.tutorial03
def test_relu_of_infinities_matches_pytorch(backend):
    x = mc.tensor([-np.inf, -1.0, 0.0, 2.0, np.inf])
    np.testing.assert_array_equal(F.relu(x).numpy(), [0, 0, 0, 2, np.inf])


@pytest.mark.tutorial09
def test_cpu_backends_tune_malloc_unless_told_not_to(monkeypatch):
    from minicnn.backend import keep_freed_memory
    monkeypatch.setenv("MINICNN_TUNE_MALLOC", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MINICNN_TUNE_MALLOC")
    assert keep_freed_memory() in (True, False)     # True on glibc Linux; never raises
