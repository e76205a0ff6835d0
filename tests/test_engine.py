"""The engine (minicnn/autograd/engine.py) and the operation observers (minicnn/autograd/observer.py).

* ``topological_order`` puts every tensor after the tensors it was computed
  from, on a diamond checked by hand, and needs no recursion for a long chain;
* ``backpropagate`` sums the gradients of a tensor used twice;
* an observer sees every forward in order and every backward in reverse
  topological order, with the gradients it should; observers nest and are
  removed even when the block raises;
* nothing in minicnn/ replaces ``Function.apply`` (the observers are the one hook).
"""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import minicnn as mc
from minicnn.autograd import observer as observe_module
from minicnn.autograd.anomaly import AnomalyError
from minicnn.autograd.engine import backpropagate, topological_order
from minicnn.autograd.observer import OperationObserver, observe

pytestmark = pytest.mark.tutorial01        # what tutorials/01_*.ipynb teaches (tests/README.md)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _diamond():
    """x -> a = 2x, x -> b = x + 1, (a, b) -> d = a * b: x reaches d along two paths."""
    x = mc.tensor([1.0, 2.0], requires_grad=True, dtype="float64")
    a = x * 2.0
    b = x + 1.0
    d = a * b
    return x, a, b, d


def test_topological_order_of_a_diamond_puts_each_tensor_after_its_inputs():
    x, a, b, d = _diamond()
    order = topological_order(d)
    # the constants 2.0 and 1.0 do not require grad, so only these four are listed
    assert sorted(map(id, order)) == sorted(map(id, (x, a, b, d)))
    position = {id(t): i for i, t in enumerate(order)}
    assert order[0] is x and order[-1] is d             # by hand: x first, d last,
    assert position[id(x)] < position[id(a)] < position[id(d)]   # a and b in between
    assert position[id(x)] < position[id(b)] < position[id(d)]
    for t in order:                                      # the property itself, for every tensor
        for parent in (t._ctx.inputs if t._ctx else ()):
            if parent is not None and parent.requires_grad:
                assert position[id(parent)] < position[id(t)]


def test_a_chain_of_ten_thousand_operations_needs_no_recursion():
    x = mc.tensor(1.0, requires_grad=True, dtype="float64")
    y = x
    for _ in range(10_000):
        y = y * 1.0
    assert len(topological_order(y)) == 10_001          # far past the recursion limit (1000)
    y.backward()
    assert x.grad.item() == 1.0


def test_backpropagate_sums_the_gradients_of_a_tensor_used_twice():
    x = mc.tensor(3.0, requires_grad=True, dtype="float64")
    y = x * x                                            # x is both inputs: dy/dx = x + x
    backpropagate(y, np.ones((), dtype=np.float64))
    assert x.grad.item() == 6.0


def test_the_docstring_example_of_topological_order():
    x = mc.tensor(2.0, requires_grad=True)
    y = x * 3
    z = y * y + y                                        # dz/dy = 2y + 1 = 13, dz/dx = 13 * 3
    assert [t._ctx is None for t in topological_order(z)] == [True, False, False, False]
    z.backward()
    assert x.grad.item() == 39.0


class _Recorder(OperationObserver):
    def __init__(self, name="", log=None):
        self.name, self.log = name, log if log is not None else []
        self.forwards, self.backwards = [], []

    def on_forward(self, fn, inputs, options, output):
        self.forwards.append((fn, inputs, options, output))
        self.log.append((self.name, "forward", type(fn).__name__))

    def on_backward(self, fn, grad_output, input_grads):
        self.backwards.append((fn, grad_output, input_grads))
        self.log.append((self.name, "backward", type(fn).__name__))


def test_an_observer_sees_every_forward_in_order_and_every_backward_in_reverse_topological_order():
    x = mc.tensor([1.0, 2.0], requires_grad=True, dtype="float64")
    w = mc.tensor([3.0, 5.0], requires_grad=True, dtype="float64")
    with observe(_Recorder()) as seen:
        y = x * w
        z = y.sum(axis=0)
        z.backward()
    assert [type(fn).__name__ for fn, *_ in seen.forwards] == ["MulFn", "SumFn"]
    (mul, mul_inputs, _, mul_out), (total, sum_inputs, sum_options, sum_out) = seen.forwards
    assert mul_inputs == (x, w) and mul_out is y and sum_inputs == (y,) and sum_out is z
    assert sum_options == {"axis": 0, "keepdims": False}
    # backward: the reverse of the topological order, output first
    made_by = [t._ctx for t in reversed(topological_order(z)) if t._ctx is not None]
    assert [fn for fn, _, _ in seen.backwards] == made_by == [total, mul]
    (_, g_sum, sum_grads), (_, g_mul, (dx, dw)) = seen.backwards
    assert g_sum == 1.0 and np.array_equal(sum_grads[0], [1.0, 1.0])
    assert np.array_equal(g_mul, [1.0, 1.0])
    assert np.array_equal(dx, w.array) and np.array_equal(dw, x.array)     # d(xw)/dx = w, d/dw = x


def test_observers_nest_outermost_first_and_are_removed_even_after_an_exception():
    log = []
    x = mc.tensor([1.0], requires_grad=True)
    with observe(_Recorder("outer", log)):
        x * 2.0
        with observe(_Recorder("inner", log)):
            x + 1.0
        x - 1.0
    assert log == [("outer", "forward", "MulFn"),
                   ("outer", "forward", "AddFn"), ("inner", "forward", "AddFn"),
                   ("outer", "forward", "SubFn")]
    assert observe_module.observers == []
    with pytest.raises(ZeroDivisionError):
        with observe(_Recorder()):
            with observe(_Recorder()):
                1 / 0
    assert observe_module.observers == []               # nobody is left watching


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")
def test_detect_anomaly_is_an_observer_and_still_names_the_users_line_and_the_minicnn_line():
    x = mc.tensor([0.0, 1.0], requires_grad=True)
    with pytest.raises(AnomalyError) as e:
        with mc.detect_anomaly():
            x.log()   # the line the error must quote
    message = str(e.value)
    assert "test_engine.py" in message and "x.log()   # the line the error must quote" in message
    assert re.search(r"inside minicnn at .*tensor\.py:\d+ in log", message), message
    assert observe_module.observers == []
    with mc.detect_anomaly():                            # nested: the innermost one's settings win
        with mc.detect_anomaly(check_forward=False):
            x.log()


def test_nothing_in_minicnn_replaces_function_apply():
    """The observers (observe.py) are the one way to watch operations: no monkey-patching."""
    patch = re.compile(r"\.apply\s*=[^=]|setattr\(\s*Function\s*,\s*['\"]apply")
    offenders = [f"{path.relative_to(ROOT)}:{n}"
                 for path in sorted((ROOT / "minicnn").rglob("*.py"))
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if patch.search(line)]
    assert not offenders, offenders
