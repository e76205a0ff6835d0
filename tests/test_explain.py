"""Attributions (minicnn.explain) against hand computations and PyTorch, on every backend."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import explain, models, optim, train

from test_attacks import torch_twin, images, linear_model, small_cnn

pytestmark = pytest.mark.tutorial15        # what tutorials/15_*.ipynb teaches (tests/README.md)


def test_saliency_is_the_input_gradient(backend):
    m = linear_model(k=3)
    W = m[1].weight.numpy()
    x = mc.tensor(images(4, (1, 4, 4)), dtype="float64")
    t = np.array([2, 0, 1, 2])
    # y_t = W[t] . x + b[t]: its gradient is the row W[t], whatever x is
    raw = explain.saliency(m, x, t, abs=False).numpy()
    np.testing.assert_allclose(raw, W[t].reshape(4, 1, 4, 4), atol=1e-14)
    np.testing.assert_allclose(explain.saliency(m, x, t).numpy(), np.abs(W[t]).reshape(4, 1, 4, 4), atol=1e-14)
    # one int target for every image
    np.testing.assert_allclose(explain.saliency(m, x, 1, abs=False).numpy(),
                               np.broadcast_to(W[1].reshape(1, 1, 4, 4), (4, 1, 4, 4)), atol=1e-14)


def test_saliency_smoothgrad_ig_match_pytorch(backend):
    model = small_cnn()
    torch, tnet = torch_twin(model)
    x = images(3)
    t = np.array([1, 4, 0])

    def tgrad(a):
        ta = torch.tensor(a, requires_grad=True)
        tnet(ta)[torch.arange(len(t)), torch.tensor(t)].sum().backward()
        return ta.grad.numpy()

    np.testing.assert_allclose(explain.saliency(model, mc.tensor(x, dtype="float64"), t).numpy(),
                               np.abs(tgrad(x)), atol=1e-12)
    # SmoothGrad: the same noise draws, sigma = 0.2 * (max - min) per image
    sg = explain.smoothgrad(model, mc.tensor(x, dtype="float64"), t, noise=0.2, samples=4, seed=3).numpy()
    rs = np.random.default_rng(3)
    span = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))).reshape(-1, 1, 1, 1)
    ref = np.mean([np.abs(tgrad(x + rs.standard_normal(x.shape) * 0.2 * span)) for _ in range(4)], axis=0)
    np.testing.assert_allclose(sg, ref, atol=1e-12)
    assert np.allclose(explain.smoothgrad(model, mc.tensor(x, dtype="float64"), t, noise=0.0, samples=2).numpy(),
                       np.abs(tgrad(x)), atol=1e-12)
    # integrated gradients, midpoint rule, zero baseline
    steps = 8
    ref = x * np.mean([tgrad((k + 0.5) / steps * x) for k in range(steps)], axis=0)
    att, gap = explain.integrated_gradients(model, mc.tensor(x, dtype="float64"), t, steps=steps)
    np.testing.assert_allclose(att.numpy(), ref, atol=1e-12)
    with torch.no_grad():
        f = tnet(torch.tensor(x))[torch.arange(3), torch.tensor(t)].numpy()
        f0 = tnet(torch.zeros(x.shape, dtype=torch.float64))[torch.arange(3), torch.tensor(t)].numpy()
    np.testing.assert_allclose(gap, ref.reshape(3, -1).sum(1) - (f - f0), atol=1e-10)


def test_integrated_gradients_completeness_on_the_reference_cnn(backend):
    mc.manual_seed(0)
    model = models.get_model("reference", normalize=(0.1307, 0.3081)).double().eval()
    x = mc.tensor(images(2, (1, 28, 28), seed=5) * 0.8, dtype="float64")
    t = np.array([3, 7])
    with mc.no_grad():
        z = model(x).numpy()[np.arange(2), t] - model(mc.tensor(np.zeros((2, 1, 28, 28)), dtype="float64")
                                                      ).numpy()[np.arange(2), t]
    gaps = []
    for steps in (5, 20, 200):
        att, gap = explain.integrated_gradients(model, x, t, steps=steps)
        assert att.shape == x.shape
        gaps.append(np.abs(gap) / np.abs(z))
    assert np.all(gaps[1] < gaps[0]) and np.all(gaps[2] < gaps[1]), gaps
    assert np.all(gaps[2] < 0.01), gaps


def _hand_grad_cam(model, layer, x, t):
    """Grad-CAM written out: capture A with a forward hook, dy_t/dA by backward, alpha = spatial mean."""
    store = {}

    def hook(module, inputs, output):
        output.retain_grad()
        store["A"] = output
    h = layer.register_forward_hook(hook)
    xt = mc.tensor(x, dtype="float64")
    out = model(xt)
    h.remove()
    sel = np.zeros(out.shape)
    sel[np.arange(len(t)), t] = 1
    (out * mc.tensor(sel, dtype="float64")).sum().backward()
    A, dA = store["A"].numpy(), store["A"].grad.numpy()
    model.zero_grad()
    return np.maximum((dA.mean(axis=(2, 3), keepdims=True) * A).sum(1), 0)


def test_grad_cam_equals_hand_computation_and_pytorch(backend):
    model = small_cnn()
    torch, tnet = torch_twin(model)
    x = images(3, seed=2)
    t = np.array([0, 2, 4])
    cam = explain.grad_cam(model, mc.tensor(x, dtype="float64"), t).numpy()       # default: last conv
    assert cam.shape == (3, 2, 2)
    np.testing.assert_allclose(cam, _hand_grad_cam(model, model[4], x, t), atol=1e-12)
    np.testing.assert_allclose(explain.grad_cam(model, mc.tensor(x, dtype="float64"), t, layer="4").numpy(),
                               cam, atol=0)
    first = explain.grad_cam(model, mc.tensor(x, dtype="float64"), t, layer=model[1]).numpy()
    assert first.shape == (3, 8, 8)
    np.testing.assert_allclose(first, _hand_grad_cam(model, model[1], x, t), atol=1e-12)
    # PyTorch, with its own hooks on the twin's last conv
    store = {}
    conv = [m for m in tnet.module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    def torch_hook(module, inputs, output):
        output.retain_grad()
        store["A"] = output
    h = conv.register_forward_hook(torch_hook)
    out = tnet(torch.tensor(x))
    h.remove()
    out[torch.arange(3), torch.tensor(t)].sum().backward()
    A, dA = store["A"], store["A"].grad
    ref = torch.relu((dA.mean(dim=(2, 3), keepdim=True) * A).sum(1)).detach().numpy()
    np.testing.assert_allclose(cam, ref, atol=1e-12)


def test_upsample_is_bilinear_like_pytorch():
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).random((2, 5, 4))
    ours = explain.upsample(a, (28, 13))
    ref = torch.nn.functional.interpolate(torch.tensor(a)[:, None], size=(28, 13), mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert explain.upsample(a[0], (10, 8)).shape == (10, 8)


class _OnePixel(nn.Module):
    """Class 1's logit is 3 * x[0, 0, 5, 2]; class 0's is constant: the model looks at one pixel."""

    def forward(self, x):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        w = np.zeros((2, flat.shape[1]))
        w[1, 5 * 8 + 2] = 3.0
        return flat @ mc.tensor(w.T, dtype=x.dtype)


def test_occlusion_lights_up_the_one_pixel_the_model_looks_at(backend):
    x = mc.tensor(images(2, (1, 8, 8), seed=1) + 0.1, dtype="float64")
    att = explain.occlusion(_OnePixel(), x, 1, window=(1, 1), stride=1).numpy()
    expected = np.zeros((2, 1, 8, 8))
    expected[:, 0, 5, 2] = 3.0 * x.numpy()[:, 0, 5, 2]
    np.testing.assert_allclose(att, expected, atol=1e-12)
    # larger windows: every covering window drops by the same amount, nothing outside them moves
    att = explain.occlusion(_OnePixel(), x, 1, window=(3, 3), stride=1).numpy()
    covered = np.zeros((8, 8), bool)
    covered[3:8, 0:5] = True
    assert np.all(att[:, 0][:, ~covered] == 0) and np.all(att[:, 0][:, covered] > 0)
    np.testing.assert_allclose(att[:, 0, 5, 2], 3.0 * x.numpy()[:, 0, 5, 2], atol=1e-12)


def _train_small_cnn_on_quadrants():
    from conftest import quadrant_images
    mc.manual_seed(0)
    x, y = quadrant_images(256, seed=0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 4))
    opt = optim.Adam(model.parameters(), lr=0.01)
    train.fit(model, opt, mc.data.DataLoader((x, y), batch_size=32, shuffle=True), 8, progress=False,
              log=lambda *a: None)
    return model.eval(), x, y


RANDOMISATION_BOUND = 0.5     # Spearman's rho between trained and re-initialised maps must stay below this


def test_model_randomisation_sanity_check(cpu_backend):
    """Adebayo et al. (2018): maps of a trained model and of the same net with random weights must differ."""
    model, x, y = _train_small_cnn_on_quadrants()
    xs = mc.tensor(x[:16, None])
    with mc.no_grad():
        assert (model(xs).numpy().argmax(1) == y[:16]).mean() > 0.9
    mc.manual_seed(123)
    random_model = type(model)(*[type(m)(**_args(m)) for m in model]).eval()
    for name, fn in (("saliency", lambda m: explain.saliency(m, xs, y[:16]).numpy()),
                     ("grad-cam", lambda m: explain.grad_cam(m, xs, y[:16]).numpy())):
        a, b = fn(model), fn(random_model)
        rhos = [explain.rank_correlation(a[i], b[i]) for i in range(16)]
        assert np.mean(rhos) < RANDOMISATION_BOUND, (name, np.mean(rhos))
    # and the check can fail: a map compared with itself correlates perfectly
    a = explain.saliency(model, xs, y[:16]).numpy()
    assert explain.rank_correlation(a[0], a[0]) == pytest.approx(1.0)


def _args(m):
    if isinstance(m, nn.Conv2d):
        return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size,
                    padding=m.padding)
    if isinstance(m, nn.Linear):
        return dict(in_features=m.in_features, out_features=m.out_features)
    if isinstance(m, nn.MaxPool2d):
        return dict(kernel_size=2)
    return {}


def test_explain_restores_mode_flags_and_gradients(backend):
    model = small_cnn()
    x = mc.tensor(images(2), dtype="float64")
    model(x).sum().backward()
    model[1].bias.requires_grad = False
    model[1].bias.grad = None
    model.train()
    before = {n: (p.requires_grad, None if p.grad is None else p.grad.numpy().copy())
              for n, p in model.named_parameters()}
    explain.saliency(model, x, 1)
    explain.smoothgrad(model, x, 1, samples=2, seed=0)
    explain.integrated_gradients(model, x, 1, steps=3)
    explain.grad_cam(model, x, 1)
    explain.occlusion(model, x, 1, window=4, stride=3)
    assert model.training and all(m.training for m in model.modules())
    for n, p in model.named_parameters():
        flag, g = before[n]
        assert p.requires_grad is flag
        assert (p.grad is None) if g is None else np.array_equal(p.grad.numpy(), g)
    assert all(not h for m in model.modules() for h in (m._forward_hooks,))     # Grad-CAM's hook removed


def test_explain_errors_are_clear():
    model = small_cnn()
    x = mc.tensor(images(2), dtype="float64")
    with pytest.raises(ValueError, match=r"target class must be in \[0, 4\], got 5"):
        explain.saliency(model, x, 5)
    with pytest.raises(ValueError, match=r"target class must be in \[0, 4\], got -1"):
        explain.integrated_gradients(model, x, [0, -1])
    with pytest.raises(ValueError, match="no layer named 'conv9'.*its conv layers are: 1, 4"):
        explain.grad_cam(model, x, 0, layer="conv9")
    with pytest.raises(ValueError, match="not part of the model"):
        explain.grad_cam(model, x, 0, layer=nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="needs a spatial map"):
        explain.grad_cam(model, x, 0, layer="7")
    with pytest.raises(ValueError, match=r"cannot take images of shape \(2, 1, 12, 12\)"):
        explain.saliency(model, mc.tensor(images(2, (1, 12, 12)), dtype="float64"), 0)
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\)"):
        explain.occlusion(model, mc.tensor(images(2)[:, 0], dtype="float64"), 0)
    with pytest.raises(ValueError, match="larger than the image"):
        explain.occlusion(model, x, 0, window=(11, 2))
