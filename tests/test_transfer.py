"""Transfer learning: minicnn.transfer from Python, and `minicnn train --init-from/--freeze/...`."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import models, optim, transfer
from minicnn.cli import main
from minicnn.train import load_checkpoint

from conftest import full_data_dir

pytestmark = pytest.mark.tutorial11        # what tutorials/11_*.ipynb teaches (tests/README.md)


def _snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _steps(model, opt, n=3, classes=10, seed=0):
    rs = np.random.default_rng(seed)
    for _ in range(n):
        x = mc.tensor(rs.standard_normal((4, 1, 28, 28)).astype(np.float32))
        y = mc.tensor(rs.integers(0, classes, 4))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_load_pretrained_copies_every_weight_and_makes_a_new_head_for_another_class_count():
    source = models.get_model("reference-bn", num_classes=10)
    source[1].running_mean.array[...] = 3.0                           # buffers travel too
    target = models.get_model("reference-bn", num_classes=4)
    fresh_head = target[13].weight.numpy().copy()
    report = transfer.load_pretrained(target, source.state_dict())
    assert report["new_head"] and report["head"] == "13"
    src, dst = _snapshot(source), _snapshot(target)
    for k in dst:
        if k.startswith("13."):
            continue
        np.testing.assert_array_equal(dst[k], src[k], err_msg=k)
    np.testing.assert_array_equal(target[13].weight.numpy(), fresh_head)
    # the same class count: the head is loaded, unless reset_head
    same = models.get_model("reference-bn")
    assert not transfer.load_pretrained(same, source.state_dict())["new_head"]
    np.testing.assert_array_equal(same[13].weight.numpy(), src["13.weight"])
    assert transfer.load_pretrained(models.get_model("reference-bn"), source.state_dict(), reset_head=True)["new_head"]


def test_load_pretrained_names_the_keys_that_do_not_fit():
    with pytest.raises(ValueError, match=r"shape mismatch: 0\.weight is \(32, 1, 3, 3\) in the checkpoint, "
                                         r"\(16, 1, 3, 3\) in the model.*same --model and --width"):
        transfer.load_pretrained(models.get_model("reference", width=0.5), models.get_model("reference").state_dict())
    with pytest.raises(ValueError, match=r"not in the checkpoint: .*stem\.0\.weight"):
        transfer.load_pretrained(models.get_model("resnet-8"), models.get_model("reference").state_dict())


def test_layer_names_indices_ranges_and_backbone():
    ref = models.get_model("reference")
    assert transfer.resolve_layers(ref, "0,3") == ["0", "3"]
    assert transfer.resolve_layers(ref, "0-2, 7") == ["0", "1", "2", "7"]
    assert transfer.resolve_layers(ref, "backbone") == [str(i) for i in range(10)]
    res = models.get_model("resnet-8")
    assert transfer.resolve_layers(res, "stem,stages.0") == ["stem", "stages.0"]
    assert transfer.backbone_names(res) == ["stem", "stages", "pool", "flatten"]
    with pytest.raises(ValueError, match="no layer named 'conv9'.*top-level layers: stem, stages, pool, flatten, fc"):
        transfer.resolve_layers(res, "conv9")


def test_frozen_layers_and_their_batchnorm_statistics_stay_bit_identical():
    model = models.get_model("resnet-8")
    names = transfer.resolve_layers(model, "stem,stages.0")
    report = transfer.freeze_layers(model, names)
    assert report["batchnorms"] == ["stem.1", "stages.0.bn1", "stages.0.bn2"]
    assert report["params"] == sum(p.numel() for n in names for p in dict(model.named_modules())[n].parameters())
    before = _snapshot(model)
    model.train()
    _steps(model, optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2))
    after = _snapshot(model)
    for k in before:
        if k.startswith(("stem.", "stages.0.")):
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} moved although frozen")
        elif not k.endswith("num_batches_tracked"):
            assert not np.array_equal(after[k], before[k]), f"{k} did not train"
    assert all(p.grad is None for p in dict(model.named_modules())["stem"].parameters())


def test_head_and_backbone_learning_rates():
    model = models.get_model("reference", width=0.25).eval()      # eval: no dropout, a deterministic step
    groups = transfer.param_groups(model, head_lr=0.1, backbone_lr=0.001)
    assert [g["lr"] for g in groups] == [0.001, 0.1]
    assert [id(p) for p in groups[1]["params"]] == [id(model[10].weight), id(model[10].bias)]
    opt = optim.SGD(groups, lr=0.5)                                  # the groups' lrs win over the default
    before = _snapshot(model)
    x = mc.tensor(np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32))
    loss = F.cross_entropy(model(x), mc.tensor(np.array([0, 1, 2, 3])))
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        lr = 0.1 if n.startswith("10.") else 0.001
        np.testing.assert_allclose(p.numpy(), before[n] - lr * grads[n], rtol=1e-6, atol=1e-8, err_msg=n)
    transfer.freeze_layers(model, transfer.backbone_names(model))   # a linear probe: only the head is left
    assert [g["lr"] for g in transfer.param_groups(model, 0.1, 0.001)] == [0.1]


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """These tests are about weights, not figures (tests/test_viz.py covers those): skip the
    PNGs that train/evaluate write, the slowest part of a tiny CLI run."""
    from minicnn import viz
    for name in ("plot_history", "plot_confusion_matrix", "plot_filters", "plot_misclassified",
                 "plot_roc_curves", "plot_feature_maps"):
        monkeypatch.setattr(viz, name, lambda *a, **k: "(plot skipped)")


def _train(tmp_path, capsys, name, *extra, dataset="digits", limit=200):
    out = tmp_path / name
    code = main(["train", "--dataset", dataset, "--epochs", "1", "--limit-train", str(limit), "--limit-test", "100",
                 "--batch-size", "32", "--no-progress", "--no-download", "--out", str(out), *extra])
    printed = capsys.readouterr()
    return code, out, printed.out + printed.err


def test_cli_linear_probe_from_a_checkpoint_keeps_the_backbone_and_its_bn_statistics(tmp_path, capsys):
    model = ["--model", "reference-bn", "--width", "0.25"]
    code, a, _ = _train(tmp_path, capsys, "a", *model)
    assert code == 0
    code, b, text = _train(tmp_path, capsys, "b", *model, "--init-from", str(a / "last.ckpt"), "--reset-head",
                           "--freeze", "backbone", "--head-lr", "0.01")
    assert code == 0, text
    assert "new head '13' (--reset-head)" in text
    assert "BatchNorm layers 1, 5, 10 stay in eval mode" in text
    sa, sb = load_checkpoint(str(a / "last.ckpt")), load_checkpoint(str(b / "last.ckpt"))
    assert sb["config"]["model_kwargs"] == {"width": 0.25} and sb["config"]["freeze"][0] == "0"
    for k, v in sa["model"].items():
        if k.startswith("13."):
            assert not np.array_equal(v, sb["model"][k])
        else:
            np.testing.assert_array_equal(sb["model"][k], v, err_msg=k)   # incl. running_mean / running_var
    # a width that does not match the checkpoint: a one-line error naming it
    code, _, text = _train(tmp_path, capsys, "c", "--model", "reference-bn", "--init-from", str(a / "last.ckpt"))
    assert code == 2 and "model options {'width': 0.25}" in text
    code, _, text = _train(tmp_path, capsys, "d", "--model", "resnet-8", "--init-from", str(a / "last.ckpt"))
    assert code == 2 and "holds a 'reference-bn' model but --model is 'resnet-8'" in text


def test_cli_evaluate_and_predict_rebuild_a_new_model_with_its_options(tmp_path, capsys):
    code, out, text = _train(tmp_path, capsys, "m", "--model", "mobilenet", "--width", "0.5", limit=100)
    assert code == 0, text
    ckpt = str(out / "last.ckpt")
    assert load_checkpoint(ckpt)["config"]["model_kwargs"] == {"width": 0.5}
    assert main(["evaluate", ckpt, "--limit-test", "50", "--no-download"]) == 0
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "blank.png")
    assert main(["predict", ckpt, str(tmp_path / "blank.png")]) == 0
    assert "1." in capsys.readouterr().out


@pytest.mark.parametrize("name,kwargs", [("mobilenet", {"width": 0.25}), ("plain-8", {}), ("resnet-20", {}),
                                         ("plain-20", {}), ("resnet-8", {}), ("reference", {"width": 2.0})])
def test_a_checkpoint_rebuilds_every_new_model(tmp_path, name, kwargs):
    from minicnn.cli.commands import model_from_checkpoint
    from minicnn.train import save_checkpoint
    model = models.get_model(name, num_classes=7, **kwargs).eval()
    path = str(tmp_path / "m.ckpt")
    save_checkpoint(path, model, config={"model_name": name, "num_classes": 7, "model_kwargs": kwargs})
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    with mc.no_grad():
        np.testing.assert_array_equal(rebuilt(x).numpy(), model(x).numpy())


@pytest.mark.skipif(full_data_dir() is None, reason="needs MNIST and Fashion-MNIST in MINICNN_DATA_DIR")
def test_cli_mnist_to_fashion_mnist_and_back(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINICNN_DATA_DIR", full_data_dir())
    model = ["--model", "reference", "--width", "0.25"]
    code, m, text = _train(tmp_path, capsys, "mnist", *model, dataset="mnist", limit=300)
    assert code == 0, text
    code, f, text = _train(tmp_path, capsys, "fashion", *model, "--init-from", str(m / "last.ckpt"), "--reset-head",
                           "--freeze", "0-5", dataset="fashion-mnist", limit=300)
    assert code == 0 and "trained on mnist" in text and "freeze: 0, 1, 2, 3, 4, 5" in text, text
    code, back, text = _train(tmp_path, capsys, "back", *model, "--init-from", str(f / "last.ckpt"), "--reset-head",
                              "--backbone-lr", "1e-4", "--head-lr", "1e-3", dataset="mnist", limit=300)
    assert code == 0 and "trained on fashion-mnist" in text and "backbone 0.0001" in text, text
    sm, sf = load_checkpoint(str(m / "last.ckpt"))["model"], load_checkpoint(str(f / "last.ckpt"))["model"]
    np.testing.assert_array_equal(sf["3.weight"], sm["3.weight"])          # frozen on the way there
    assert not np.array_equal(sf["7.weight"], sm["7.weight"])              # not frozen: it trained
