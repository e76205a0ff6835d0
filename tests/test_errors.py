"""Bad input raises an error that says what was expected and what was given."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn


def z(*shape, dtype=None):
    return mc.tensor(np.zeros(shape), dtype=dtype)


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.conv2d(z(1, 28, 28), z(4, 1, 3, 3)), ValueError,
     r"expected a 4-D input \(N, C, H, W\), got shape \(1, 28, 28\)"),
    (lambda: F.conv2d(z(1, 3, 8, 8), z(4, 3, 3)), ValueError, r"4-D weight .* got shape \(4, 3, 3\)"),
    (lambda: F.conv2d(z(1, 3, 8, 8), z(4, 2, 3, 3)), ValueError,
     r"input has 3 channels but the weight of shape \(4, 2, 3, 3\) with groups=1 expects 2"),
    (lambda: F.conv2d(z(1, 3, 8, 8), z(4, 1, 3, 3), groups=2), ValueError,
     r"groups=2 must divide both the input channels \(3\)"),
    (lambda: F.conv2d(z(1, 4, 8, 8), z(3, 2, 3, 3), groups=2), ValueError,
     r"groups=2 must divide both .* output channels \(3\)"),
    (lambda: F.conv2d(z(1, 1, 4, 4), z(1, 1, 7, 7)), ValueError,
     r"kernel spans 7 pixels along the height .* padded input has only 4"),
    (lambda: F.conv2d(z(1, 1, 4, 4), z(1, 1, 3, 3), dilation=3), ValueError,
     r"kernel spans 7 pixels .* \(kernel 3, dilation 3\)"),
    (lambda: F.conv2d(z(1, 1, 8, 8), z(1, 1, 3, 3), stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: F.conv2d(z(1, 1, 8, 8), z(1, 1, 3, 3), stride=-2), ValueError, r"stride must be >= 1, got -2"),
    (lambda: F.conv2d(z(1, 1, 8, 8), z(1, 1, 3, 3), padding=-1), ValueError, r"padding must be >= 0"),
    (lambda: F.conv2d(z(1, 1, 8, 8), z(1, 1, 3, 3), stride=1.5), TypeError, r"stride must be an int"),
    (lambda: F.conv2d(z(1, 1, 8, 8), z(2, 1, 3, 3), z(3)), ValueError,
     r"expected a bias of shape \(2,\), got \(3,\)"),
    (lambda: F.conv2d(z(1, 1, 8, 8), z(1, 1, 3, 3, dtype="float64")), TypeError,
     r"input is float32 but weight is float64"),
    (lambda: F.max_pool2d(z(1, 1, 2, 2), 3), ValueError, r"kernel spans 3 pixels .* has only 2"),
    (lambda: F.max_pool2d(z(1, 1, 8, 8), 2, padding=2), ValueError, r"padding \(2, 2\) must be at most half"),
    (lambda: F.avg_pool2d(z(8, 8), 2), ValueError, r"expected a 4-D input .* got shape \(8, 8\)"),
    (lambda: F.max_pool2d(z(1, 1, 8, 8), 0), ValueError, r"kernel_size must be >= 1, got 0"),
    (lambda: F.adaptive_avg_pool2d(z(1, 1, 8, 8), 0), ValueError, r"output_size must be positive"),
    (lambda: F.cross_entropy(z(4, 10), mc.tensor([1, 2, 3, 10])), IndexError,
     r"target class 10 is out of range for 10 classes"),
    (lambda: F.cross_entropy(z(4, 10), mc.tensor([1, -1, 3, 0])), IndexError, r"target class -1 is out of range"),
    (lambda: F.cross_entropy(z(4, 10), mc.tensor([1, 2, 3])), ValueError,
     r"batch size mismatch: input has 4 rows but target has 3 labels"),
    (lambda: F.cross_entropy(z(4, 10), mc.tensor([1.0, 2.0, 3.0, 4.0])), TypeError, r"integer class indices"),
    (lambda: F.cross_entropy(z(4, 10, 2), mc.tensor([1, 2, 3, 4])), ValueError, r"\(N, num_classes\)"),
    (lambda: F.cross_entropy(z(4, 10), mc.tensor([1, 2, 3, 4]), reduction="avg"), ValueError,
     r"reduction must be one of"),
    (lambda: F.nll_loss(z(2, 3), mc.tensor([0, 3])), IndexError, r"target class 3 is out of range for 3"),
    (lambda: F.mse_loss(z(2, 3), z(3, 2)), ValueError, r"input has shape \(2, 3\) but target has \(3, 2\)"),
    (lambda: F.linear(z(2, 5), z(3, 4)), ValueError, r"input has 5 features .* expects 4"),
    (lambda: F.batch_norm(z(2, 3, 4), None, None, training=True), ValueError, r"2-D \(N, C\) or 4-D"),
    (lambda: F.batch_norm(z(1, 3), None, None, training=True), ValueError, r"more than one value per channel"),
    (lambda: F.batch_norm(z(2, 3), z(4), z(4), training=False), ValueError,
     r"running_mean should have shape \(3,\) .* got \(4,\)"),
    (lambda: F.softmax(z(2, 3), dim=2), ValueError, r"dim 2 is out of range for a tensor with 2 dimensions"),
    (lambda: F.gelu(z(2), approximate="fast"), ValueError, r"'none' or 'tanh'"),
    (lambda: z(2, 3) @ z(2, 3), ValueError, r"matmul: shape mismatch \(2, 3\) @ \(2, 3\)"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_layer_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected a 4-D input"):
        nn.BatchNorm2d(3)(z(2, 3))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): input has 4 channels, expected 3"):
        nn.BatchNorm1d(3)(z(2, 4))
    with pytest.raises(ValueError, match=r"groups=2 must divide in_channels \(3\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(TypeError, match=r"Sequential: argument 1 is a int"):
        nn.Sequential(nn.ReLU(), 3)
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\]"):
        nn.Dropout(-0.1)


def test_unknown_backend_lists_the_available_ones():
    before = mc.get_backend()
    with pytest.raises(mc.BackendError, match=r"unknown backend 'tensorflow'; expected one of cupy, numba, numpy"):
        mc.set_backend("tensorflow")
    assert mc.get_backend() == before                           # unchanged by the failure


def test_nan_propagates_rather_than_hiding():
    x = mc.tensor([[np.nan, 1.0]], requires_grad=True)
    y = F.relu(x).sum()
    assert np.isnan(F.softmax(x).numpy()).all()
    y.backward()
