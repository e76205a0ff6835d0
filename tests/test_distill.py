"""kl_div and distillation_loss: the formulas, PyTorch's values and gradients, gradchecks on
every CPU backend; DistillationStep through fit (teacher frozen, in eval mode)."""
import warnings

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn.compress.distill import DistillationStep
from minicnn.train import fit

pytestmark = pytest.mark.tutorial12        # what tutorials/12_*.ipynb teaches (tests/README.md)

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")


def _probs(rs, shape):
    p = rs.random(shape) + 0.05
    return p / p.sum(axis=1, keepdims=True)


def _log_softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_gradcheck(cpu_backend, reduction, log_target):
    rs = np.random.default_rng(0)
    x = mc.tensor(_log_softmax_np(rs.standard_normal((4, 5))), requires_grad=True, dtype="float64")
    p = _probs(rs, (4, 5))
    t = mc.tensor(np.log(p) if log_target else p, requires_grad=True, dtype="float64")
    mc.gradcheck(lambda a, b: F.kl_div(a, b, reduction=reduction, log_target=log_target), [x, t])


def test_kl_div_formula_and_zero_target():
    x = np.log(np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]))
    p = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])          # zeros contribute 0 (0 log 0 = 0)
    per = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - x), 0.0)
    got = F.kl_div(mc.tensor(x, dtype="float64"), mc.tensor(p, dtype="float64"), reduction="none").numpy()
    np.testing.assert_allclose(got, per)
    bm = F.kl_div(mc.tensor(x, dtype="float64"), mc.tensor(p, dtype="float64"), reduction="batchmean").item()
    assert bm == pytest.approx((0.5 * np.log(0.5 / 0.3) + 0.5 * np.log(0.5 / 0.5) + np.log(1 / 0.6)) / 2)


def test_distillation_loss_gradcheck(cpu_backend):
    rs = np.random.default_rng(1)
    s = mc.tensor(rs.standard_normal((6, 4)) * 3, requires_grad=True, dtype="float64")
    t = mc.tensor(rs.standard_normal((6, 4)) * 3, requires_grad=True, dtype="float64")
    y = rs.integers(0, 4, 6)
    for T, alpha in [(1.0, 0.5), (4.0, 0.9), (2.0, 1.0), (8.0, 0.0)]:
        mc.gradcheck(lambda a, b: F.distillation_loss(a, b, y, temperature=T, alpha=alpha), [s, t])


def test_distillation_loss_formula_and_student_gradient():
    """Value = the formula; d soft-term / ds = alpha T (p_T(s) - p_T(t)) / N (the T^2 and 1/T)."""
    rs = np.random.default_rng(2)
    s_np, t_np, y = rs.standard_normal((5, 3)), rs.standard_normal((5, 3)), rs.integers(0, 3, 5)
    T, alpha = 4.0, 0.9
    ls, lt = _log_softmax_np(s_np / T), _log_softmax_np(t_np / T)
    kl = (np.exp(lt) * (lt - ls)).sum() / 5
    ce = -_log_softmax_np(s_np)[np.arange(5), y].mean()
    s = mc.tensor(s_np, requires_grad=True, dtype="float64")
    loss = F.distillation_loss(s, mc.tensor(t_np, dtype="float64"), y, temperature=T, alpha=alpha)
    assert loss.item() == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-12)
    loss.backward()
    p = lambda z: np.exp(_log_softmax_np(z))          # noqa: E731
    onehot = np.eye(3)[y]
    expected = alpha * T * (p(s_np / T) - p(t_np / T)) / 5 + (1 - alpha) * (p(s_np) - onehot) / 5
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_torch(reduction, log_target):
    rs = np.random.default_rng(3)
    x_np = _log_softmax_np(rs.standard_normal((4, 6)))
    p = _probs(rs, (4, 6))
    t_np = np.log(p) if log_target else p
    x, t = (mc.tensor(a, requires_grad=True, dtype="float64") for a in (x_np, t_np))
    tx, tt = (torch.tensor(a, requires_grad=True) for a in (x_np, t_np))
    ours = F.kl_div(x, t, reduction=reduction, log_target=log_target)
    with warnings.catch_warnings():                        # torch warns about "mean"
        warnings.simplefilter("ignore")
        theirs = torch.nn.functional.kl_div(tx, tt, reduction=reduction, log_target=log_target)
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-12)
    v = rs.standard_normal(ours.shape)
    (ours * mc.tensor(v, dtype="float64")).sum().backward()
    (theirs * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=1e-10, atol=1e-15)


@needs_torch
def test_distillation_loss_matches_torch():
    rs = np.random.default_rng(4)
    s_np, t_np, y = rs.standard_normal((8, 10)) * 2, rs.standard_normal((8, 10)) * 2, rs.integers(0, 10, 8)
    tf = torch.nn.functional
    for T, alpha in [(2.0, 0.5), (4.0, 0.9), (8.0, 0.7)]:
        s = mc.tensor(s_np, requires_grad=True, dtype="float64")
        ts = torch.tensor(s_np, requires_grad=True)
        ours = F.distillation_loss(s, mc.tensor(t_np, dtype="float64"), y, temperature=T, alpha=alpha)
        theirs = alpha * T * T * tf.kl_div(tf.log_softmax(ts / T, 1), tf.softmax(torch.tensor(t_np) / T, 1),
                                           reduction="batchmean") \
            + (1 - alpha) * tf.cross_entropy(ts, torch.tensor(y))
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
        ours.backward()
        theirs.backward()
        np.testing.assert_allclose(s.grad.numpy(), ts.grad.numpy(), rtol=1e-10)


def test_errors():
    x = mc.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reduction"):
        F.kl_div(x, x, reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        F.kl_div(x, mc.tensor(np.zeros((3, 2))))
    with pytest.raises(ValueError, match="temperature"):
        F.distillation_loss(x, x, np.zeros(2, dtype=int), temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        F.distillation_loss(x, x, np.zeros(2, dtype=int), alpha=1.5)


def test_distillation_step_in_fit_keeps_teacher_fixed():
    from minicnn.data import DataLoader
    rs = np.random.default_rng(0)
    x = rs.standard_normal((64, 1, 2, 3)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(np.int64)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    teacher.train()
    before = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}
    student = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
    opt = mc.optim.SGD(student.parameters(), lr=0.1)
    step = DistillationStep(teacher, temperature=2.0, alpha=0.7)
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((m.training, mc.is_grad_enabled())))
    w0 = student[1].weight.numpy().copy()
    hist = fit(student, opt, DataLoader((x, y), batch_size=16, shuffle=True), 2, progress=False,
               log=lambda *a: None, train_step=step)
    assert len(hist["train_loss"]) == 2 and np.isfinite(hist["train_loss"]).all()
    assert seen and all(s == (False, False) for s in seen)       # eval mode, no graph
    assert teacher.training                                       # mode restored
    for k, v in teacher.state_dict().items():                     # BN stats and weights untouched
        np.testing.assert_array_equal(v.numpy(), before[k])
    assert all(p.grad is None for p in teacher.parameters())
    assert not np.array_equal(student[1].weight.numpy(), w0)
