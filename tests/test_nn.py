"""nn.Module bookkeeping, state_dict, initialisation and the layers' contracts."""
import math

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn


def reference_cnn():
    from minicnn.models import ReferenceCNN
    return ReferenceCNN()


def test_named_parameters_use_pytorch_dotted_names_and_shapes():
    model = reference_cnn()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert shapes == {"0.weight": (32, 1, 3, 3), "0.bias": (32,), "3.weight": (64, 32, 3, 3), "3.bias": (64,),
                      "7.weight": (128, 1600), "7.bias": (128,), "10.weight": (10, 128), "10.bias": (10,)}
    assert model.num_parameters() == 32 * 9 + 32 + 64 * 288 + 64 + 1600 * 128 + 128 + 1280 + 10
    assert all(p.dtype == np.float32 and p.requires_grad for p in model.parameters())


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.scale = nn.Parameter(mc.tensor([1.0]))

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) * self.scale + x)


def test_nested_modules_buffers_and_modes():
    model = nn.Sequential(Block(), nn.Dropout(0.2))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.scale", "0.conv.weight", "0.bn.weight", "0.bn.bias"]
    assert [n for n, _ in model.named_buffers()] == ["0.bn.running_mean", "0.bn.running_var",
                                                     "0.bn.num_batches_tracked"]
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_shared_parameter_is_listed_once():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(model.parameters())) == 2


def test_state_dict_round_trip_and_independence():
    mc.manual_seed(0)
    a = nn.Sequential(Block())
    mc.manual_seed(1)
    b = nn.Sequential(Block())
    a(mc.tensor(np.random.default_rng(0).standard_normal((2, 2, 4, 4))))   # move running stats
    b.load_state_dict({k: v.numpy() for k, v in a.state_dict().items()})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    b[0].conv.weight.data += 1                                            # loaded values are copies
    assert not np.array_equal(a[0].conv.weight.numpy(), b[0].conv.weight.numpy())


def test_load_state_dict_strict_errors_list_every_problem():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    bad = dict(sd)
    del bad["2.bias"]
    bad["2.extra"] = np.zeros(2)
    bad["0.weight"] = np.zeros((3, 5))
    with pytest.raises(KeyError) as e:
        model.load_state_dict(bad)
    msg = str(e.value)
    assert "missing keys: 2.bias" in msg and "unexpected keys: 2.extra" in msg
    assert "0.weight: expected shape (3, 4), got (3, 5)" in msg
    before = model[0].weight.numpy()
    np.testing.assert_array_equal(model[0].weight.numpy(), before)       # nothing changed
    # non-strict: missing/unexpected tolerated, shapes still checked
    del bad["0.weight"]
    result = model.load_state_dict(bad, strict=False)
    assert result["missing_keys"] == ["0.weight", "2.bias"] and result["unexpected_keys"] == ["2.extra"]


def test_repr_reads_like_pytorch():
    text = repr(reference_cnn())
    assert "(0): Conv2d(1, 32, kernel_size=(3, 3), stride=(1, 1))" in text
    assert "(7): Linear(in_features=1600, out_features=128, bias=True)" in text
    assert "(9): Dropout(p=0.5)" in text
    assert text.startswith("ReferenceCNN(\n") and text.endswith("\n)")      # the class name, as PyTorch


def test_sequential_indexing_and_errors():
    model = reference_cnn()
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[-1], nn.Linear)
    assert len(model[:3]) == 3
    with pytest.raises(IndexError, match="out of range for 11 modules"):
        model[11]


def test_assigning_a_plain_tensor_to_a_parameter_slot_is_an_error():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"expected an nn.Parameter or None"):
        lin.weight = mc.tensor(np.zeros((2, 2)))


def test_zero_grad_and_double():
    model = nn.Sequential(nn.Linear(3, 2))
    F.cross_entropy(model(mc.tensor(np.ones((4, 3)))), mc.tensor([0, 1, 0, 1])).backward()
    assert model[0].weight.grad is not None
    model.zero_grad()
    assert model[0].weight.grad is None
    model.double()
    assert model[0].weight.dtype == np.float64


@pytest.mark.tutorial04
def test_default_init_bounds_match_pytorch():
    mc.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)
    w = conv.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)       # U(-b, b) has sd b/sqrt(3)
    lin = nn.Linear(400, 10)
    assert np.abs(lin.bias.numpy()).max() <= 1 / 20


@pytest.mark.parametrize("fn,expected_std", [
    (lambda w: nn.init.xavier_uniform_(w), math.sqrt(2 / (64 * 9 + 128 * 9))),
    (lambda w: nn.init.xavier_normal_(w), math.sqrt(2 / (64 * 9 + 128 * 9))),
    (lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"), math.sqrt(2 / (64 * 9))),
    (lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2 / (64 * 9))),
    (lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / (128 * 9))),
    (lambda w: nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain("tanh")),
     5 / 3 * math.sqrt(2 / (64 * 9 + 128 * 9))),
], ids=["xavier_u", "xavier_n", "he_u", "he_n", "he_fan_out", "xavier_tanh"])
@pytest.mark.tutorial04
def test_init_variances(fn, expected_std):
    w = nn.Parameter(np.zeros((128, 64, 3, 3), dtype=np.float32))
    fn(w)
    assert w.numpy().std() == pytest.approx(expected_std, rel=0.02)        # 73,728 draws
    assert abs(w.numpy().mean()) < 0.05 * expected_std


@pytest.mark.tutorial04
def test_init_helpers_and_seed_reproducibility():
    w = nn.Parameter(np.zeros((3, 4), dtype=np.float32))
    nn.init.ones_(w)
    assert (w.numpy() == 1).all()
    nn.init.zeros_(w)
    assert (w.numpy() == 0).all()
    mc.manual_seed(5)
    a = nn.Linear(5, 5).weight.numpy()
    mc.manual_seed(5)
    b = nn.Linear(5, 5).weight.numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.xavier_uniform_(nn.Parameter(np.zeros(3, dtype=np.float32)))
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        nn.init.calculate_gain("softsign")


@pytest.mark.tutorial00
def test_reference_cnn_forward_shapes_and_a_training_step_reduces_loss(backend):
    mc.manual_seed(0)
    model = reference_cnn()
    x = mc.tensor(np.random.default_rng(0).random((8, 1, 28, 28)))
    y = mc.tensor(np.arange(8) % 10)
    assert model(x).shape == (8, 10)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        with mc.no_grad():
            for p in model.parameters():
                p.data -= 0.05 * p.grad.data
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with mc.no_grad():
        out = model(x)
    assert not out.requires_grad


def test_each_loss_module_is_a_loss_not_a_special_case_of_another_loss():
    """MSELoss is not a kind of NLLLoss: every loss derives from the common base that holds ``reduction``."""
    from minicnn.nn.layers import _Loss
    losses = [nn.CrossEntropyLoss, nn.NLLLoss, nn.MSELoss, nn.SmoothL1Loss, nn.BCEWithLogitsLoss]
    assert all(cls.__bases__ == (_Loss,) for cls in losses), [(c.__name__, c.__bases__) for c in losses]
    assert all(cls(reduction="sum").reduction == "sum" for cls in losses)
