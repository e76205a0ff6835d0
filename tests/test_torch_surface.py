"""The Tensor and top-level surface against PyTorch (issue 26): same names, same answers, same errors.

A student's PyTorch program must run after rewriting only its imports; each
test here runs one call both ways and compares values, shapes, dtypes and the
exceptions raised.
"""
import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn

torch = pytest.importorskip("torch")

X = np.array([[1.0, 5.0, 2.0], [7.0, 2.0, 7.0]], dtype=np.float32)


def pair(a=X):
    return mc.tensor(a), torch.tensor(a)


def same(m, t):
    """m (minicnn) and t (torch) hold the same values, shape and dtype."""
    if isinstance(t, tuple):
        assert type(m).__name__ == type(t).__name__ and m._fields == ("values", "indices")
        for a, b in zip(m, t):
            same(a, b)
        return
    tn = t.detach().numpy()
    assert m.shape == tuple(tn.shape)
    assert m.dtype == tn.dtype, (m.dtype, tn.dtype)
    np.testing.assert_allclose(m.numpy(), tn, rtol=1e-6, atol=1e-6)


def raises_like(f_mc, f_torch, match=None):
    with pytest.raises(Exception) as expected:
        f_torch()
    with pytest.raises(type(expected.value), match=match):
        f_mc()


# -- size, numel, dim ----------------------------------------------------------------
def test_size_numel_dim():
    m, t = pair()
    assert m.size() == t.size() == (2, 3) and isinstance(m.size(), tuple) and isinstance(m.size(), mc.Size)
    assert m.size(0) == t.size(0) and m.size(-1) == t.size(-1) == 3 and isinstance(m.size(1), int)
    assert m.numel() == t.numel() == m.nelement() == 6 and m.size().numel() == 6
    assert m.dim() == t.dim() == m.ndimension() == 2 and m.shape == tuple(t.shape)
    assert repr(m.size()) == "minicnn.Size([2, 3])"


def test_size_out_of_range_is_pytorchs_index_error():
    m, t = pair()
    raises_like(lambda: m.size(5), lambda: t.size(5),
                match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 5\)")
    raises_like(lambda: m.size(-3), lambda: t.size(-3), match="Dimension out of range")
    raises_like(lambda: mc.tensor(1.0).size(1), lambda: torch.tensor(1.0).size(1), match="no dimensions")


# -- reductions ---------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda x: x.sum(), lambda x: x.sum(1), lambda x: x.sum(dim=0, keepdim=True), lambda x: x.sum(dim=(0, 1)),
    lambda x: x.mean(), lambda x: x.mean(dim=-1), lambda x: x.mean(1, True),
    lambda x: x.max(), lambda x: x.min(), lambda x: x.amax(dim=1), lambda x: x.amin(dim=(0, 1)),
    lambda x: x.var(), lambda x: x.var(1), lambda x: x.var(1, unbiased=False), lambda x: x.var(dim=0, correction=0),
    lambda x: x.var(0, keepdim=True), lambda x: x.std(), lambda x: x.std(dim=1, keepdim=True),
    lambda x: x.argmax(), lambda x: x.argmax(1), lambda x: x.argmax(dim=0, keepdim=True),
    lambda x: x.argmin(), lambda x: x.argmin(1),
    lambda x: (x > 2).any(), lambda x: (x > 2).all(), lambda x: (x > 2).any(dim=1), lambda x: (x > 1).all(0),
])
def test_reductions_match_torch(call):
    m, t = pair()
    same(call(m), call(t))


@pytest.mark.parametrize("call", [lambda x: x.prod(), lambda x: x.prod(1), lambda x: x.prod(dim=0, keepdim=True),
                                  lambda x: x.prod(-1, True)])
@pytest.mark.parametrize("a", [X, np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0], [4.0, 5.0, -6.0]], np.float32)])
def test_prod_and_its_gradient_match_torch_zeros_included(call, a):
    m = mc.tensor(a, requires_grad=True, dtype="float64")
    t = torch.tensor(a.astype(np.float64), requires_grad=True)
    ym, yt = call(m), call(t)
    same(ym, yt)
    weights = np.arange(1.0, 1.0 + ym.numel()).reshape(ym.shape)
    (ym * mc.tensor(weights)).sum().backward()
    (yt * torch.tensor(weights)).sum().backward()
    same(m.grad, t.grad)


def test_prod_gradcheck_and_one_dim_only(cpu_backend):
    x = mc.tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True, dtype="float64")
    assert mc.gradcheck(lambda x: x.prod(1), (x,)) and mc.gradcheck(lambda x: mc.prod(x), (x,))
    with pytest.raises(TypeError, match="one dim"):
        x.prod(dim=(0, 1))


def test_axis_and_keepdims_still_accepted():
    m, t = pair()
    same(m.sum(axis=1, keepdims=True), t.sum(dim=1, keepdim=True))
    same(m.mean(axis=0), t.mean(dim=0))
    same(m.argmax(axis=1), t.argmax(dim=1))
    with pytest.raises(TypeError, match="not both"):
        m.sum(dim=0, axis=1)


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_with_dim_give_values_and_indices(op):
    m, t = pair()
    same(getattr(m, op)(1), getattr(t, op)(1))
    same(getattr(m, op)(dim=0, keepdim=True), getattr(t, op)(dim=0, keepdim=True))
    same(getattr(mc, op)(m, 1), getattr(torch, op)(t, 1))
    same(getattr(mc, op)(m), getattr(torch, op)(t))
    y = np.array([[3.0, 3.0, 3.0], [3.0, 3.0, 9.0]], np.float32)
    same(getattr(m, op)(mc.tensor(y)), getattr(t, op)(torch.tensor(y)))
    same(getattr(mc, op)(m, mc.tensor(y)), getattr(torch, op)(t, torch.tensor(y)))
    values, indices = getattr(m, op)(1)
    assert getattr(m, op)(1).values is not None and indices.dtype == np.int64


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_underscore_p_equals_x_max_1(batch):
    """The classic accuracy line: ``_, predicted = outputs.max(1)`` (wrong at batch size 2 before)."""
    rs = np.random.default_rng(batch)
    logits = rs.standard_normal((batch, 10)).astype(np.float32)
    _, p = mc.tensor(logits).max(1)
    _, q = torch.tensor(logits).max(1)
    same(p, q)
    labels = mc.tensor(q.numpy())
    assert (p == labels).sum().item() == batch


def test_max_gradient_flows_through_values():
    m = mc.tensor(X, requires_grad=True)
    t = torch.tensor(X, requires_grad=True)
    m.max(1).values.sum().backward()
    t.max(1).values.sum().backward()
    # minicnn shares a tie's gradient (row 2 has two 7s); PyTorch gives it to one: the sums agree
    np.testing.assert_allclose(m.grad.numpy().sum(1), t.grad.numpy().sum(1))
    np.testing.assert_allclose(m.grad.numpy()[0], t.grad.numpy()[0])


def test_dim_out_of_range_is_index_error():
    m, t = pair()
    for f in (lambda x: x.sum(dim=5), lambda x: x.max(5), lambda x: x.mean(-3), lambda x: x.argmax(2),
              lambda x: x.unsqueeze(4), lambda x: x.squeeze(3), lambda x: x.transpose(0, 2)):
        raises_like(lambda: f(m), lambda: f(t), match="Dimension out of range")


# -- Python numbers ------------------------------------------------------------------
def test_float_int_bool_index_item():
    assert float(mc.tensor(2.5)) == float(torch.tensor(2.5)) == 2.5
    assert int(mc.tensor(3.9)) == int(torch.tensor(3.9)) == 3
    assert bool(mc.tensor([1.0]).any()) is bool(torch.tensor([1.0]).any()) is True
    classes = ["zero", "one", "two"]
    labels = mc.tensor([2, 0])
    assert classes[labels[0]] == "two" and [10, 20, 30][mc.tensor(1)] == 20
    raises_like(lambda: [1, 2][mc.tensor(1.0)], lambda: [1, 2][torch.tensor(1.0)])
    assert mc.tensor([[4]]).item() == torch.tensor([[4]]).item() == 4
    raises_like(lambda: mc.tensor([1.0, 2.0]).item(), lambda: torch.tensor([1.0, 2.0]).item())
    raises_like(lambda: bool(mc.tensor([1.0, 2.0])), lambda: bool(torch.tensor([1.0, 2.0])))


# -- comparisons, shapes, casts ------------------------------------------------------
@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparison_methods(op):
    m, t = pair()
    same(getattr(m, op)(2.0), getattr(t, op)(2.0))
    y = X[::-1].copy()
    same(getattr(m, op)(mc.tensor(y)), getattr(t, op)(torch.tensor(y)))
    same(getattr(mc, op)(m, 5.0), getattr(torch, op)(t, 5.0))


@pytest.mark.parametrize("call", [
    lambda x, T: x.view(-1), lambda x, T: x.view(3, 2), lambda x, T: x.view((3, 2)), lambda x, T: x.reshape(-1, 2),
    lambda x, T: x.view_as(T.zeros(6)), lambda x, T: x.reshape_as(T.zeros(3, 2)),
    lambda x, T: x.unsqueeze(0), lambda x, T: x.unsqueeze(-1), lambda x, T: x.unsqueeze(1),
    lambda x, T: x.unsqueeze(0).squeeze(), lambda x, T: x.unsqueeze(0).squeeze(0), lambda x, T: x.squeeze(1),
    lambda x, T: x.view(1, 2, 1, 3).squeeze(), lambda x, T: x.view(1, 2, 1, 3).squeeze(-2),
    lambda x, T: x.permute(1, 0), lambda x, T: x.view(1, 2, 3).permute(2, 0, 1),
    lambda x, T: x.view(1, 2, 3).permute((0, 2, 1)), lambda x, T: x.transpose(0, 1),
    lambda x, T: x.view(1, 2, 3).transpose(-1, 0), lambda x, T: x.t(), lambda x, T: x.T,
    lambda x, T: x.contiguous(), lambda x, T: x.clone(), lambda x, T: x.detach(),
    lambda x, T: x.flatten(), lambda x, T: T.flatten(x.view(1, 2, 3), 1), lambda x, T: T.flatten(x),
    lambda x, T: T.cat([x, x], dim=1), lambda x, T: T.cat((x, x)), lambda x, T: T.stack([x, x], dim=2),
    lambda x, T: T.unsqueeze(x, 0), lambda x, T: T.transpose(x, 0, 1), lambda x, T: T.permute(x, (1, 0)),
    lambda x, T: x.long(), lambda x, T: x.int(), lambda x, T: x.double(), lambda x, T: x.float(),
    lambda x, T: x.bool(), lambda x, T: x.half(), lambda x, T: x.long().float(),
    lambda x, T: x.to(T.float64), lambda x, T: x.to(T.int64), lambda x, T: x.to("cpu"),
    lambda x, T: x.to("cpu", T.float64), lambda x, T: x.to(dtype=T.long), lambda x, T: x.cpu(),
    lambda x, T: x.type(T.float64), lambda x, T: x.to(T.zeros(1, dtype=T.float64)),
])
def test_shape_and_cast_methods(call):
    m, t = pair()
    same(call(m, mc), call(t, torch))


def test_transpose_without_dims_is_pytorchs_t_on_2d_only():
    m, t = pair()
    same(m.transpose(), t.t())
    raises_like(lambda: mc.zeros(2, 3, 4).t(), lambda: torch.zeros(2, 3, 4).t())
    with pytest.raises(TypeError, match="give both"):
        m.transpose(0)


def test_type_names_and_nothing_to_do_returns_self():
    m, t = pair()
    assert m.type() == t.type().replace("torch", "minicnn") == "minicnn.FloatTensor"
    assert mc.tensor([1]).type() == "minicnn.LongTensor" and m.bool().type() == "minicnn.BoolTensor"
    assert m.type("torch.DoubleTensor").dtype == np.float64
    assert m.to(m.device) is m and m.float() is m and m.contiguous() is m
    c = m.cpu()
    assert c.cpu() is c


def test_clone_detach_requires_grad_are_in_or_out_of_the_graph():
    m = mc.tensor(X, requires_grad=True)
    c, d = m.clone(), m.detach()
    assert c.requires_grad and not d.requires_grad and d.is_leaf
    (c * 2).sum().backward()
    np.testing.assert_allclose(m.grad.numpy(), np.full_like(X, 2.0))
    c.array[0, 0] = 100.0
    assert m.numpy()[0, 0] == 1.0                       # clone copies
    assert mc.zeros(2).requires_grad_() .requires_grad
    assert isinstance(m.shape, tuple)


def test_casts_to_integers_cut_the_graph_as_in_pytorch():
    m = mc.tensor(X, requires_grad=True)
    t = torch.tensor(X, requires_grad=True)
    assert m.long().requires_grad == t.long().requires_grad is False
    assert m.double().requires_grad == t.double().requires_grad is True
    m.double().sum().backward()
    assert m.grad.dtype == np.float32


# -- constructors --------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda T: T.zeros(2, 3), lambda T: T.zeros((2, 3)), lambda T: T.zeros([4]), lambda T: T.ones(2, dtype=T.float64),
    lambda T: T.ones(2, 3, dtype=T.int64), lambda T: T.empty(0, 3).reshape(-1), lambda T: T.full((2, 2), 7),
    lambda T: T.full((2,), 1.5), lambda T: T.full((2,), True), lambda T: T.full((2,), 3, dtype=T.float64),
    lambda T: T.arange(5), lambda T: T.arange(2, 9, 3), lambda T: T.arange(0, 1, 0.25), lambda T: T.arange(5.0),
    lambda T: T.arange(10, 0, -3), lambda T: T.arange(3, dtype=T.float32), lambda T: T.linspace(0, 1, 5),
    lambda T: T.linspace(-2, 2, steps=3, dtype=T.float64), lambda T: T.eye(3), lambda T: T.eye(2, 3),
    lambda T: T.zeros_like(T.ones(2, 3)), lambda T: T.ones_like(T.arange(3)), lambda T: T.full_like(T.ones(2), 4),
    lambda T: T.zeros_like(T.ones(2), dtype=T.int32), lambda T: T.empty_like(T.ones(2)).zero_() if T is torch
    else T.empty_like(T.ones(2)),
    lambda T: T.as_tensor([1, 2]), lambda T: T.as_tensor([1.0, 2.0], dtype=T.float64),
    lambda T: T.from_numpy(np.arange(3.0)), lambda T: T.from_numpy(np.arange(3, dtype=np.int32)),
    lambda T: T.tensor([True, False]), lambda T: T.zeros(2, dtype=T.bool), lambda T: T.ones(2, dtype=T.uint8),
])
def test_constructors_match_torch(call):
    same(call(mc), call(torch))


def test_random_constructors_shapes_dtypes_and_seed():
    for name, args in [("rand", (2, 3)), ("randn", (4,)), ("rand", ((2, 2),))]:
        m, t = getattr(mc, name)(*args), getattr(torch, name)(*args)
        assert m.shape == tuple(t.shape) and m.dtype == t.dtype.__repr__().split(".")[1]
    m, t = mc.randint(0, 10, (50,)), torch.randint(0, 10, (50,))
    assert m.dtype == np.int64 and m.shape == (50,) and 0 <= m.min().item() and m.max().item() < 10
    assert mc.randint(5, (3, 2)).shape == (3, 2)
    assert mc.rand(100).amax().item() < 1 and mc.randn(3, dtype=mc.float64).dtype == np.float64
    assert mc.rand_like(mc.zeros(2, 2)).shape == (2, 2) and mc.randn_like(mc.zeros(3)).dtype == np.float32
    mc.manual_seed(3)
    a = mc.randn(5)
    mc.manual_seed(3)
    np.testing.assert_array_equal(a.numpy(), mc.randn(5).numpy())
    assert mc.rand(3, requires_grad=True).requires_grad


def test_from_numpy_shares_memory_and_as_tensor_keeps_tensors():
    a = np.zeros(3)
    m = mc.from_numpy(a)
    if mc.get_backend() in ("numpy", "numba"):
        a[0] = 5.0
        assert m[0].item() == 5.0
    with pytest.raises(TypeError, match="numpy.ndarray"):
        mc.from_numpy([1, 2])
    t = mc.ones(2)
    assert mc.as_tensor(t) is t and mc.as_tensor(t, dtype=mc.float64).dtype == np.float64
    assert mc.as_tensor(np.arange(2.0)).dtype == np.float64         # as PyTorch: the array's dtype


def test_bad_sizes_are_type_errors():
    raises_like(lambda: mc.zeros(2.5), lambda: torch.zeros(2.5))
    raises_like(lambda: mc.zeros(-1), lambda: torch.zeros(-1))  # torch: RuntimeError
    raises_like(lambda: mc.randint(5, 5, (2,)), lambda: torch.randint(5, 5, (2,)))


def test_dtype_names_are_numpys():
    assert mc.float32 is mc.float is np.float32 and mc.float64 is mc.double is np.float64
    assert mc.int64 is mc.long is np.int64 and mc.int32 is mc.int is np.int32 and mc.bool is np.bool_
    assert mc.uint8 is np.uint8 and mc.float16 is mc.half is np.float16
    assert mc.tensor([1.0]).dtype == mc.float32 and mc.tensor([1]).dtype == mc.long


# -- devices -------------------------------------------------------------------------
def test_device_objects():
    for spec in ("cpu", "cuda", "cuda:0", "cuda:1"):
        d, e = mc.device(spec), torch.device(spec)
        assert repr(d) == repr(e) and str(d) == str(e) and (d.type, d.index) == (e.type, e.index)
    assert mc.device("cuda", 1) == mc.device("cuda:1") and mc.device(mc.device("cpu")) == "cpu"
    assert mc.device("cpu") != mc.device("cuda") and mc.device("cuda:0") != "cuda"
    assert len({mc.device("cpu"), mc.device("cpu")}) == 1


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu:0", "", "cpu:1"])
def test_bad_device_string_says_what_is_allowed(bad):
    with pytest.raises(ValueError, match="cpu"):
        mc.device(bad)
    with pytest.raises(RuntimeError):                  # PyTorch raises RuntimeError: both catch it
        mc.device(bad)
    with pytest.raises(ValueError):
        mc.ones(2).to(bad)


def test_tensor_device_follows_the_backend():
    t = mc.ones(2)
    want = "cpu" if mc.get_backend() in ("numpy", "numba") else "cuda"
    assert t.device.type == want and mc.zeros(1, device=want).device.type == want
    assert t.device == (mc.device("cpu") if want == "cpu" else mc.device("cuda:0"))     # as PyTorch: cuda:0


@pytest.mark.skipif(mc.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu_says_so():
    assert mc.cuda.is_available() is torch.cuda.is_available() is False or not mc.cuda.is_available()
    assert mc.cuda.device_count() == 0 and mc.accelerator.current_accelerator() is None
    assert not mc.accelerator.is_available()
    if mc.get_backend() in ("numpy", "numba"):
        with pytest.raises(RuntimeError, match="cuda requested but no CUDA GPU is usable"):
            mc.ones(2).to("cuda")
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            mc.ones(2).cuda()
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            nn.Linear(2, 2).to("cuda")
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            mc.zeros(2, device="cuda")


def test_to_device_round_trip_keeps_the_gradient():
    """cuda when there is one (CuPy or the simulator backend); else only the no-op move to the cpu."""
    target = "cuda" if (mc.cuda.is_available() or mc.get_backend() not in ("numpy", "numba")) else "cpu"
    x = mc.tensor(X, requires_grad=True)
    y = x.to(target)
    assert y.device.type == target
    (y.to(x.device) * 3).sum().backward()
    assert x.grad.device == x.device
    np.testing.assert_allclose(x.grad.numpy(), np.full_like(X, 3.0))


def test_module_to_device_and_dtype():
    lin = nn.Linear(3, 2)
    assert lin.to("cpu" if lin.weight.device.type == "cpu" else "cuda") is lin
    lin.to(mc.float64)
    assert lin.weight.dtype == np.float64
    lin.to(lin.weight.device, mc.float32)
    assert lin.weight.dtype == np.float32 and lin.cpu().weight.device.type == "cpu"
    if mc.get_backend() in ("numpy", "numba"):
        assert lin(mc.ones(1, 3)).shape == (1, 2)


def test_load_takes_pytorchs_weights_only_and_map_location(tmp_path):
    """``model.load_state_dict(torch.load(PATH, weights_only=True))`` (PyTorch's quickstart) runs as written."""
    model = nn.Linear(3, 2)
    mc.save(model.state_dict(), tmp_path / "model.pth")
    other = nn.Linear(3, 2)
    other.load_state_dict(mc.load(tmp_path / "model.pth", weights_only=True))
    other.load_state_dict(mc.load(tmp_path / "model.pth", map_location=mc.device("cpu")))
    other.load_state_dict(mc.load(tmp_path / "model.pth", map_location="cpu", weights_only=False))
    np.testing.assert_array_equal(other.weight.numpy(), model.weight.numpy())
    with pytest.raises(ValueError, match="device"):
        mc.load(tmp_path / "model.pth", map_location="gpu")


# -- .data is PyTorch's (a detached Tensor sharing the array); .array is the array --------------
def test_data_is_a_detached_tensor_sharing_memory():
    for lib, x in ((mc, mc.tensor(X, requires_grad=True)), (torch, torch.tensor(X, requires_grad=True))):
        d = x.data
        assert isinstance(d, lib.Tensor) and not d.requires_grad and d.grad_fn is None if lib is torch \
            else isinstance(d, lib.Tensor) and not d.requires_grad and d.is_leaf
        np.testing.assert_array_equal(x.data.numpy(), X)
        x.data.zero_()                                            # writes through to x
        assert float(x.detach().abs().sum()) == 0.0
    a = mc.tensor(X)
    assert a.data.array is a.array and isinstance(a.array, mc.backend.current.xp.ndarray)


def test_data_minus_equals_updates_the_parameter_in_place():
    m, t = mc.tensor(X, requires_grad=True), torch.tensor(X, requires_grad=True)
    (m * m).sum().backward()
    (t * t).sum().backward()
    array = m.array
    m.data -= 0.1 * m.grad.data
    t.data -= 0.1 * t.grad.data
    same(m.detach(), t.detach())
    assert m.array is array and m.requires_grad and m.is_leaf


def test_assigning_data_replaces_the_array():
    m, t = mc.tensor(X, requires_grad=True), torch.tensor(X, requires_grad=True)
    m.data = mc.zeros(3)
    t.data = torch.zeros(3)
    same(m.detach(), t.detach())
    assert m.requires_grad and m.shape == (3,)
    m.data = np.ones((2, 2), np.float32)                          # an array works too
    assert m.shape == (2, 2) and float(m.sum()) == 4.0


@pytest.mark.parametrize("op", [
    lambda x: x.zero_(), lambda x: x.fill_(2.0), lambda x: x.add_(1.0), lambda x: x.sub_(1.0),
    lambda x: x.mul_(2.0), lambda x: x.div_(2.0), lambda x: x.clamp_(0.0, 3.0), lambda x: x.normal_(),
    lambda x: x.uniform_(), lambda x: x.copy_(x.detach() * 2)])
def test_in_place_on_a_leaf_that_requires_grad_raises_like_torch(op):
    raises_like(lambda: op(mc.tensor(X, requires_grad=True)), lambda: op(torch.tensor(X, requires_grad=True)),
                match="leaf Variable that requires grad")


def test_augmented_assignment_on_a_leaf_that_requires_grad_raises_like_torch():
    def isub(x):
        x -= 1.0
    raises_like(lambda: isub(mc.tensor(X, requires_grad=True)), lambda: isub(torch.tensor(X, requires_grad=True)),
                match="leaf Variable that requires grad")


def test_in_place_ops_agree_with_torch_under_no_grad_and_on_data():
    Y = np.array([[0.5, -1.0, 2.0], [1.0, 3.0, -2.0]], np.float32)
    ops = [lambda x, y: x.add_(y, alpha=2), lambda x, y: x.sub_(y, alpha=0.5), lambda x, y: x.mul_(y),
           lambda x, y: x.div_(y), lambda x, y: x.clamp_(1.0, 5.0), lambda x, y: x.clamp_(max=4.0),
           lambda x, y: x.fill_(3.0), lambda x, y: x.zero_(), lambda x, y: x.copy_(y), lambda x, y: x.add_(2.0)]
    for op in ops:
        m, t = mc.tensor(X, requires_grad=True), torch.tensor(X, requires_grad=True)
        with mc.no_grad():
            assert op(m, mc.tensor(Y)) is m
        with torch.no_grad():
            op(t, torch.tensor(Y))
        same(m.detach(), t.detach())
        m2, t2 = mc.tensor(X, requires_grad=True), torch.tensor(X, requires_grad=True)
        op(m2.data, mc.tensor(Y))
        op(t2.data, torch.tensor(Y))
        same(m2.detach(), t2.detach())
    for name in ("__iadd__", "__isub__", "__imul__", "__itruediv__"):
        m, t = mc.tensor(X, requires_grad=True), torch.tensor(X, requires_grad=True)
        array = m.array
        with mc.no_grad():
            assert getattr(m, name)(mc.tensor(Y)) is m
        with torch.no_grad():
            getattr(t, name)(torch.tensor(Y))
        same(m.detach(), t.detach())
        assert m.array is array


def test_random_in_place_fills_follow_minicnns_generator():
    mc.manual_seed(0)
    a = mc.zeros(1000).normal_(2.0, 0.5)
    b = mc.zeros(1000).uniform_(-1.0, 1.0)
    mc.manual_seed(0)
    assert np.array_equal(mc.zeros(1000).normal_(2.0, 0.5).numpy(), a.numpy())
    assert abs(float(a.mean()) - 2.0) < 0.1 and abs(float(a.std()) - 0.5) < 0.1
    assert -1.0 <= float(b.min()) and float(b.max()) <= 1.0 and b.dtype == np.float32


def test_augmented_assignment_inside_the_graph_is_still_recorded():
    x = mc.tensor(X, requires_grad=True)
    h = x * 2
    h += x                                                        # out of place, recorded: d/dx = 3
    h.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full_like(X, 3.0))


@pytest.mark.parametrize("style", ["no_grad", "data"])
def test_a_manual_sgd_loop_written_as_in_pytorch_trains(style):
    mc.manual_seed(0)
    rs = np.random.RandomState(0)
    xs = rs.standard_normal((64, 4)).astype(np.float32)
    ys = (xs @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) > 0).astype(np.int64)
    x, y = mc.tensor(xs), mc.tensor(ys)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    loss_fn, lr = nn.CrossEntropyLoss(), 0.5
    first = None
    for _ in range(60):
        model.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        first = float(loss) if first is None else first
        if style == "no_grad":
            with mc.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
        else:
            for p in model.parameters():
                p.data -= lr * p.grad.data
    assert float(loss) < 0.5 * first
    assert all(p.requires_grad and p.is_leaf for p in model.parameters())
