"""The fused Conv2d -> ReLU -> MaxPool2d (functional/fused.py, nn/fusion.py) computes what
the three layers compute.

1. The reference kernels: ``bias_relu_max_pool2d_forward`` equals max_pool2d(relu(y + b))
   written with the unfused reference kernels, and its backward equals relu's and the pool's
   backward chained, on drawn shapes, ties included.
2. Every backend's fused kernels equal numpy_ref's (hypothesis shapes; the 2x2 / stride-2
   fast path of numba included).
3. ``conv2d_relu_max_pool2d`` passes gradcheck in float64 on every backend, over conv and
   pool options.
4. A model: ``mc.fuse(model)`` is a new model that prints its ConvReLUMaxPool2d modules,
   shares the original's parameters (same state_dict), leaves the original as it was, and
   gives equal outputs, equal gradients and the same training run (also through ``fit``);
   a hooked layer is not fused, nested models are; Sequential itself never fuses.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import models
from minicnn.backend import BackendError, load_backend, to_host
from minicnn.functional.fused import conv2d_relu_max_pool2d
from minicnn.kernels import numpy_ref as ref

pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def fused_cases(draw, integer_valued=False):
    """y (C, N, H, W), bias or None, window, stride; the window fits, no padding."""
    c, n = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh, 9)), draw(st.integers(kw, 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):                        # the fast path's shape, often
        kh = kw = 2
        stride = (2, 2)
        h, w = max(h, 2), max(w, 2)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer_valued:                             # ties, and many windows <= 0
        y = rng.integers(-2, 3, (c, n, h, w)).astype(dtype)
        bias = rng.integers(-1, 2, c).astype(dtype)
    else:
        y = rng.standard_normal((c, n, h, w)).astype(dtype)
        bias = rng.standard_normal(c).astype(dtype)
    return y, (bias if draw(st.booleans()) else None), kh, kw, stride


def _unfused_reference(y, bias, kh, kw, stride):
    """max_pool2d(relu(y + b)) with the unfused reference kernels, in (N, C, ...) order."""
    z = y if bias is None else y + bias.reshape(-1, 1, 1, 1)
    x = np.ascontiguousarray(z.transpose(1, 0, 2, 3))            # (N, C, H, W)
    r = np.maximum(x, 0)
    p, arg = ref.max_pool2d_forward(r, kh, kw, stride, (0, 0))
    return x, r, p, arg


# -- 1. the specification against the unfused layers --------------------------------------------
def _check_reference(case):
    y, bias, kh, kw, stride = case
    x, r, p_ref, arg_ref = _unfused_reference(y, bias, kh, kw, stride)
    p, arg = ref.bias_relu_max_pool2d_forward(y, bias, kh, kw, stride)
    np.testing.assert_array_equal(p, p_ref)
    # the winner where the window's max is positive; -1 (no gradient) where relu clipped it
    positive = p_ref > 0
    np.testing.assert_array_equal(arg[positive], arg_ref[positive])
    assert (arg[~positive] == -1).all()

    gp = np.random.default_rng(5).standard_normal(p.shape).astype(y.dtype)
    # unfused backward: the pool routes gp to its winner, relu passes it where x > 0
    dr = ref.max_pool2d_backward(gp, arg_ref, x.shape, kh, kw, stride, (0, 0))
    dx = dr * (x > 0)
    dy = ref.bias_relu_max_pool2d_backward(gp, arg, y.shape, kh, kw, stride)
    assert dy.shape == y.shape and dy.dtype == y.dtype
    np.testing.assert_array_equal(dy, dx.transpose(1, 0, 2, 3))


@SETTINGS
@given(case=fused_cases())
def test_reference_equals_relu_then_max_pool(case):
    _check_reference(case)


@SETTINGS
@given(case=fused_cases(integer_valued=True))
def test_reference_with_ties_and_clipped_windows(case):
    _check_reference(case)


def test_hand_computed_window():
    """One channel, one 2x2 window per row of this 2x4 plane, bias 1."""
    y = np.array([[[[1., 3., -5., -2.],
                    [3., 2., -4., -3.]]]])                   # (C=1, N=1, 2, 4)
    p, arg = ref.bias_relu_max_pool2d_forward(y, np.array([1.]), 2, 2, (2, 2))
    np.testing.assert_array_equal(p, [[[[4., 0.]]]])         # relu(max(y) + 1): 4, and relu(-1) = 0
    np.testing.assert_array_equal(arg, [[[[1, -1]]]])        # tap 1 (row 0, col 1) wins ties with tap 2
    dy = ref.bias_relu_max_pool2d_backward(np.array([[[[10., 20.]]]]), arg, y.shape, 2, 2, (2, 2))
    np.testing.assert_array_equal(dy, [[[[0., 10., 0., 0.], [0., 0., 0., 0.]]]])


# -- 2. every backend's kernels against the specification ----------------------------------------
@pytest.fixture(params=["numba", "simulator", "cupy"], scope="module")
def kernel_backend(request):
    try:
        xp, kernels = load_backend(request.param)
    except BackendError as e:
        if request.param != "cupy":
            raise
        pytest.skip(f"{request.param} backend unavailable here: {e}")
    return xp, kernels


def _on(kernel_backend, name, *args):
    xp, kernels = kernel_backend
    args = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    out = getattr(kernels, name)(*args)
    return tuple(to_host(o) for o in out) if isinstance(out, tuple) else to_host(out)


def _check_backend(kernel_backend, case):
    y, bias, kh, kw, stride = case
    p_ref, arg_ref = ref.bias_relu_max_pool2d_forward(y, bias, kh, kw, stride)
    p, arg = _on(kernel_backend, "bias_relu_max_pool2d_forward", y, bias, kh, kw, stride)
    assert p.dtype == y.dtype and arg.dtype == arg_ref.dtype
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    gp = np.random.default_rng(6).standard_normal(p.shape).astype(y.dtype)
    dy_ref = ref.bias_relu_max_pool2d_backward(gp, arg_ref, y.shape, kh, kw, stride)
    dy = _on(kernel_backend, "bias_relu_max_pool2d_backward", gp, arg_ref, y.shape, kh, kw, stride)
    assert dy.shape == y.shape and dy.dtype == y.dtype
    eps = np.finfo(y.dtype).eps
    np.testing.assert_allclose(dy, dy_ref, rtol=40 * eps, atol=40 * eps)


@SETTINGS
@given(case=fused_cases())
def test_backend_kernels_match_the_reference(kernel_backend, case):
    _check_backend(kernel_backend, case)


@SETTINGS
@given(case=fused_cases(integer_valued=True))
def test_backend_kernels_match_the_reference_with_ties(kernel_backend, case):
    _check_backend(kernel_backend, case)


@pytest.mark.parametrize("shape", [(32, 4, 26, 26), (64, 3, 11, 11), (5, 2, 7, 9)])
def test_backend_kernels_on_the_reference_cnns_shapes(kernel_backend, shape):
    rs = np.random.default_rng(7)
    y = rs.standard_normal(shape).astype(np.float32)
    _check_backend(kernel_backend, (y, rs.standard_normal(shape[0]).astype(np.float32), 2, 2, (2, 2)))


# -- 3. gradcheck through the Function -----------------------------------------------------------
OPTIONS = [
    dict(),
    dict(stride=2, padding=1),
    dict(padding=1, pool_kernel_size=3, pool_stride=2),             # overlapping windows
    dict(dilation=2, pool_kernel_size=(2, 1)),
    dict(groups=2, pool_kernel_size=2, pool_stride=1),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck(backend, options, with_bias):
    rs = np.random.default_rng(8)
    x = mc.tensor(rs.standard_normal((2, 4, 9, 8)), requires_grad=True, dtype="float64")
    w = mc.tensor(rs.standard_normal((6, 4 // options.get("groups", 1), 3, 3)), requires_grad=True,
                  dtype="float64")
    b = mc.tensor(rs.standard_normal(6), requires_grad=True, dtype="float64") if with_bias else None
    inputs = (x, w, b) if with_bias else (x, w)

    def f(x, w, b=None):
        return conv2d_relu_max_pool2d(x, w, b, **options)
    assert mc.gradcheck(f, inputs)


def test_the_function_equals_the_three_functions(cpu_backend):
    rs = np.random.default_rng(9)
    x = mc.tensor(rs.standard_normal((3, 2, 10, 10)), dtype="float64")
    w = mc.tensor(rs.standard_normal((5, 2, 3, 3)), dtype="float64")
    b = mc.tensor(rs.standard_normal(5), dtype="float64")
    fused = conv2d_relu_max_pool2d(x, w, b, padding=1, pool_kernel_size=2)
    unfused = F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2)
    if cpu_backend == "numba":
        # the whole-layer kernel multiplies a chunk of images per BLAS call: the same dot
        # products, which BLAS may round differently for a matrix of another width
        np.testing.assert_allclose(fused.numpy(), unfused.numpy(), rtol=1e-14, atol=1e-14)
    else:
        np.testing.assert_array_equal(fused.numpy(), unfused.numpy())


def test_bad_arguments_are_named():
    x = mc.tensor(np.zeros((1, 1, 4, 4), np.float32))
    w = mc.tensor(np.zeros((2, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv2d_relu_max_pool2d: the kernel spans 3 .*output is \(2, 2\)"):
        conv2d_relu_max_pool2d(x, w, pool_kernel_size=3)
    with pytest.raises(ValueError, match="conv2d_relu_max_pool2d: expected a 4-D input"):
        conv2d_relu_max_pool2d(mc.tensor(np.zeros((4, 4), np.float32)), w)
    with pytest.raises(TypeError, match="pool_kernel_size"):
        conv2d_relu_max_pool2d(x, w, pool_kernel_size="2")


# -- 4. models: mc.fuse -------------------------------------------------------------------------
def _step(model, x, y):
    for p in model.parameters():
        p.grad = None
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.numpy().copy(), [p.grad.numpy().copy() for p in model.parameters()]


def _functions_in_graph(out):
    """The names of the Functions the graph behind ``out`` recorded."""
    kinds, stack = set(), [out._ctx]
    while stack:
        fn = stack.pop()
        if fn is not None:
            kinds.add(type(fn).__name__)
            stack.extend(t._ctx for t in fn.inputs if t is not None)
    return kinds


def test_fuse_prints_the_fused_modules_and_leaves_the_original_as_it_was():
    model = models.get_model("reference")
    before = repr(model)
    children = list(model.children())
    fast = mc.fuse(model)
    text = repr(fast)
    assert text.count("ConvReLUMaxPool2d(") == 2 and "MaxPool2d(kernel_size" not in text
    assert "ConvReLUMaxPool2d(1, 32, kernel_size=(3, 3), stride=(1, 1), pool_kernel_size=2, pool_stride=2)" in text
    assert fast is not model and type(fast) is type(model)
    assert repr(model) == before and list(model.children()) == children      # the very same modules
    assert isinstance(fast[0], nn.ConvReLUMaxPool2d) and nn.fuse is mc.fuse
    # shared: the fused module holds the conv's Parameter objects; unfused modules are the originals
    assert fast[0].weight is model[0].weight and fast[0].bias is model[0].bias
    assert fast._modules["7"] is model[7]
    assert [id(p) for p in fast.parameters()] == [id(p) for p in model.parameters()]


def test_fuse_keeps_the_state_dict_keys_and_arrays():
    model = models.get_model("reference-bn")
    fast = mc.fuse(model)
    ours, theirs = model.state_dict(), fast.state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        assert ours[k].array is theirs[k].array, k                        # the same arrays, not copies
    fast.load_state_dict(ours)                                          # checkpoints go both ways
    model.load_state_dict(theirs)


def test_a_model_with_nothing_to_fuse_comes_back_as_the_same_object():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, groups=1), nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten())
    model[0].register_forward_hook(lambda m, i, o: None)        # a hooked conv stays as it is
    assert mc.fuse(model) is model
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.LeakyReLU())          # no conv at all
    assert mc.fuse(plain) is plain
    with pytest.raises(TypeError, match="expected an nn.Module, got function"):
        mc.fuse(lambda x: x)


def test_fused_and_unfused_models_give_the_same_outputs_and_gradients(backend):
    mc.manual_seed(0)
    model = models.get_model("reference").eval()
    fast = mc.fuse(model)
    rs = np.random.default_rng(10)
    x = mc.tensor(rs.standard_normal((6, 1, 28, 28)).astype(np.float32))
    y = mc.tensor(np.arange(6) % 10)
    # the model's parameters require grad, so the graph is recorded even in eval mode
    assert "ConvReLUMaxPool2dFn" in _functions_in_graph(fast(x))
    kinds = _functions_in_graph(model(x))
    assert "ConvReLUMaxPool2dFn" not in kinds and "MaxPool2dFn" in kinds   # Sequential never fuses
    fused_out, fused_grads = _step(fast, x, y)
    plain_out, plain_grads = _step(model, x, y)
    # the same numbers into the same matrix products; BLAS (and numba's chunked kernel)
    # may block them differently
    np.testing.assert_allclose(fused_out, plain_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("options", OPTIONS[:3], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_gradcheck_of_the_fused_module(backend, options):
    conv_options = {k: v for k, v in options.items() if not k.startswith("pool")}
    pool = nn.MaxPool2d(options.get("pool_kernel_size", 2), options.get("pool_stride"))
    model = nn.Sequential(nn.Conv2d(4, 6, 3, **conv_options), nn.ReLU(), pool).double()
    fast = mc.fuse(model)
    assert isinstance(fast[0], nn.ConvReLUMaxPool2d)
    x = mc.tensor(np.random.default_rng(8).standard_normal((2, 4, 9, 8)), requires_grad=True, dtype="float64")
    assert mc.gradcheck(lambda x, w, b: fast(x), (x, fast[0].weight, fast[0].bias))


def test_training_runs_are_the_same_fused_or_not(cpu_backend):
    rs = np.random.default_rng(11)
    x = mc.tensor(rs.standard_normal((16, 1, 28, 28)), dtype="float64")
    y = mc.tensor(rs.integers(0, 10, 16))
    losses, weights = [], []
    for fuse in (True, False):
        mc.manual_seed(1)
        model = models.get_model("reference").double()
        net = mc.fuse(model) if fuse else model
        opt = mc.optim.Adam(model.parameters(), lr=1e-3)      # built on the original's parameters
        run = []
        for _ in range(4):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
        weights.append([p.numpy().copy() for p in model.parameters()])   # the original trained
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_fit_trains_the_same_weights_fused_or_not(cpu_backend):
    from minicnn.data import DataLoader
    from minicnn.train import fit

    from conftest import quadrant_images
    trained = []
    for fuse in (True, False):
        mc.manual_seed(2)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(64, 4))
        opt = mc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loader = DataLoader(quadrant_images(48), batch_size=16, shuffle=True)
        history = fit(model, opt, loader, epochs=2, val_loader=loader, progress=False,
                      log=lambda *a: None, fuse=fuse)
        assert isinstance(model[0], nn.Conv2d)                  # the model passed in is what fit returns
        trained.append((history["train_loss"], [p.numpy().copy() for p in model.parameters()]))
    # float32, the same numbers in a different order inside BLAS: equal to rounding
    np.testing.assert_allclose(trained[0][0], trained[1][0], rtol=1e-5)
    for a, b in zip(trained[0][1], trained[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_cli_accepts_no_fuse():
    from minicnn.cli import make_parser
    parser = make_parser()
    assert parser.parse_args(["train", "--no-fuse"]).no_fuse is True
    assert parser.parse_args(["train"]).no_fuse is False
    assert parser.parse_args(["evaluate", "x.ckpt", "--no-fuse"]).no_fuse is True


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_a_hooked_layer_is_never_fused(layer, kind):
    model = models.get_model("reference").eval()
    seen = []
    hook = (lambda m, inputs, output: seen.append(output.shape)) if kind == "forward" else \
        (lambda m, inputs: seen.append(inputs[0].shape))
    register = (model[layer].register_forward_hook if kind == "forward"
                else model[layer].register_forward_pre_hook)
    handle = register(hook)
    fast = mc.fuse(model)
    assert fast._modules[str(layer)] is model[layer]            # the hooked block stays three layers
    assert sum(isinstance(m, nn.ConvReLUMaxPool2d) for m in fast.modules()) == 1   # the other block fuses
    x = mc.tensor(np.zeros((2, 1, 28, 28), np.float32))
    fast(x)
    assert len(seen) == 1                                       # the hook ran
    handle.remove()
    assert sum(isinstance(m, nn.ConvReLUMaxPool2d) for m in mc.fuse(model).modules()) == 2


def test_nested_models_are_fused_and_share_their_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                nn.BatchNorm2d(4),
                nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 3))

        def forward(self, x):
            return self.head(self.features(x))

    model = Net()
    before = repr(model)
    fast = mc.fuse(model)
    assert type(fast) is Net and repr(model) == before
    assert repr(fast).count("ConvReLUMaxPool2d(") == 2
    assert isinstance(fast.features[0][0], nn.ConvReLUMaxPool2d)
    assert fast.features[1] is model.features[1]               # BatchNorm: the same module, one set of buffers
    assert fast.head is model.head                              # nothing fused below: not copied
    assert fast.features is not model.features and isinstance(model.features[0][0], nn.Conv2d)
    assert list(fast.state_dict()) == list(model.state_dict())
    x = mc.tensor(np.random.default_rng(3).standard_normal((2, 1, 8, 8)), dtype="float32")
    model.train()
    fast(x)                                                     # updates the shared running statistics
    assert float(model.features[1].running_mean.numpy().std()) > 0
    model.eval()
    fast.eval()
    np.testing.assert_allclose(fast(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_what_is_not_fused():
    def fused(*layers):
        return isinstance(mc.fuse(nn.Sequential(*layers))[0], nn.ConvReLUMaxPool2d)
    conv, relu, pool = nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)
    assert fused(conv, relu, pool)
    assert not fused(conv, nn.LeakyReLU(), pool)
    assert not fused(conv, relu, nn.MaxPool2d(3, padding=1))
    assert not fused(conv, relu, nn.AvgPool2d(2))
    assert not fused(conv, pool, relu)

    class MyConv(nn.Conv2d):                       # a subclass may compute something else
        pass
    assert not fused(MyConv(1, 2, 3), relu, pool)
    with pytest.raises(TypeError, match="expected an nn.ReLU, got LeakyReLU"):
        nn.ConvReLUMaxPool2d(conv, nn.LeakyReLU(), pool)
    with pytest.raises(TypeError, match="pattern 0 must be a pair"):
        mc.fuse(nn.Sequential(conv), patterns=[nn.Conv2d])


def test_sequential_forward_is_the_plain_loop():
    import inspect
    assert "fus" not in inspect.getsource(nn.Sequential.forward).lower()


def test_inference_records_no_graph():
    model = mc.fuse(models.get_model("reference").eval())
    with mc.no_grad():
        out = model(mc.tensor(np.zeros((2, 1, 28, 28), np.float32)))
    assert out._ctx is None and out.shape == (2, 10)


# -- 5. numba's whole layer, a chunk of images at a time, against the composition ----------------
# kernels/numba_cpu.py: conv2d_bias_relu_max_pool2d_forward/_backward do what ConvReLUMaxPool2dFn
# composes from numpy_ref's kernels (im2col -> W @ cols -> bias_relu_max_pool2d), per chunk of
# images, calling BLAS from Numba's threads. The composition below is the specification.
from minicnn.kernels import numba_cpu  # noqa: E402  (numba is a dependency: no skip)


@st.composite
def layer_cases(draw, integer_valued=False):
    """x, w, bias or None, conv options, pool window and stride, images per chunk."""
    n, c, cout = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pkh, pkw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pstride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):                        # the fast path's window, often
        pkh = pkw = 2
        pstride = (2, 2)
    # the smallest input whose conv output still holds one pool window
    h = draw(st.integers(max(1, (pkh - 1) * stride[0] + 1 + dilation[0] * (kh - 1) - 2 * padding[0]), 12))
    w_ = draw(st.integers(max(1, (pkw - 1) * stride[1] + 1 + dilation[1] * (kw - 1) - 2 * padding[1]), 12))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer_valued:                             # exact sums in any order: ties, clipped windows
        x = rng.integers(-2, 3, (n, c, h, w_)).astype(dtype)
        w = rng.integers(-2, 3, (cout, c, kh, kw)).astype(dtype)
        b = rng.integers(-2, 3, cout).astype(dtype)
    else:
        x = rng.standard_normal((n, c, h, w_)).astype(dtype)
        w = rng.standard_normal((cout, c, kh, kw)).astype(dtype)
        b = rng.standard_normal(cout).astype(dtype)
    per_chunk = draw(st.integers(1, n + 1))
    return x, w, (b if draw(st.booleans()) else None), (stride, padding, dilation, pkh, pkw, pstride), per_chunk


def _layer_by_composition(x, w, b, options, gp_seed=12):
    """Forward and backward of the layer with numpy_ref's kernels, as ConvReLUMaxPool2dFn composes them."""
    stride, padding, dilation, pkh, pkw, pstride = options
    N, Cout, (kh, kw) = x.shape[0], w.shape[0], w.shape[2:]
    cols = ref.im2col(x, kh, kw, stride, padding, dilation)
    oh = ref.conv_out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    ow = ref.conv_out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    w2 = w.reshape(Cout, -1)
    y = (w2 @ cols).reshape(Cout, N, oh, ow)
    p, arg = ref.bias_relu_max_pool2d_forward(y, b, pkh, pkw, pstride)
    gp = np.random.default_rng(gp_seed).standard_normal(p.shape).astype(x.dtype)
    if np.all(np.mod(x, 1) == 0):                  # integer-valued case: integer gradient too
        gp = np.round(gp * 2)
    dy = ref.bias_relu_max_pool2d_backward(gp, arg, y.shape, pkh, pkw, pstride).reshape(Cout, -1)
    dx = ref.col2im(w2.T @ dy, x.shape, kh, kw, stride, padding, dilation)
    return p, arg, gp, dx, (dy @ cols.T).reshape(w.shape), dy.sum(axis=1)


def _layer_by_chunks(x, w, b, options, gp, arg, per_chunk):
    stride, padding, dilation, pkh, pkw, pstride = options
    p, argmax = numba_cpu.conv2d_bias_relu_max_pool2d_forward(x, w, b, stride, padding, dilation,
                                                              pkh, pkw, pstride, per_chunk=per_chunk)
    dx, dw, db = numba_cpu.conv2d_bias_relu_max_pool2d_backward(gp, arg, x, w, stride, padding, dilation,
                                                                pkh, pkw, pstride, per_chunk=per_chunk)
    return p, argmax, dx, dw, db


@SETTINGS
@given(case=layer_cases(integer_valued=True))
def test_whole_layer_equals_the_composition_exactly_on_integers(case):
    """Integer values: every sum is exact in any order, so chunking may change nothing —
    outputs, argmax (ties and clipped windows included) and all three gradients equal."""
    x, w, b, options, per_chunk = case
    p_ref, arg_ref, gp, dx_ref, dw_ref, db_ref = _layer_by_composition(x, w, b, options)
    p, arg, dx, dw, db = _layer_by_chunks(x, w, b, options, gp, arg_ref, per_chunk)
    assert p.dtype == x.dtype and arg.dtype == arg_ref.dtype
    for got, want in ((p, p_ref), (arg, arg_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_array_equal(got, want)
    assert b is not None or db.shape == (w.shape[0],)


@SETTINGS
@given(case=layer_cases())
def test_whole_layer_equals_the_composition_to_rounding(case):
    x, w, b, options, per_chunk = case
    p_ref, arg_ref, gp, dx_ref, dw_ref, db_ref = _layer_by_composition(x, w, b, options)
    p, arg, dx, dw, db = _layer_by_chunks(x, w, b, options, gp, arg_ref, per_chunk)
    tol = 50 * np.finfo(x.dtype).eps
    np.testing.assert_allclose(p, p_ref, rtol=tol, atol=tol)
    if x.dtype == np.float64:                      # a near-tie in float32 may round either way
        np.testing.assert_array_equal(arg, arg_ref)
    scale = max(1.0, float(np.abs(gp).max()) * max(1.0, float(np.abs(x).max()) + float(np.abs(w).max())))
    for got, want in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale * x.shape[0] * 9)


def test_whole_layer_on_the_reference_cnns_shapes():
    """The two layers of the reference CNN at batch 37 (chunks of unequal size), float32."""
    rs = np.random.default_rng(13)
    for c, h, cout in ((1, 28, 32), (32, 13, 64)):
        x = rs.standard_normal((37, c, h, h)).astype(np.float32)
        w = (rs.standard_normal((cout, c, 3, 3)) / 3).astype(np.float32)
        b = rs.standard_normal(cout).astype(np.float32)
        options = ((1, 1), (0, 0), (1, 1), 2, 2, (2, 2))
        p_ref, arg_ref, gp, dx_ref, dw_ref, db_ref = _layer_by_composition(x, w, b, options)
        p, arg, dx, dw, db = _layer_by_chunks(x, w, b, options, gp, arg_ref, None)
        np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-5)
        assert (arg == arg_ref).mean() > 0.999       # float32 near-ties may round either way
        for got, want in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_whole_layer_gives_the_same_bits_on_any_number_of_threads():
    """The chunks depend on the shapes only, and dW, db are summed in chunk order."""
    import numba
    rs = np.random.default_rng(14)
    x = rs.standard_normal((50, 8, 12, 12)).astype(np.float32)
    w = rs.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rs.standard_normal(16).astype(np.float32)
    options = ((1, 1), (1, 1), (1, 1), 2, 2, (2, 2))
    _, arg, gp, *_ = _layer_by_composition(x, w, b, options)
    runs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            runs.append(_layer_by_chunks(x, w, b, options, gp, arg, None))
    finally:
        numba.set_num_threads(before)
    for one, many in zip(*runs):
        np.testing.assert_array_equal(one, many)


def test_whole_layer_leaves_numpys_blas_threads_alone():
    import threadpoolctl
    before = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas" and "scipy.libs" not in lib["filepath"]}
    rs = np.random.default_rng(15)
    x = rs.standard_normal((4, 2, 8, 8)).astype(np.float32)
    w = rs.standard_normal((3, 2, 3, 3)).astype(np.float32)
    numba_cpu.conv2d_bias_relu_max_pool2d_forward(x, w, None, 1, 0, 1, 2, 2, 2)
    after = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
             if lib["filepath"] in before}
    assert after == before


def test_whole_layer_names_a_wrong_shape():
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="x has 3 channels but the weight"):
        numba_cpu.conv2d_bias_relu_max_pool2d_forward(x, np.zeros((4, 2, 3, 3), np.float32), None,
                                                      1, 0, 1, 2, 2, 2)
    p, arg = numba_cpu.conv2d_bias_relu_max_pool2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), None,
                                                           1, 0, 1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"expected gout and argmax of shape \(2, 4, 3, 3\)"):
        numba_cpu.conv2d_bias_relu_max_pool2d_backward(p[:1], arg[:1], x, np.zeros((4, 3, 3, 3), np.float32),
                                                       1, 0, 1, 2, 2, 2)


def test_the_layer_uses_the_whole_layer_kernel_on_numba_only_without_groups():
    """ConvReLUMaxPool2dFn keeps x (not the columns) when the backend has the kernel."""
    from minicnn.functional.fused import ConvReLUMaxPool2dFn
    rs = np.random.default_rng(16)
    previous = mc.get_backend()
    try:
        for name, groups, whole in (("numba", 1, True), ("numba", 2, False), ("numpy", 1, False)):
            mc.set_backend(name)
            x = mc.tensor(rs.standard_normal((2, 4, 9, 9)), requires_grad=True)
            w = mc.tensor(rs.standard_normal((6, 4 // groups, 3, 3)), requires_grad=True)
            out = conv2d_relu_max_pool2d(x, w, None, groups=groups)
            fn = out._ctx
            assert isinstance(fn, ConvReLUMaxPool2dFn) and fn.whole_layer is whole
            assert (fn.saved_tensors[0].shape == x.shape) is whole     # x itself, or the columns
    finally:
        mc.set_backend(previous)


# -- 6. numba's matmul: the layers' products on Numba's threads ----------------------------------
@pytest.mark.parametrize("shape", [(64, 1600, 128), (128, 128, 1600), (3, 5, 7), (1, 300, 300), (257, 33, 65)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_matmul_equals_the_product(shape, dtype):
    m, k, n = shape
    rs = np.random.default_rng(17)
    a = rs.standard_normal((m, k)).astype(dtype)
    b = rs.standard_normal((k, n)).astype(dtype)
    tol = 20 * np.finfo(dtype).eps * k
    for left, right in ((a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)), (b.T.T, a.T.T),
                        (np.ascontiguousarray(b.T).T.T, np.ascontiguousarray(a.T).T.T)):
        if left.shape[1] != right.shape[0]:
            continue
        got = numba_cpu.matmul(left, right)
        np.testing.assert_allclose(got, left @ right, rtol=tol, atol=tol)
        assert got.dtype == dtype


def test_numba_matmul_stacks_and_falls_back():
    rs = np.random.default_rng(18)
    a, b = rs.standard_normal((3, 40, 50)), rs.standard_normal((3, 50, 60))
    np.testing.assert_allclose(numba_cpu.matmul(a, b), a @ b, rtol=1e-12)
    v = rs.standard_normal(50)
    np.testing.assert_allclose(numba_cpu.matmul(a[0], v), a[0] @ v)             # a vector: NumPy's @
    ints = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(numba_cpu.matmul(ints, ints.T), ints @ ints.T)  # integers: NumPy's @
    with pytest.raises(ValueError):
        numba_cpu.matmul(a[0], a[0])                                             # (40, 50) @ (40, 50)


def test_gradcheck_when_the_input_needs_no_gradient(backend):
    """The first layer's case (images need no gradient): the chunked kernel skips dx."""
    rs = np.random.default_rng(19)
    x = mc.tensor(rs.standard_normal((5, 1, 10, 10)), dtype="float64")          # requires_grad False
    w = mc.tensor(rs.standard_normal((4, 1, 3, 3)), requires_grad=True, dtype="float64")
    b = mc.tensor(rs.standard_normal(4), requires_grad=True, dtype="float64")
    out = conv2d_relu_max_pool2d(x, w, b)
    out.sum().backward()
    assert x.grad is None and w.grad is not None
    assert mc.gradcheck(lambda w, b: conv2d_relu_max_pool2d(x, w, b), (w, b))
