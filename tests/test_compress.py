"""minicnn.compress: shrink is exact (float64) with fewer parameters, schedules, sensitivity,
sparse files, architecture specs; unshrinkable graphs give errors naming the layer."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import compress, models
from minicnn.nn.utils import prune

pytestmark = pytest.mark.tutorial12        # what tutorials/12_*.ipynb teaches (tests/README.md)


def _randomize_bn(model, rs):
    """Non-trivial BatchNorm statistics and affine parameters (so folding is really tested)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.array[...] = rs.standard_normal(n)
            m.running_var.array[...] = rs.random(n) + 0.5
            m.weight.array[...] = rs.standard_normal(n)
            m.bias.array[...] = rs.standard_normal(n)


@pytest.mark.parametrize("name", ["reference", "reference-bn", "lenet5", "tiny"])
def test_shrink_is_exact_with_fewer_parameters(cpu_backend, name):
    rs = np.random.default_rng(0)
    model = models.get_model(name).double()
    _randomize_bn(model, rs)
    compress.prune_to(model, "ln-structured", 0.5)              # half of every conv's filters
    hidden = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    prune.ln_structured(hidden, "weight", 0.25, n=2, dim=0)     # and a quarter of the hidden neurons
    model.eval()
    small = compress.shrink(model)
    assert not prune.is_pruned(small) and prune.is_pruned(model)
    x = mc.tensor(rs.standard_normal((4, 1, 28, 28)), dtype="float64")
    with mc.no_grad():
        np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), rtol=1e-10, atol=1e-10)
    dense = models.get_model(name).num_parameters()
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    orig_convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c.out_channels - round(0.5 * c.out_channels)
                                               for c in orig_convs]
    assert small.num_parameters() < 0.6 * dense
    assert compress.macs(small) < 0.5 * compress.macs(model)
    # the architecture spec rebuilds the same network
    again = compress.model_from_architecture(compress.architecture(small)).double()
    again.load_state_dict(small.state_dict())
    again.eval()
    with mc.no_grad():
        np.testing.assert_allclose(again(x).numpy(), small(x).numpy(), rtol=1e-12)


def test_shrink_without_pruning_changes_nothing():
    model = models.ReferenceCNN().double().eval()
    small = compress.shrink(model)
    assert small.num_parameters() == model.num_parameters()


def test_unshrinkable_graphs_name_the_layer():
    with pytest.raises(compress.ShrinkError, match="SmallResNet.*stem.*stages"):
        compress.shrink(models.SmallResNet())
    seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), models.BasicBlock(4, 4),
                        nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    with pytest.raises(compress.ShrinkError, match="layer 2 \\(BasicBlock\\).*residual"):
        compress.shrink(seq)
    padded = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                           nn.Linear(4 * 26 * 26, 10))
    padded[0].bias.array[...] = 1.0                     # a pruned filter leaves relu(1) = 1 behind
    prune.ln_structured(padded[0], "weight", 1, n=1, dim=0)
    with pytest.raises(compress.ShrinkError, match="layer 2 pads"):
        compress.shrink(padded)


def test_gradual_schedule_and_prune_to():
    s = compress.gradual_schedule(0.9, 5)
    assert s[-1] == pytest.approx(0.9) and all(a < b for a, b in zip(s, s[1:]))
    assert s[0] == pytest.approx(0.9 - 0.9 * 0.8 ** 3)          # s_f + (s_i - s_f)(1 - 1/5)^3
    model = models.ReferenceCNN()
    for target in s:
        compress.prune_to(model, "global-l1", target)
        assert prune.sparsity(model).global_sparsity == pytest.approx(target, abs=1e-5)
    layerwise = models.LeNet5()
    compress.prune_to(layerwise, "l1", 0.75)
    rep = prune.sparsity(layerwise)
    for name, z, n, nd in rep.rows:
        if nd >= 2:
            assert z == round(0.75 * n)
    with pytest.raises(ValueError, match="sparsity"):
        compress.prune_to(model, "global-l1", 1.5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        compress.prune_to(model, "magnitude", 0.5)


def test_iterative_prune_calls_finetune_between_steps():
    model = models.LeNet5()
    seen = []
    recs = compress.iterative_prune(model, "global-l1", 0.8, 3,
                                    finetune=lambda m: seen.append(prune.sparsity(m).global_sparsity),
                                    evaluate=lambda m: {"val_acc": 0.0})
    assert [r["step"] for r in recs] == [1, 2, 3] and len(seen) == 3
    assert seen == pytest.approx(compress.gradual_schedule(0.8, 3), abs=1e-4)


def test_sensitivity_analysis_restores_the_model(tmp_path):
    model = models.LeNet5()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    def evaluate(m):                                  # a stand-in "accuracy": fraction of weights left
        return 1 - prune.sparsity(m).global_sparsity
    res = compress.sensitivity_analysis(model, evaluate, sparsities=(0.5, 0.9))
    assert res["baseline"] == 1.0 and set(res["layers"]) == {"0", "3", "7", "9", "11"}
    assert res["layers"]["7"][1] < res["layers"]["0"][1]      # the big layer removes more weights
    assert not prune.is_pruned(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    path = compress.plot_sensitivity(res, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000 and path.endswith("s.png")


def test_sparse_file_roundtrip_and_size(tmp_path):
    model = models.ReferenceCNNBN()
    compress.prune_to(model, "global-l1", 0.9)
    path = tmp_path / "m.sparse.safetensors"
    n = compress.save_sparse(model, path, metadata={"config": {"model_name": "reference-bn"}})
    assert path.stat().st_size == n < 0.2 * compress.dense_bytes(model)
    state, meta = compress.load_sparse(path)
    assert meta["config"]["model_name"] == "reference-bn"
    fresh = models.ReferenceCNNBN()
    fresh.load_state_dict(state)
    compress.make_permanent(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), v.numpy())
    assert open(path, "rb").read(8) != b"\x80\x04\x95"        # not a pickle
    with pytest.raises(ValueError, match="not a minicnn sparse"):
        from safetensors.numpy import save_file
        save_file({"a": np.zeros(2)}, str(tmp_path / "x.safetensors"))
        compress.load_sparse(tmp_path / "x.safetensors")
