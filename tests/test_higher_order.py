"""Gradients of gradients: ``create_graph=True`` and ``mc.autograd.grad``.

For each op family, the Hessian-vector product

    Hv = d/dθ ( ∇_θ f(θ) · v )

computed by differentiating minicnn's gradient again is compared (float64)
with PyTorch's (``torch.autograd.grad(..., create_graph=True)``) and with
central differences of the first gradient, on every CPU backend (and on the
simulated device, and CuPy where a GPU is present).
"""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F

pytestmark = pytest.mark.tutorial01        # what tutorials/01_*.ipynb teaches (tests/README.md)

RS = np.random.default_rng(0)


def positive(*shape):
    return RS.uniform(0.5, 2.0, size=shape)


def normal(*shape):
    return RS.normal(size=shape)


# name -> (function of (F, T, *tensors) -> scalar, input arrays).
# F is minicnn.functional or torch.nn.functional; T turns an array into a constant of that library.
CASES = {
    "add_sub_mul_div_broadcast": (lambda F, T, a, b: ((a * b - a / b + b - a) * a).sum(),
                                  [normal(3, 4), positive(4)]),
    "neg_pow_scalar": (lambda F, T, a: (-(a ** 3) + a ** 2.5).sum(), [positive(5)]),
    "pow_tensor": (lambda F, T, a, b: (a ** b).sum(), [positive(3, 2), normal(2)]),
    "exp_log_sqrt_abs": (lambda F, T, a: (a.exp() * a.log() + a.sqrt() * a.abs() ** 2).sum(),
                         [positive(2, 3)]),
    "clip_maximum": (lambda F, T, a, b: (a.clamp(-0.5, 0.7) ** 3 + (a * b).clamp(min=0.1) ** 2).sum(),
                     [normal(6), normal(6)]),
    "matmul": (lambda F, T, a, b: F.tanh(a @ b).sum(), [normal(3, 4), normal(4, 2)]),
    "matmul_batched_vector": (lambda F, T, a, b, v: (F.tanh(a @ b) @ v).sum() + ((v @ v) ** 2),
                              [normal(2, 3, 4), normal(4, 5), normal(5)]),
    "linear": (lambda F, T, x, w, b: (F.sigmoid(F.linear(x, w, b)) ** 2).sum(),
               [normal(4, 3), normal(5, 3), normal(5)]),
    "conv2d": (lambda F, T, x, w, b: (F.tanh(F.conv2d(x, w, b)) ** 2).sum(),
               [normal(2, 3, 6, 6), normal(4, 3, 3, 3) * 0.3, normal(4)]),
    "conv2d_stride_padding_dilation": (
        lambda F, T, x, w: (F.tanh(F.conv2d(x, w, None, stride=2, padding=1, dilation=2)) ** 2).sum(),
        [normal(2, 2, 7, 7), normal(3, 2, 3, 3) * 0.3]),
    "conv2d_groups": (lambda F, T, x, w: F.sigmoid(F.conv2d(x, w, None, padding=1, groups=2)).sum(),
                      [normal(2, 4, 5, 5), normal(6, 2, 3, 3) * 0.3]),
    "max_pool2d": (lambda F, T, x: (F.max_pool2d(x, 2) ** 3).sum(), [normal(2, 3, 6, 6)]),
    "max_pool2d_stride_padding": (lambda F, T, x: (F.max_pool2d(x, 3, stride=2, padding=1) ** 3).sum(),
                                  [normal(2, 2, 7, 7)]),
    "avg_pool2d": (lambda F, T, x: (F.avg_pool2d(x, 3, stride=2, padding=1) ** 3).sum(),
                   [normal(2, 2, 7, 7)]),
    "adaptive_avg_pool2d": (lambda F, T, x: (F.adaptive_avg_pool2d(x, (2, 3)) ** 3).sum(), [normal(2, 2, 5, 7)]),
    "gelu": (lambda F, T, x: (F.gelu(x) ** 2 + F.gelu(x, approximate="tanh") ** 2).sum(), [normal(4, 5)]),
    "relu_leaky_relu": (lambda F, T, x: (F.relu(x) ** 3 + F.leaky_relu(x, 0.1) ** 3).sum(), [normal(4, 5)]),
    "sigmoid_tanh": (lambda F, T, x: (F.sigmoid(x) * F.tanh(x)).sum(), [normal(4, 5)]),
    "silu_softplus_mish": (lambda F, T, x: (F.silu(x) + F.softplus(x) * F.mish(x)).sum(), [normal(4, 5)]),
    "softmax_log_softmax": (lambda F, T, x, c: (F.softmax(x, dim=1) * c).sum() + (F.log_softmax(x, dim=0) ** 2).sum(),
                            [normal(3, 4), normal(3, 4)]),
    "sum_mean_amax": (lambda F, T, x: (x.sum(1) ** 2).mean() + (x.mean(0) ** 3).sum() + (x.amax(1) ** 2).sum(),
                      [normal(3, 4)]),
    "max_min_dim": (lambda F, T, x: (x.max(1)[0] ** 2).sum() + (x.min(0, keepdim=True)[0] ** 3).sum()
                    + (x.max() * x).sum(),
                    [normal(3, 4)]),
    "reshape_transpose_index_cat_stack": (
        lambda F, T, x: ((x.reshape(4, 3).T[1:, [0, 0, 2]] ** 2).sum()
                         + (mc_or_torch(x).cat([x, x * x], 0) ** 2).sum()
                         + (mc_or_torch(x).stack([x, x.exp()], 1) ** 2).sum()),
        [normal(2, 6)]),
    "cross_entropy": (lambda F, T, z: F.cross_entropy(z ** 2, T(np.array([0, 2, 1, 2]))),
                      [normal(4, 3)]),
    "cross_entropy_smoothing_sum": (
        lambda F, T, z: F.cross_entropy(z * z, T(np.array([1, 0, 2])), label_smoothing=0.2, reduction="sum"),
        [normal(3, 3)]),
    "losses_reduction_none": (
        lambda F, T, z, t: ((F.cross_entropy(z * z, T(np.array([2, 0, 1])), reduction="none") ** 2).sum()
                            + (F.mse_loss(z.exp(), t, reduction="none") ** 2).sum()
                            + (F.nll_loss(F.log_softmax(z, dim=1), T(np.array([1, 1, 0])), reduction="none") ** 2).sum()),
        [normal(3, 3), normal(3, 3)]),
    "nll_loss": (lambda F, T, z: F.nll_loss(F.log_softmax(z * z, dim=1), T(np.array([0, 2, 1]))),
                 [normal(3, 4)]),
    "mse_loss": (lambda F, T, x, t: F.mse_loss(F.tanh(x), t), [normal(3, 4), normal(3, 4)]),
    "smooth_l1_loss": (lambda F, T, x, t: F.smooth_l1_loss(x ** 3, t, reduction="sum"),
                       [normal(10) * 0.8, normal(10)]),
    "bce_with_logits": (lambda F, T, x, t: F.binary_cross_entropy_with_logits(x * x, F.sigmoid(t)),
                        [normal(3, 4), normal(3, 4)]),
}


def mc_or_torch(x):
    """The library ``x`` belongs to (for mc.cat / torch.cat, mc.stack / torch.stack)."""
    if isinstance(x, mc.Tensor):
        return mc
    import torch
    return torch


def mc_hvp(fn, arrays, vs):
    """(gradients, Hessian-vector products) of ``fn`` at ``arrays`` along ``vs``, by minicnn."""
    ts = [mc.tensor(a, requires_grad=True, dtype="float64") for a in arrays]
    out = fn(F, lambda a: mc.tensor(a), *ts)
    grads = mc.autograd.grad(out, ts, create_graph=True)
    dot = sum((g * mc.tensor(v, dtype="float64")).sum() for g, v in zip(grads, vs))
    hv = mc.autograd.grad(dot, ts, allow_unused=True)
    return ([g.numpy() for g in grads],
            [np.zeros_like(a) if h is None else h.numpy() for a, h in zip(arrays, hv)])


def torch_hvp(fn, arrays, vs):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    ts = [torch.tensor(a, requires_grad=True, dtype=torch.float64) for a in arrays]
    out = fn(tf, lambda a: torch.tensor(a), *ts)
    grads = torch.autograd.grad(out, ts, create_graph=True)
    dot = sum((g * torch.tensor(v)).sum() for g, v in zip(grads, vs))
    hv = torch.autograd.grad(dot, ts, allow_unused=True)
    return ([g.detach().numpy() for g in grads],
            [np.zeros_like(a) if h is None else h.numpy() for a, h in zip(arrays, hv)])


def directions(arrays, seed=1):
    rs = np.random.default_rng(seed)
    return [rs.normal(size=a.shape) for a in arrays]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hessian_vector_product_matches_torch(name, backend):
    """Every backend: numpy and numba; the simulator (host/device mixing raises) and cupy stand in for the GPU."""
    fn, arrays = CASES[name]
    vs = directions(arrays)
    grads, hv = mc_hvp(fn, arrays, vs)
    t_grads, t_hv = torch_hvp(fn, arrays, vs)
    for i, (a, b) in enumerate(zip(grads, t_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=f"{name}: gradient of input {i}")
    for i, (a, b) in enumerate(zip(hv, t_hv)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{name}: Hv for input {i}")


@pytest.mark.parametrize("name", ["add_sub_mul_div_broadcast", "matmul_batched_vector", "linear", "conv2d",
                                  "conv2d_groups", "max_pool2d", "avg_pool2d", "softmax_log_softmax",
                                  "cross_entropy_smoothing_sum", "bce_with_logits"])
def test_hessian_vector_product_matches_finite_differences(name, cpu_backend):
    """Hv ≈ (∇f(θ + εv) - ∇f(θ - εv)) / 2ε, the first gradient's central difference."""
    fn, arrays = CASES[name]
    vs = directions(arrays, seed=2)
    _, hv = mc_hvp(fn, arrays, vs)
    eps = 1e-5

    def gradient_at(sign):
        ts = [mc.tensor(a + sign * eps * v, requires_grad=True, dtype="float64") for a, v in zip(arrays, vs)]
        return [g.numpy() for g in mc.autograd.grad(fn(F, lambda a: mc.tensor(a), *ts), ts)]

    numeric = [(p - m) / (2 * eps) for p, m in zip(gradient_at(+1), gradient_at(-1))]
    for i, (a, b) in enumerate(zip(hv, numeric)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name}: Hv for input {i}")


def test_hand_computed_second_derivatives():
    """f = sum(x^3): f' = 3x^2, f'' = 6x; f = x*y: d²f/dxdy = 1."""
    x = mc.tensor([1.0, 2.0, -3.0], requires_grad=True, dtype="float64")
    g, = mc.autograd.grad((x ** 3).sum(), x, create_graph=True)
    np.testing.assert_array_equal(g.numpy(), [3.0, 12.0, 27.0])
    h, = mc.autograd.grad(g.sum(), x)
    np.testing.assert_array_equal(h.numpy(), [6.0, 12.0, -18.0])
    a = mc.tensor(2.0, requires_grad=True, dtype="float64")
    b = mc.tensor(5.0, requires_grad=True, dtype="float64")
    ga, = mc.autograd.grad(a * b, a, create_graph=True)          # = b
    assert mc.autograd.grad(ga, b)[0].item() == 1.0
    assert mc.autograd.grad(ga, a, allow_unused=True)[0] is None  # b does not depend on a


def test_second_order_gradcheck(cpu_backend):
    """gradgradcheck: the gradient (built with create_graph) passes mc.gradcheck as a function itself."""
    rs = np.random.default_rng(3)
    w = mc.tensor(rs.normal(size=(3, 2, 3, 3)) * 0.5, dtype="float64")

    def gradient(x):
        with mc.enable_grad():          # gradcheck evaluates fn under no_grad for the differences
            y = F.max_pool2d(F.tanh(F.conv2d(x, w, padding=1)), 2)
            loss = F.cross_entropy(y.reshape(2, -1), mc.tensor(np.array([1, 4])))
            return mc.autograd.grad(loss, x, create_graph=True)[0]

    x = mc.tensor(rs.normal(size=(2, 2, 4, 4)), requires_grad=True, dtype="float64")
    assert mc.gradcheck(gradient, [x])


def test_backward_create_graph_leaves_differentiable_grads(cpu_backend):
    """loss.backward(create_graph=True): .grad is a Tensor with a graph; its own backward gives Hv."""
    rs = np.random.default_rng(4)
    xa, wa = rs.normal(size=(5, 3)), rs.normal(size=(2, 3))
    x = mc.tensor(xa, dtype="float64")
    w = mc.tensor(wa, requires_grad=True, dtype="float64")
    F.cross_entropy(F.linear(F.tanh(x), w), mc.tensor(np.array([0, 1, 1, 0, 1]))).backward(create_graph=True)
    g = w.grad
    assert g.requires_grad and not g.is_leaf          # made by the recorded backward
    v = rs.normal(size=wa.shape)
    w.grad = None
    (g * mc.tensor(v, dtype="float64")).sum().backward()
    torch = pytest.importorskip("torch")
    tw = torch.tensor(wa, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(torch.nn.functional.linear(torch.tanh(torch.tensor(xa)), tw),
                                           torch.tensor([0, 1, 1, 0, 1]))
    tg, = torch.autograd.grad(tl, tw, create_graph=True)
    th, = torch.autograd.grad((tg * torch.tensor(v)).sum(), tw)
    np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), th.numpy(), rtol=1e-10, atol=1e-12)


def test_ordinary_backward_gives_arrays_outside_any_graph():
    x = mc.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    assert not x.grad.requires_grad and x.grad.is_leaf
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])


# -- grad(): PyTorch's semantics ------------------------------------------------
def test_grad_leaves_dot_grad_untouched_and_matches_backward():
    x = mc.tensor([1.0, -2.0, 3.0], requires_grad=True)
    x.grad = mc.tensor([10.0, 10.0, 10.0])
    y = (x * x * x).sum()
    g, = mc.autograd.grad(y, x)
    np.testing.assert_array_equal(x.grad.numpy(), [10.0, 10.0, 10.0])
    assert not g.requires_grad
    x.grad = None
    y.backward()
    np.testing.assert_array_equal(g.numpy(), x.grad.numpy())


def test_grad_of_intermediate_and_several_outputs_with_grad_outputs():
    x = mc.tensor([1.0, 2.0], requires_grad=True, dtype="float64")
    h = x * 3                                   # an intermediate input
    y1, y2 = h * h, h.sum()
    gh, gx = mc.autograd.grad([y1, y2], [h, x], grad_outputs=[mc.tensor([1.0, 0.5], dtype="float64"),
                                                             mc.tensor(2.0, dtype="float64")])
    # d/dh (v·h² + 2 sum h) = 2 v h + 2;  d/dx = 3 of that
    np.testing.assert_allclose(gh.numpy(), [2 * 1.0 * 3 + 2, 2 * 0.5 * 6 + 2])
    np.testing.assert_allclose(gx.numpy(), 3 * gh.numpy())


def test_grad_allow_unused():
    x = mc.tensor([1.0], requires_grad=True)
    unused = mc.tensor([2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"inputs\[1\].*not used.*allow_unused=True"):
        mc.autograd.grad((x * 2).sum(), [x, unused])
    gx, gu = mc.autograd.grad((x * 2).sum(), [x, unused], allow_unused=True)
    assert gu is None and gx.item() == 2.0


def test_grad_of_non_scalar_needs_grad_outputs():
    x = mc.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"outputs\[0\] has shape \(2,\).*grad_outputs"):
        mc.autograd.grad(x * 2, x)
    g, = mc.autograd.grad(x * 2, x, grad_outputs=mc.tensor([1.0, 3.0]))
    np.testing.assert_array_equal(g.numpy(), [2.0, 6.0])
    with pytest.raises(ValueError, match=r"grad_outputs\[0\] has shape \(3,\)"):
        mc.autograd.grad(x * 2, x, grad_outputs=mc.tensor([1.0, 3.0, 4.0]))


def test_grad_needs_outputs_and_inputs():
    x = mc.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="at least one output and one input, got 1 and 0"):
        mc.autograd.grad((x * 2).sum(), [])


def test_grad_of_input_that_does_not_require_grad():
    x = mc.tensor([1.0], requires_grad=True)
    c = mc.tensor([1.0])
    with pytest.raises(RuntimeError, match=r"inputs\[1\].*does not require grad"):
        mc.autograd.grad((x * c).sum(), [x, c])


def test_retain_graph_false_frees_the_graph():
    x = mc.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    mc.autograd.grad(y, x, retain_graph=True)
    mc.autograd.grad(y, x)                       # minicnn keeps the graph by default
    mc.autograd.grad(y, x, retain_graph=False)
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        mc.autograd.grad(y, x)
    z = (x * x).sum()
    z.backward(retain_graph=False)
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()


def test_create_graph_through_a_function_without_backward_graph_names_it():
    x = mc.tensor([[0.5, -1.0, 2.0]], requires_grad=True, dtype="float64")
    y = x.prod()
    with pytest.raises(NotImplementedError, match=r"ProdFn has no differentiable backward"):
        mc.autograd.grad(y, x, create_graph=True)
    g, = mc.autograd.grad(y, x)                  # the first derivative still works
    np.testing.assert_allclose(g.numpy(), [[-2.0, 1.0, -0.5]])
    xi = mc.tensor(np.ones((1, 1, 4, 4)), requires_grad=True, dtype="float64")
    w = mc.tensor(np.ones((2, 1, 3, 3)), requires_grad=True, dtype="float64")
    fused = F.conv2d_relu_max_pool2d(xi, w, padding=1).sum()
    with pytest.raises(RuntimeError, match="ConvReLUMaxPool2dFn"):    # NotImplementedError is a RuntimeError
        fused.backward(create_graph=True)


def test_dropout_second_derivative_uses_the_same_mask():
    mc.manual_seed(0)
    x = mc.tensor(np.linspace(-1, 1, 20), requires_grad=True, dtype="float64")
    y = F.dropout(x, 0.5)
    kept = (y.numpy() != 0) * 2.0                  # the mask drawn in forward, scaled by 1/(1-p)
    g, = mc.autograd.grad((y ** 3).sum(), x, create_graph=True)
    h, = mc.autograd.grad(g.sum(), x)
    # f = sum (m x)^3: f' = 3 m^3 x^2, f'' = 6 m^3 x
    np.testing.assert_allclose(g.numpy(), 3 * kept ** 3 * x.numpy() ** 2)
    np.testing.assert_allclose(h.numpy(), 6 * kept ** 3 * x.numpy())


def test_gradient_penalty_trains_through_the_gradient():
    """Minimising ||d loss / d x||² moves the weights: the penalty's gradient reaches them."""
    rs = np.random.default_rng(5)
    x = mc.tensor(rs.normal(size=(8, 4)), requires_grad=True, dtype="float64")
    w = mc.tensor(rs.normal(size=(3, 4)), requires_grad=True, dtype="float64")
    target = mc.tensor(rs.integers(0, 3, 8))

    def penalty():
        loss = F.cross_entropy(F.linear(x, w), target)
        gx, = mc.autograd.grad(loss, x, create_graph=True)
        return (gx * gx).sum()

    start = penalty().item()
    for _ in range(20):
        p = penalty()
        gw, = mc.autograd.grad(p, w)
        w = mc.tensor(w.numpy() - 1.0 * gw.numpy(), requires_grad=True, dtype="float64")
    assert penalty().item() < 0.2 * start
