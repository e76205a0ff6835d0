"""The autograd engine: Tensor, Function, backward, every elementary op."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F

pytestmark = pytest.mark.tutorial01        # what tutorials/01_*.ipynb teaches (tests/README.md)


def t64(a, requires_grad=True):
    return mc.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad, dtype="float64")


# -- creation and dtypes -------------------------------------------------------
def test_float_defaults_to_float32_and_float64_on_request():
    assert mc.tensor([1.0, 2.0]).dtype == np.float32
    assert mc.tensor(np.zeros(3)).dtype == np.float32          # float64 data -> float32 default
    assert mc.tensor([1.0], dtype="float64").dtype == np.float64
    assert mc.tensor([1.0], dtype=np.float64).dtype == np.float64
    assert mc.tensor([1, 2]).dtype.kind == "i"                 # labels stay integers
    x = t64([1.0, 2.0])
    assert (x * 2 + 1).dtype == np.float64                     # Python scalars never promote
    assert (mc.tensor([1.0]) * 2.5).dtype == np.float32


def test_bad_data_and_dtype_are_clear_errors():
    with pytest.raises(TypeError, match="dtype"):
        mc.tensor([1.0], dtype="not-a-dtype")
    with pytest.raises(TypeError, match="floating-point"):
        mc.tensor([1, 2], requires_grad=True)


def test_properties_and_conversions():
    x = mc.tensor(np.arange(6.0).reshape(2, 3))
    assert x.shape == (2, 3) and x.ndim == 2 and x.numel() == 6 and x.size() == (2, 3) and len(x) == 2
    n = x.numpy()
    n[0, 0] = 100                                              # numpy() is a copy
    assert x.array[0, 0] == 0
    assert mc.tensor([[3.5]]).item() == 3.5
    with pytest.raises(ValueError, match="one element"):
        x.item()
    assert "tensor(" in repr(x)


# -- basic backward semantics ----------------------------------------------------
def test_simple_chain_rule_by_hand():
    x = t64([2.0])
    y = x * x * 3 + x          # dy/dx = 6x + 1 = 13
    y.backward()
    assert x.grad.item() == pytest.approx(13.0)


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = t64([3.0])
    y = x * x                  # x used twice in one op: d/dx = 2x
    z = y + x                  # and once more
    z.backward()
    assert x.grad.item() == pytest.approx(7.0)


def test_diamond_graph():
    x = t64([1.5])
    a, b = x.exp(), x * 2
    (a * b).backward()         # d/dx (2x e^x) = 2e^x + 2x e^x
    assert x.grad.item() == pytest.approx(2 * np.exp(1.5) * (1 + 1.5))


def test_grad_accumulates_across_backward_calls_until_zeroed():
    x = t64([1.0, 2.0])
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None


def test_long_chain_does_not_hit_recursion_limit():
    x = t64([1.0])
    y = x
    for _ in range(10_000):
        y = y + 1e-4 * y
    y.backward()
    expected = (1 + 1e-4) ** 10_000
    assert x.grad.item() == pytest.approx(expected, rel=1e-9)


def test_only_leaves_keep_grad_unless_retained():
    x = t64([1.0, 2.0])
    h = x * 2
    k = x * 3
    k.retain_grad()
    (h.sum() + k.sum()).backward()
    assert h.grad is None
    np.testing.assert_allclose(k.grad.numpy(), [1.0, 1.0])
    assert x.is_leaf and not h.is_leaf


def test_no_grad_and_detach_stop_recording():
    x = t64([1.0])
    with mc.no_grad():
        y = x * 2
        assert not mc.is_grad_enabled()
    assert mc.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    z = x.detach() * 2
    assert not z.requires_grad
    assert x.detach().array is x.array                           # shares data, not the graph


def test_requires_grad_propagates():
    a, b = t64([1.0]), t64([2.0], requires_grad=False)
    assert (a + b).requires_grad
    assert not (b + b).requires_grad


def test_backward_on_non_scalar_needs_a_gradient():
    x = t64(np.ones((3, 4)))
    y = x * 2
    with pytest.raises(RuntimeError, match=r"scalar.*shape \(3, 4\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(3, 4\)"):
        y.backward(np.ones((4, 3)))
    y.backward(np.full((3, 4), 0.5))
    np.testing.assert_allclose(x.grad.numpy(), np.ones((3, 4)))


def test_backward_on_constant_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        mc.tensor([1.0]).sum().backward()


def test_leaf_gradients_never_share_memory():
    a, b = t64([1.0]), t64([2.0])
    (a + b).backward()
    assert a.grad.array is not b.grad.array
    a.grad.array *= 10
    assert b.grad.array[0] == 1.0


# -- every elementary op passes gradcheck, on every backend --------------------
RNG = np.random.default_rng(0)
POS = RNG.uniform(0.5, 2.0, (3, 4))           # positive inputs for log/sqrt/pow
ANY = RNG.standard_normal((3, 4))

UNARY = {
    "neg": lambda x: -x,
    "exp": lambda x: x.exp(),
    "log": lambda x: x.log(),
    "sqrt": lambda x: x.sqrt(),
    "abs": lambda x: x.abs(),
    "pow_scalar": lambda x: x ** 3,
    "pow_fraction": lambda x: x ** 0.5,
    "clip": lambda x: x.clip(0.7, 1.6),
    "clip_min_only": lambda x: x.clip(min=1.0),
    "sum_all": lambda x: x.sum(),
    "sum_axis0": lambda x: x.sum(axis=0),
    "sum_axis_keep": lambda x: x.sum(axis=1, keepdims=True),
    "sum_neg_axis": lambda x: x.sum(axis=-1),
    "mean_all": lambda x: x.mean(),
    "mean_axes": lambda x: x.mean(axis=(0, 1), keepdims=True),
    "max_all": lambda x: x.max(),
    "max_axis": lambda x: x.max(axis=1).values,
    "min_axis": lambda x: x.min(dim=0, keepdim=True).values,
    "amax_axes": lambda x: x.amax(dim=(0, 1)),
    "var": lambda x: x.var(axis=1),
    "reshape": lambda x: x.reshape(4, 3) * mc.tensor(np.arange(12.0).reshape(4, 3), dtype="float64"),
    "transpose": lambda x: x.T @ mc.tensor(np.ones((3, 2)), dtype="float64"),
    "permute": lambda x: x.reshape(3, 2, 2).permute(2, 0, 1),
    "transpose_two": lambda x: x.reshape(3, 2, 2).transpose(0, 2),
    "flatten": lambda x: x.reshape(3, 2, 2).flatten(1),
    "index_slice": lambda x: x[1:, ::2],
    "index_int": lambda x: x[2],
    "index_repeat": lambda x: x[[0, 0, 2]],                   # repeated rows get summed grads
    "index_mask": lambda x: x[x.array > 1.0],
    "astype_roundtrip": lambda x: x.astype("float32").astype("float64") * 1.0,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_ops_gradcheck(backend, name):
    x = t64(POS if name in ("log", "sqrt", "pow_fraction") else POS * np.sign(ANY))
    if name == "astype_roundtrip":   # float32 rounding: only a loose check makes sense
        assert mc.gradcheck(UNARY[name], (x,), eps=1e-3, atol=1e-3, rtol=1e-3)
        return
    assert mc.gradcheck(UNARY[name], (x,))


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "maximum": lambda a, b: F.maximum(a, b),
}
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((4,), (2, 3, 4))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_binary_ops_with_broadcasting_gradcheck(backend, name, shapes):
    rs = np.random.default_rng(1)
    a = t64(rs.uniform(0.5, 2.0, shapes[0]))
    b = t64(rs.uniform(0.5, 2.0, shapes[1]) + (0.01 if name == "maximum" else 0))
    assert mc.gradcheck(BINARY[name], (a, b))


def test_scalars_on_either_side(backend):
    x = t64(POS)
    for f in (lambda x: 2 + x, lambda x: 2 - x, lambda x: 2 * x, lambda x: 2 / x, lambda x: 2 ** x,
              lambda x: x - 2, lambda x: x / 2):
        assert mc.gradcheck(f, (x,))


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                    ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                    ((1, 3, 4), (2, 4, 2))], ids=str)
def test_matmul_gradcheck(backend, shapes):
    rs = np.random.default_rng(2)
    a, b = t64(rs.standard_normal(shapes[0])), t64(rs.standard_normal(shapes[1]))
    assert mc.gradcheck(lambda a, b: a @ b, (a, b))


def test_matmul_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"matmul: shape mismatch \(3, 4\) @ \(5, 2\)"):
        mc.tensor(np.ones((3, 4))) @ mc.tensor(np.ones((5, 2)))


def test_broadcast_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"add: shapes \(3, 4\) and \(3,\) cannot be broadcast"):
        mc.tensor(np.ones((3, 4))) + mc.tensor(np.ones(3))


def test_concatenate_and_stack_gradcheck(backend):
    rs = np.random.default_rng(3)
    a, b, c = t64(rs.standard_normal((2, 3))), t64(rs.standard_normal((4, 3))), t64(rs.standard_normal((2, 3)))
    assert mc.gradcheck(lambda a, b: mc.concatenate([a, b], axis=0), (a, b))
    assert mc.gradcheck(lambda a, c: mc.concatenate([a, c], axis=1), (a, c))
    assert mc.gradcheck(lambda a, c: mc.stack([a, c], axis=1), (a, c))
    with pytest.raises(ValueError, match="stack: tensor 1 has shape"):
        mc.stack([a, b])
    with pytest.raises(ValueError, match="concatenate along axis 1"):
        mc.concatenate([a, b], axis=1)


def test_max_ties_share_the_gradient():
    x = t64([1.0, 3.0, 3.0, 2.0])
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5, 0])


def test_comparisons_argmax_and_bool():
    x = mc.tensor([[1.0, 5.0], [7.0, 2.0]])
    np.testing.assert_array_equal(x.argmax(axis=1).numpy(), [1, 0])
    assert ((x > 2.0).numpy() == [[False, True], [True, False]]).all()
    assert (x.argmax(axis=1) == mc.tensor([1, 0])).all()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(x > 2.0)


def test_reshape_and_transpose_errors():
    x = mc.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cannot view a tensor of shape \(2, 3\)"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match="not a permutation"):
        x.permute(0, 0)
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"):
        x.sum(axis=2)
    with pytest.raises(IndexError, match=r"shape \(2, 3\)"):
        x[5]


def test_numpy_arrays_on_the_left_defer_to_tensor():
    x = t64([1.0, 2.0])
    y = np.array([3.0, 4.0]) * x
    assert isinstance(y, mc.Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 4.0])
