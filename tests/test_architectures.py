"""Architectures and introspection: MixedPool2d, DepthwiseSeparableConv2d, the new models,
width multipliers, and mc.summary (hand-computed MACs; parameter counts against PyTorch)."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import models, optim

pytestmark = pytest.mark.tutorial10        # what tutorials/10_*.ipynb teaches (tests/README.md)

NEW_MODELS = ["mobilenet", "plain-8", "resnet-8", "plain-20", "resnet-20"]


# -- MixedPool2d -------------------------------------------------------------------------------
@pytest.mark.parametrize("k,s,p,alpha", [(2, None, 0, 0.5), (3, 2, 1, 0.3), (3, 1, 1, 0.8)])
def test_mixed_pool_gradcheck_input_and_alpha(cpu_backend, k, s, p, alpha):
    pool = nn.MixedPool2d(k, s, p, alpha=alpha).double()
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 3, 7, 6)), requires_grad=True, dtype="float64")
    assert [n for n, _ in pool.named_parameters()] == ["alpha"] and pool.alpha.shape == ()
    assert mc.gradcheck(pool, [x])                       # checks x and the parameter alpha


def test_mixed_pool_is_max_at_1_avg_at_0_and_alpha_is_projected_into_0_1(cpu_backend):
    x = mc.tensor(np.random.default_rng(1).standard_normal((2, 2, 6, 6)), dtype="float64")
    pool = nn.MixedPool2d(2).double()
    mx, av = F.max_pool2d(x, 2).numpy(), F.avg_pool2d(x, 2).numpy()
    np.testing.assert_allclose(pool(x).numpy(), 0.5 * mx + 0.5 * av, rtol=1e-12)
    pool.alpha.array[...] = 1.7                            # an optimizer step overshot
    np.testing.assert_allclose(pool(x).numpy(), mx, rtol=1e-12)
    assert float(pool.alpha.numpy()) == 1.0
    pool.alpha.array[...] = -0.2
    np.testing.assert_allclose(pool(x).numpy(), av, rtol=1e-12)
    assert float(pool.alpha.numpy()) == 0.0
    # on the boundary the gradient still flows, so alpha can move back inside
    xg = mc.tensor(x.numpy(), requires_grad=True, dtype="float64")
    pool(xg).sum().backward()
    np.testing.assert_allclose(float(pool.alpha.grad.numpy()), (mx - av).sum(), rtol=1e-10)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        nn.MixedPool2d(2, alpha=1.5)


def test_mixed_pool_fixed_alpha_is_a_buffer_and_learnable_alpha_trains():
    fixed = nn.MixedPool2d(2, alpha=0.25, learnable=False)
    assert list(fixed.parameters()) == [] and "alpha" in fixed.state_dict()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MixedPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    opt = optim.SGD(model.parameters(), lr=0.5)
    x = mc.tensor(np.random.default_rng(2).standard_normal((8, 1, 8, 8)))
    y = mc.tensor(np.arange(8) % 2)
    before = float(model[1].alpha.numpy())
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model(x)
    after = float(model[1].alpha.numpy())
    assert after != before and 0.0 <= after <= 1.0


# -- DepthwiseSeparableConv2d --------------------------------------------------------------------
@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, False)])
def test_depthwise_separable_gradcheck_and_structure(cpu_backend, stride, padding, bias):
    layer = nn.DepthwiseSeparableConv2d(3, 5, 3, stride=stride, padding=padding, bias=bias).double()
    assert layer.depthwise.groups == 3 and layer.depthwise.weight.shape == (3, 1, 3, 3)
    assert layer.pointwise.weight.shape == (5, 3, 1, 1)
    x = mc.tensor(np.random.default_rng(3).standard_normal((2, 3, 7, 7)), requires_grad=True, dtype="float64")
    assert mc.gradcheck(layer, [x])
    # it is exactly the two convolutions, one after the other
    d, pw = layer.depthwise, layer.pointwise
    manual = F.conv2d(F.conv2d(x, d.weight, d.bias, stride, padding, groups=3), pw.weight, pw.bias)
    np.testing.assert_allclose(layer(x).numpy(), manual.numpy(), rtol=1e-12)


def test_depthwise_separable_costs_the_fraction_1_over_cout_plus_1_over_k2():
    cin, cout, k = 32, 64, 3
    sep = mc.summary(nn.DepthwiseSeparableConv2d(cin, cout, k, padding=1, bias=False), (1, cin, 14, 14))
    std = mc.summary(nn.Conv2d(cin, cout, k, padding=1, bias=False), (1, cin, 14, 14))
    assert sep.total_params == cin * k * k + cin * cout
    assert sep.total_macs / std.total_macs == pytest.approx(1 / cout + 1 / k ** 2)


# -- models --------------------------------------------------------------------------------------
def test_reference_width_1_is_unchanged_and_width_scales_channels():
    ref, default = models.get_model("reference", width=1.0), models.ReferenceCNN()
    assert [(n, p.shape) for n, p in ref.named_parameters()] == \
        [(n, p.shape) for n, p in default.named_parameters()]
    half = models.get_model("reference", width=0.5)
    assert [p.shape for p in half.parameters()] == [(16, 1, 3, 3), (16,), (32, 16, 3, 3), (32,),
                                                     (64, 800), (64,), (10, 64), (10,)]
    assert models.get_model("mobilenet", width=0.25)[0].out_channels == 4
    with pytest.raises(ValueError, match="'lenet5' has no option width"):
        models.get_model("lenet5", width=2)


def test_plain_and_resnet_pairs_have_equal_depth():
    def convs_on_main_path(m):
        return sum(isinstance(x, nn.Conv2d) for n, x in m.named_modules() if "shortcut" not in n)
    for depth in (8, 20):
        plain, res = models.get_model(f"plain-{depth}"), models.get_model(f"resnet-{depth}")
        assert convs_on_main_path(plain) + 1 == convs_on_main_path(res) + 1 == depth   # + the linear head
        assert not any("shortcut" in n for n, _ in plain.named_modules())


@pytest.mark.parametrize("name", NEW_MODELS + ["reference-w0.5"])
def test_every_new_model_trains_one_step_on_every_backend(backend, name):
    model = models.get_model("reference", width=0.5) if name == "reference-w0.5" else models.get_model(name)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = mc.tensor(np.random.default_rng(4).standard_normal((2, 1, 28, 28)).astype(np.float32))
    y = mc.tensor(np.array([0, 1]))
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert np.isfinite(loss.item())
    after = model.state_dict()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert not np.array_equal(before[n], after[n].numpy()), f"{n} did not change"


# -- mc.summary ----------------------------------------------------------------------------------
def test_summary_hand_computed_macs_for_the_reference_cnn():
    s = mc.summary(models.ReferenceCNN(), input_size=(1, 1, 28, 28))
    conv1 = 32 * 26 * 26 * (1 * 3 * 3)        # Cout * oh * ow * Cin * kh * kw
    conv2 = 64 * 11 * 11 * (32 * 3 * 3)
    fc1, fc2 = 1600 * 128, 128 * 10
    assert [s[n]["macs"] for n in ("0", "3", "7", "10")] == [conv1, conv2, fc1, fc2]
    assert s.total_macs == conv1 + conv2 + fc1 + fc2 == 2_631_040
    assert s.total_flops == 2 * s.total_macs
    for n in ("1", "2", "4", "5", "6", "8", "9"):             # activations, pooling, flatten, dropout
        assert s[n]["macs"] == 0
    assert s.total_params == s.trainable_params == 225_034
    assert s.param_bytes == 225_034 * 4
    assert s["3"]["output_shape"] == (1, 64, 11, 11) and s["10"]["output_shape"] == (1, 10)
    acts = 32 * 26 * 26 * 2 + 32 * 13 * 13 + 64 * 11 * 11 * 2 + 64 * 5 * 5 * 2 + 128 * 3 + 10
    assert s.activation_bytes == 4 * acts
    assert mc.summary(models.ReferenceCNN(), (3, 1, 28, 28)).total_macs == 3 * s.total_macs
    text = str(s)
    assert "Total MACs" in text and "FLOPs = 2 x MACs" in text and "225,034" in text and "2,230,272" in text


def test_summary_counts_macs_at_leaves_only_and_shared_params_once():
    model = models.get_model("resnet-8")
    s = mc.summary(model, (2, 1, 28, 28))
    assert s.total_macs == sum(r["macs"] for r in s.rows if r["leaf"])
    assert all(r["macs"] == 0 for r in s.rows if not r["leaf"])             # containers add nothing
    assert sum(r["params"] for r in s.rows) == s.total_params == sum(p.numel() for p in model.parameters())
    # a Linear used twice, and a second Linear sharing its weight
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    tied = nn.Sequential(a, nn.ReLU(), b)
    t = mc.summary(tied, (3, 4))
    assert t.total_params == 16 + 4 + 4 == sum(p.numel() for p in tied.parameters())
    assert t["2"]["params"] == 4 and t.total_macs == 2 * 3 * 16

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(F.relu(self.lin(x)))
    tw = mc.summary(Twice(), (3, 4))
    assert tw["lin"]["calls"] == 2 and tw.total_macs == 2 * 3 * 16 and tw.total_params == 20
    assert "Linear ×2" in str(tw)


def test_summary_trainable_counts_follow_freezing_and_modes_are_restored():
    model = models.get_model("reference-bn")
    nn.utils.freeze(model[:4])
    model.train()
    stats = model[1].running_mean.numpy().copy()
    s = mc.summary(model)
    assert s.trainable_params == s.total_params - (32 * 9 + 64)
    assert s.non_trainable_params == 32 * 9 + 64
    assert model.training and model[5].training and not model[1].training    # modes as before
    np.testing.assert_array_equal(model[1].running_mean.numpy(), stats)
    assert s.buffer_bytes == sum(b.numpy().nbytes for b in model.buffers())


# -- PyTorch as the oracle for parameter counts and names -----------------------------------------
def _torch_models(name, tnn):
    """The same architectures written in PyTorch, independently of minicnn's code."""
    def ref(width=1.0, bn=False):
        c1, c2, h = round(32 * width), round(64 * width), round(128 * width)
        if not bn:
            return tnn.Sequential(tnn.Conv2d(1, c1, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(c1, c2, 3),
                                  tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(c2 * 25, h),
                                  tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(h, 10))
        return tnn.Sequential(tnn.Conv2d(1, c1, 3, bias=False), tnn.BatchNorm2d(c1), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Conv2d(c1, c2, 3, bias=False), tnn.BatchNorm2d(c2), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Flatten(), tnn.Linear(c2 * 25, h, bias=False), tnn.BatchNorm1d(h), tnn.ReLU(),
                              tnn.Dropout(0.3), tnn.Linear(h, 10))

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride, residual):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.residual = residual
            if residual and (stride != 1 or cin != cout):
                self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))
            elif residual:
                self.shortcut = tnn.Identity()

        def forward(self, x):
            out = self.bn2(self.conv2(tnn.functional.relu(self.bn1(self.conv1(x)))))
            return tnn.functional.relu(out + self.shortcut(x) if self.residual else out)

    class ResNet(tnn.Module):
        def __init__(self, n, residual):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(1, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU())
            blocks, c = [], 16
            for i, w in enumerate((16, 32, 64)):
                for b in range(n):
                    blocks.append(Block(c, w, 2 if i > 0 and b == 0 else 1, residual))
                    c = w
            self.stages = tnn.Sequential(*blocks)
            self.pool, self.flatten, self.fc = tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))

    def mobilenet(width=1.0):
        ch = [max(1, round(c * width)) for c in (16, 32, 64, 64, 128, 128)]
        layers = [tnn.Conv2d(1, ch[0], 3, padding=1, bias=False), tnn.BatchNorm2d(ch[0]), tnn.ReLU()]
        for cin, cout, s in zip(ch[:-1], ch[1:], (1, 2, 1, 2, 1)):
            ds = tnn.Module()
            ds.depthwise = tnn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False)
            ds.pointwise = tnn.Conv2d(cin, cout, 1, bias=False)
            ds.forward = lambda x, ds=ds: ds.pointwise(ds.depthwise(x))
            layers += [ds, tnn.BatchNorm2d(cout), tnn.ReLU()]
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(ch[-1], 10))

    lenet = lambda: tnn.Sequential(  # noqa: E731
        tnn.Conv2d(1, 6, 5, padding=2), tnn.Tanh(), tnn.AvgPool2d(2), tnn.Conv2d(6, 16, 5), tnn.Tanh(),
        tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.Tanh(), tnn.Linear(120, 84), tnn.Tanh(),
        tnn.Linear(84, 10))
    return {"reference": ref, "reference-bn": lambda **k: ref(bn=True, **k), "lenet5": lenet,
            "tiny": lambda: tnn.Sequential(
                tnn.Conv2d(1, 8, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(8, 16, 3), tnn.ReLU(),
                tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 32), tnn.ReLU(), tnn.Linear(32, 10)),
            "resnet": lambda: ResNet(1, True), "resnet-8": lambda: ResNet(1, True),
            "resnet-20": lambda: ResNet(3, True), "plain-8": lambda: ResNet(1, False),
            "plain-20": lambda: ResNet(3, False), "mobilenet": mobilenet}[name]


CASES = [(n, {}) for n in sorted(models.MODELS)] + \
    [("reference", {"width": w}) for w in (0.25, 0.5, 2)] + [("mobilenet", {"width": 0.5})]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}{k}" for n, k in CASES])
def test_summary_param_totals_equal_pytorch_for_every_built_in_model(name, kwargs):
    torch = pytest.importorskip("torch")
    ours = models.get_model(name, **kwargs)
    theirs = _torch_models(name, torch.nn)(**kwargs)
    assert mc.summary(ours).total_params == sum(p.numel() for p in theirs.parameters())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}      # same names, same shapes


@pytest.mark.parametrize("name", ["mobilenet", "plain-8", "resnet-20", "reference-bn"])
def test_new_models_compute_what_pytorch_computes_with_the_same_weights(name):
    torch = pytest.importorskip("torch")
    ours = models.get_model(name).double().eval()
    theirs = _torch_models(name, torch.nn)().double().eval()
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(5).standard_normal((2, 1, 28, 28))
    with mc.no_grad(), torch.no_grad():
        np.testing.assert_allclose(ours(mc.tensor(x, dtype="float64")).numpy(),
                                   theirs(torch.tensor(x)).numpy(), rtol=1e-9, atol=1e-10)
