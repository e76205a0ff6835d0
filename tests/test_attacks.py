"""FGSM, PGD, robust accuracy and adversarial training (minicnn.attacks).

The images the attacks produce are compared with the formulas computed
independently here (a linear model's input gradient in closed form) and with
PyTorch on the same float64 weights; the ε-ball, the clamp, restarts, and
the restoring of the model's mode and gradients are checked on every backend.
"""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import attacks, models, optim, train

from conftest import quadrant_images

pytestmark = pytest.mark.tutorial14        # what tutorials/14_*.ipynb teaches (tests/README.md)


def small_cnn(num_classes=5):
    """Normalize -> conv -> relu -> pool -> conv -> relu -> flatten -> linear, for 1x10x10 images."""
    return nn.Sequential(nn.Normalize(0.3, 0.2), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, num_classes)).double().eval()


def linear_model(d=(1, 4, 4), k=3, seed=0):
    m = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(d)), k)).double()
    rs = np.random.default_rng(seed)
    m.load_state_dict({"1.weight": rs.standard_normal(m[1].weight.shape), "1.bias": rs.standard_normal(k)})
    return m.eval()


def images(n=6, shape=(1, 10, 10), seed=0):
    return np.random.default_rng(seed).random((n, *shape))


def ce_input_grad_linear(W, b, x, y):
    """∇x of mean cross-entropy of softmax(W x + b): W^T (p - onehot(y)) / N, in closed form."""
    n = len(x)
    z = x.reshape(n, -1) @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), y] -= 1
    return (p @ W / n).reshape(x.shape)


# -----------------------------------------------------------------------------
# Exact images: independent formulas and PyTorch
# -----------------------------------------------------------------------------
def test_fgsm_and_pgd_equal_closed_form_on_linear_model(backend):
    m = linear_model()
    W, b = m[1].weight.numpy(), m[1].bias.numpy()
    x = images(8, (1, 4, 4), seed=1)
    y = np.array([0, 1, 2, 0, 1, 2, 1, 0])
    eps = 0.07
    adv = attacks.fgsm(m, mc.tensor(x, dtype="float64"), mc.tensor(y), eps)
    expected = np.clip(x + eps * np.sign(ce_input_grad_linear(W, b, x, y)), 0, 1)
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-12)
    # targeted: step against the target class's loss
    t = (y + 1) % 3
    adv = attacks.fgsm(m, mc.tensor(x, dtype="float64"), mc.tensor(t), eps, targeted=True)
    np.testing.assert_allclose(adv.numpy(), np.clip(x - eps * np.sign(ce_input_grad_linear(W, b, x, t)), 0, 1),
                               atol=1e-12)
    # PGD without random start: the loop written out
    alpha, steps = 0.02, 6
    a = x.copy()
    for _ in range(steps):
        a = np.clip(np.clip(a + alpha * np.sign(ce_input_grad_linear(W, b, a, y)), x - eps, x + eps), 0, 1)
    adv = attacks.pgd(m, mc.tensor(x, dtype="float64"), mc.tensor(y), eps, alpha, steps, random_start=False)
    np.testing.assert_allclose(adv.numpy(), a, atol=1e-12)


def torch_twin(model):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                             torch.nn.Linear(24, 5)).double().eval()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    tm.load_state_dict({f"{int(k.split('.')[0]) - 1}.{k.split('.')[1]}": torch.tensor(v)
                        for k, v in sd.items() if not k.startswith("0.")})

    mean, std = float(model[0].mean.numpy()[0]), float(model[0].std.numpy()[0])   # float32-rounded 0.3, 0.2

    def forward(x):                     # the same Normalize in front
        return tm((x - mean) / std)
    forward.module = tm
    return torch, forward


def test_fgsm_and_pgd_match_pytorch(backend):
    model = small_cnn()
    torch, tnet = torch_twin(model)
    x = images(6)
    y = np.array([0, 1, 2, 3, 4, 0])

    def tgrad(a, labels):
        ta = torch.tensor(a, requires_grad=True)
        torch.nn.functional.cross_entropy(tnet(ta), torch.tensor(labels)).backward()
        return ta.grad.numpy()

    eps = 0.1
    ours = attacks.fgsm(model, mc.tensor(x, dtype="float64"), mc.tensor(y), eps).numpy()
    np.testing.assert_allclose(ours, np.clip(x + eps * np.sign(tgrad(x, y)), 0, 1), atol=1e-12)
    t = (y + 2) % 5
    ours = attacks.fgsm(model, mc.tensor(x, dtype="float64"), mc.tensor(t), eps, targeted=True).numpy()
    np.testing.assert_allclose(ours, np.clip(x - eps * np.sign(tgrad(x, t)), 0, 1), atol=1e-12)
    a = x.copy()
    for _ in range(5):
        a = torch.clamp(torch.min(torch.max(torch.tensor(a) + 0.03 * torch.sign(torch.tensor(tgrad(a, y))),
                                            torch.tensor(x - eps)), torch.tensor(x + eps)), 0, 1).numpy()
    ours = attacks.pgd(model, mc.tensor(x, dtype="float64"), mc.tensor(y), eps, 0.03, 5, random_start=False)
    np.testing.assert_allclose(ours.numpy(), a, atol=1e-12)


# -----------------------------------------------------------------------------
# Constraints, restarts, determinism
# -----------------------------------------------------------------------------
def test_pgd_stays_in_eps_ball_and_clamp(backend):
    model = small_cnn()
    x = images(8, seed=3)
    y = np.arange(8) % 5
    for eps in (0.0, 0.05, 0.3):
        adv = attacks.pgd(model, mc.tensor(x, dtype="float64"), mc.tensor(y), eps, steps=4, seed=0).numpy()
        assert np.all(np.abs(adv - x) <= eps + 1e-12), eps
        assert adv.min() >= 0 and adv.max() <= 1
    # without the clamp the ball is all that holds, and a large ε leaves [0, 1]
    adv = attacks.pgd(model, mc.tensor(x, dtype="float64"), mc.tensor(y), 0.5, steps=3, clamp=None, seed=0).numpy()
    assert np.all(np.abs(adv - x) <= 0.5 + 1e-12) and (adv.min() < 0 or adv.max() > 1)
    adv = attacks.fgsm(model, mc.tensor(x, dtype="float64"), mc.tensor(y), 0.2).numpy()
    assert np.all(np.abs(adv - x) <= 0.2 + 1e-12) and adv.min() >= 0 and adv.max() <= 1


def _losses(model, x, y):
    with mc.no_grad():
        z = model(x).numpy()
    z = z - z.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


def test_restarts_never_make_an_example_less_adversarial(cpu_backend):
    model = small_cnn()
    x = mc.tensor(images(10, seed=4), dtype="float64")
    y = np.arange(10) % 5
    one = attacks.pgd(model, x, mc.tensor(y), 0.1, steps=3, restarts=1, seed=7)
    many = attacks.pgd(model, x, mc.tensor(y), 0.1, steps=3, restarts=5, seed=7)
    l1, l5 = _losses(model, one, y), _losses(model, many, y)
    assert np.all(l5 >= l1 - 1e-12)
    assert np.any(l5 > l1 + 1e-9)           # the extra restarts found something here
    # same seed, same result; deterministic without a random start
    again = attacks.pgd(model, x, mc.tensor(y), 0.1, steps=3, restarts=5, seed=7)
    np.testing.assert_array_equal(many.numpy(), again.numpy())
    a = attacks.pgd(model, x, mc.tensor(y), 0.1, 0.02, 3, random_start=False)
    b = attacks.pgd(model, x, mc.tensor(y), 0.1, 0.02, 3, random_start=False, restarts=3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_attacks_restore_mode_flags_and_gradients(backend):
    model = models.get_model("reference", normalize=(0.1307, 0.3081)).double()
    x = mc.tensor(images(2, (1, 28, 28)), dtype="float64")
    y = mc.tensor(np.array([3, 5]))
    F.cross_entropy(model(x), y).backward()
    model[1][0].weight.requires_grad = False           # a frozen layer stays frozen
    model[1][0].weight.grad = None
    before = {n: (p.requires_grad, None if p.grad is None else p.grad.numpy().copy())
              for n, p in model.named_parameters()}
    for train_mode in (True, False):
        model.train(train_mode)
        attacks.fgsm(model, x, y, 0.1)
        attacks.pgd(model, x, y, 0.1, steps=2, restarts=2, seed=0)
        assert model.training is train_mode
        assert all(m.training is train_mode for m in model.modules())
        for n, p in model.named_parameters():
            flag, g = before[n]
            assert p.requires_grad is flag, n
            assert (p.grad is None) if g is None else np.array_equal(p.grad.numpy(), g), n
    assert not x.requires_grad and x.grad is None


def test_attack_errors_are_clear():
    model = small_cnn()
    x = mc.tensor(images(2), dtype="float64")
    y = mc.tensor(np.array([0, 1]))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        attacks.fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        attacks.pgd(model, x, y, -1.0)
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\]"):
        attacks.fgsm(model, x, mc.tensor(np.array([0, 5])), 0.1)
    with pytest.raises(ValueError, match="target class"):
        attacks.pgd(model, x, mc.tensor(np.array([0, 9])), 0.1, targeted=True)
    with pytest.raises(ValueError, match=r"cannot take images of shape \(2, 1, 12, 12\)"):
        attacks.fgsm(model, mc.tensor(images(2, (1, 12, 12)), dtype="float64"), y, 0.1)
    with pytest.raises(ValueError, match="restarts"):
        attacks.pgd(model, x, y, 0.1, restarts=0)
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.robust_accuracy(model, [(x, y)], "cw", [0.1])


# -----------------------------------------------------------------------------
# Robust accuracy and the gradient-masking check
# -----------------------------------------------------------------------------
class _ReversedGradientFn(mc.Function):
    """Identity forward, negated gradient backward: a model that lies about its gradients."""

    def forward(self, x):
        return x

    def backward(self, g):
        return -g


class _Masked(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(_ReversedGradientFn.apply(x))


def _trained_quadrant_model():
    mc.manual_seed(0)
    x, y = quadrant_images(160, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = optim.Adam(model.parameters(), lr=0.02)
    loader = mc.data.DataLoader((x, y), batch_size=32, shuffle=True)
    train.fit(model, opt, loader, 15, progress=False, log=lambda *a: None)
    return model.eval(), mc.data.DataLoader((x[:96], y[:96]), batch_size=48)


def test_robust_accuracy_curve_and_masking_warning(cpu_backend, recwarn):
    model, loader = _trained_quadrant_model()
    res = attacks.robust_accuracy(model, loader, "pgd", [0.0, 0.05, 0.15, 0.3], steps=10, seed=0)
    assert res.count == 96 and res.clean > 0.9
    assert res.accuracy[0] == pytest.approx(res.clean)
    assert all(a >= b - 1e-12 for a, b in zip(res.accuracy, res.accuracy[1:]))     # non-increasing in ε
    assert res.accuracy[-1] < 0.2 * res.clean
    assert all(p <= f + 1e-12 for p, f in zip(res.accuracy, res.fgsm))
    assert not res.warnings and not [w for w in recwarn if "masking" in str(w.message)]
    # a model whose gradients point the wrong way: PGD "fails" (it even helps), while random
    # noise of the same size flips images near the boundary (quadrant only 0.12 brighter) -> warning
    rs = np.random.default_rng(5)
    x = rs.random((96, 8, 8)).astype(np.float32) * 0.5
    y = rs.integers(0, 4, 96)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.12
    hard = mc.data.DataLoader((x, y), batch_size=48)
    with pytest.warns(UserWarning, match="gradient masking"):
        res = attacks.robust_accuracy(_Masked(model), hard, "pgd", [0.2], steps=10, seed=0)
    assert res.warnings and res.accuracy[0] > res.noise[0] + 0.1


# -----------------------------------------------------------------------------
# Adversarial training
# -----------------------------------------------------------------------------
def test_adversarial_step_eps0_is_the_standard_step(cpu_backend):
    x, y = quadrant_images(32, seed=1)
    xb, yb = mc.tensor(x[:, None]), mc.tensor(y)
    weights = []
    for step in (train.standard_step, attacks.AdversarialTraining(0.0, steps=2)):
        mc.manual_seed(3)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        opt = optim.SGD(m.parameters(), lr=0.1)
        loss, out = step(m, opt, xb, yb, F.cross_entropy)
        weights.append(m[1].weight.numpy())
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-6, atol=1e-7)


def test_adversarial_step_in_pixel_units_with_normalised_batches(cpu_backend):
    """Normalised batches + normalization=(m, s) == pixel batches into Normalize -> model: same ε, same step."""
    x, y = quadrant_images(16, seed=2)
    mean, std = 0.25, 0.3
    results = []
    for normalised in (True, False):
        mc.manual_seed(5)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double()
        if normalised:
            net, batch = m, mc.tensor(((x - mean) / std)[:, None], dtype="float64")
            step = attacks.AdversarialTraining(0.1, steps=3, normalization=(mean, std))
        else:
            net, batch = nn.Sequential(nn.Normalize(mean, std), m).double(), mc.tensor(x[:, None], dtype="float64")
            step = attacks.AdversarialTraining(0.1, steps=3)
        opt = optim.SGD(m.parameters(), lr=0.1)
        mc.manual_seed(9)
        loss, _ = step(net, opt, batch, mc.tensor(y), F.cross_entropy)
        results.append((loss.item(), m[1].weight.numpy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)


def test_adversarial_training_buys_robustness(cpu_backend):
    """On the quadrant task: PGD training keeps clean accuracy and raises PGD accuracy at ε = 0.2."""
    x, y = quadrant_images(192, seed=0)
    test = mc.data.DataLoader(quadrant_images(96, seed=1), batch_size=48)
    accs = {}
    for name, step in (("plain", None), ("pgd", attacks.AdversarialTraining(0.2, steps=5))):
        mc.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = optim.Adam(m.parameters(), lr=0.02)
        train.fit(m, opt, mc.data.DataLoader((x, y), batch_size=32, shuffle=True), 12, train_step=step,
                  progress=False, log=lambda *a: None)
        accs[name] = attacks.robust_accuracy(m, test, "pgd", [0.2], steps=10, seed=0, sanity_check=False)
    assert accs["pgd"].clean > 0.9
    assert accs["pgd"].accuracy[0] > accs["plain"].accuracy[0] + 0.2, (accs["plain"], accs["pgd"])


# -----------------------------------------------------------------------------
# nn.Normalize: the layer that puts the model's input in pixel units
# -----------------------------------------------------------------------------
def test_normalize_layer(cpu_backend):
    layer = nn.Normalize([0.5, 0.25, 0.1], [0.5, 2.0, 0.25]).double()
    assert list(layer.parameters()) == [] and set(layer.state_dict()) == {"mean", "std"}
    x = np.random.default_rng(0).random((2, 3, 4, 5))
    expected = (x - np.array([0.5, 0.25, 0.1]).reshape(1, 3, 1, 1)) / np.array([0.5, 2.0, 0.25]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(layer(mc.tensor(x, dtype="float64")).numpy(), expected, atol=1e-7)
    assert mc.gradcheck(lambda t: layer(t), [mc.tensor(x, requires_grad=True, dtype="float64")])
    wrapped = models.get_model("reference", normalize=(0.1307, 0.3081))
    assert isinstance(wrapped[0], nn.Normalize) and isinstance(wrapped[1], models.ReferenceCNN)
    assert "0.mean" in wrapped.state_dict() and "1.0.weight" in wrapped.state_dict()
    with pytest.raises(ValueError, match="std must be positive"):
        nn.Normalize(0.1, 0.0)
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        layer(mc.tensor(np.zeros((2, 1, 4, 4))))
