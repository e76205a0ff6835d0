"""Module hooks, requires_grad_ / freeze, and fit's pluggable training step."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import optim
from minicnn.train import Callback, fit, standard_step


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.tutorial15
def test_forward_hooks_run_in_registration_order_and_can_be_removed():
    model = _mlp()
    calls = []
    h1 = model[0].register_forward_pre_hook(lambda m, inp: calls.append("pre1"))
    h2 = model[0].register_forward_pre_hook(lambda m, inp: calls.append("pre2"))
    h3 = model[0].register_forward_hook(lambda m, inp, out: calls.append("post1"))
    h4 = model[0].register_forward_hook(lambda m, inp, out: calls.append("post2"))
    model(mc.tensor(np.ones((2, 4))))
    assert calls == ["pre1", "pre2", "post1", "post2"]
    calls.clear()
    h2.remove()
    h3.remove()
    model(mc.tensor(np.ones((2, 4))))
    assert calls == ["pre1", "post2"]
    h1.remove(), h4.remove()
    h1.remove()                                   # removing twice is harmless
    calls.clear()
    model(mc.tensor(np.ones((2, 4))))
    assert calls == []


@pytest.mark.tutorial15
def test_hooks_can_replace_inputs_and_outputs():
    lin = nn.Linear(2, 2)
    lin.weight.array[...] = np.eye(2)
    lin.bias.array[...] = 0
    x = mc.tensor(np.array([[1.0, 2.0]]))
    with lin.register_forward_pre_hook(lambda m, inp: (inp[0] * 10,)):
        np.testing.assert_allclose(lin(x).numpy(), [[10.0, 20.0]])
    h = lin.register_forward_pre_hook(lambda m, inp: inp[0] * 2)   # a non-tuple is wrapped
    np.testing.assert_allclose(lin(x).numpy(), [[2.0, 4.0]])
    h.remove()
    h = lin.register_forward_hook(lambda m, inp, out: out + 1)
    np.testing.assert_allclose(lin(x).numpy(), [[2.0, 3.0]])
    h.remove()
    np.testing.assert_allclose(lin(x).numpy(), [[1.0, 2.0]])


@pytest.mark.tutorial15
def test_hooks_fire_inside_nested_and_custom_forwards():
    from minicnn.models import SmallResNet
    model = SmallResNet()
    seen = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, out.shape)))
    model(mc.tensor(np.zeros((1, 1, 28, 28), np.float32)))
    names = [n for n, _ in seen]
    assert names[0] == "stem.0"
    assert "stages.1.shortcut.0" in names and "stages.0.conv2" in names
    assert dict(seen)["stages.2.conv1"] == (1, 64, 7, 7)


def test_hook_must_be_callable():
    with pytest.raises(TypeError, match="expected a callable"):
        nn.Linear(2, 2).register_forward_hook(3)


@pytest.mark.tutorial11
def test_requires_grad_false_gives_no_grad_and_optimizer_leaves_params_unchanged(cpu_backend):
    model = _mlp()
    assert model[0].requires_grad_(False) is model[0]
    frozen = {k: v.numpy().copy() for k, v in model[0].state_dict().items()}
    head = model[2].weight.numpy().copy()
    opt = optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    x = mc.tensor(np.random.default_rng(0).normal(size=(5, 4)))
    y = mc.tensor(np.array([0, 1, 2, 0, 1]))
    for _ in range(3):
        standard_step(model, opt, x, y, mc.functional.cross_entropy)
        assert model[0].weight.grad is None and model[0].bias.grad is None
        assert model[2].weight.grad is not None
    for k, v in model[0].state_dict().items():
        np.testing.assert_array_equal(v.numpy(), frozen[k])      # bit-identical
    assert not np.allclose(model[2].weight.numpy(), head)


@pytest.mark.tutorial11
def test_freeze_keeps_batchnorm_statistics_still_through_train():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    nn.utils.freeze(model[0])
    nn.utils.freeze(model[1])
    model.train()
    assert model.training and not model[1].training and model[4].training
    before = model[1].running_mean.numpy().copy()
    model(mc.tensor(np.random.default_rng(0).normal(size=(4, 1, 4, 4)) + 5.0))
    np.testing.assert_array_equal(model[1].running_mean.numpy(), before)
    # requires_grad_(False) alone leaves BN statistics moving (as in PyTorch)
    plain = nn.BatchNorm2d(2)
    plain.requires_grad_(False)
    plain.train()
    plain(mc.tensor(np.random.default_rng(0).normal(size=(4, 2, 3, 3)) + 5.0))
    assert not np.allclose(plain.running_mean.numpy(), 0)
    nn.utils.unfreeze(model)
    model.train()
    assert model[1].training and all(p.requires_grad for p in model.parameters())


@pytest.mark.tutorial11
def test_parameter_groups_small_backbone_lr_large_head_lr():
    model = _mlp()
    backbone, head = list(model[0].parameters()), list(model[2].parameters())
    opt = optim.SGD([{"params": backbone, "lr": 1e-3}, {"params": head, "lr": 1e-1}])
    before = [p.numpy().copy() for p in backbone + head]
    x = mc.tensor(np.random.default_rng(1).normal(size=(6, 4)))
    y = mc.tensor(np.array([0, 1, 2, 0, 1, 2]))
    out = model(x)
    loss = mc.functional.cross_entropy(out, y)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.numpy().copy() for p in backbone + head]
    opt.step()
    for p, b, g, lr in zip(backbone + head, before, grads, [1e-3] * 2 + [1e-1] * 2):
        np.testing.assert_allclose(p.numpy(), b - lr * g, rtol=1e-5, atol=1e-7)


@pytest.mark.tutorial14
def test_fit_uses_the_given_train_step_and_callbacks(tmp_path):
    from minicnn.data import DataLoader
    rs = np.random.default_rng(0)
    x = rs.normal(size=(32, 2, 2)).astype(np.float32)
    y = rs.integers(0, 3, 32)
    loader = DataLoader((x, y), batch_size=8, shuffle=True)
    model = nn.Sequential(nn.Flatten(), _mlp())
    opt = optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def counting_step(model, optimizer, xb, yb, loss_fn):
        calls.append(len(yb))
        return standard_step(model, optimizer, xb, yb, loss_fn)

    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_epoch_begin(self, epoch, model):
            self.events.append(("begin", epoch))

        def on_epoch_end(self, epoch, model, logs):
            self.events.append(("end", epoch, round(logs["train_loss"], 6)))

    rec = Recorder()
    history = fit(model, opt, loader, 2, train_step=counting_step, callbacks=[rec], progress=False,
                  log=lambda *a: None)
    assert calls == [8] * 8
    assert [e[:2] for e in rec.events] == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1)]
    assert rec.events[1][2] == round(history["train_loss"][0], 6)
