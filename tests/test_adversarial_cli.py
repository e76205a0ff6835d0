"""The command line (`train --adversarial`, `attack`, `explain`) and the robustness / attribution plots."""
import json

import numpy as np
import pytest

import minicnn as mc
from minicnn import attacks, explain
from minicnn.train import viz
from minicnn.cli import main

from test_attacks import small_cnn, images
from test_viz import assert_only, assert_png

pytestmark = pytest.mark.tutorial14        # what tutorials/14_*.ipynb teaches (tests/README.md)


@pytest.mark.tutorial15
def test_train_adversarial_then_attack_and_explain(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--limit-train", "256", "--limit-test", "64", "--batch-size", "64",
                 "--val-split", "0.25", "--adversarial", "fgsm", "--eps", "0.1", "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "adversarial training: AdversarialTraining(attack='fgsm', eps=0.1" in text
    ckpt = str(out / "last.ckpt")
    assert main(["attack", ckpt, "--method", "pgd", "--eps", "0,0.1,0.3", "--steps", "3", "--limit-test", "48",
                 "--out", str(tmp_path / "atk")]) == 0
    text = capsys.readouterr().out
    assert "PGD-3" in text and "eps in pixel units" in text
    result = json.loads((tmp_path / "atk" / "robustness.json").read_text())
    assert result["count"] == 48 and result["eps"] == [0.0, 0.1, 0.3]
    assert result["accuracy"][0] == pytest.approx(result["clean"])
    assert result["accuracy"][2] <= result["accuracy"][1] <= result["accuracy"][0]
    assert_png(tmp_path / "atk" / "robust_accuracy.png")
    assert_png(tmp_path / "atk" / "adversarial_gallery.png")
    # an image file, as a user would pass it
    from PIL import Image
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    png = tmp_path / "maps" / "one_maps.png"
    assert main(["explain", ckpt, str(tmp_path / "one.png"), "--method", "all", "--steps", "8", "--samples", "3",
                 "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "completeness gap" in text and "wrote" in text
    assert_png(png)
    assert_only(tmp_path / "maps", ["one_maps.png"])


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--limit-train", "64", "--val-split", "0", "--adversarial", "pgd",
                 "--eps", "-0.1", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert "--eps must be >= 0" in capsys.readouterr().err
    assert main(["train", "--epochs", "1", "--limit-train", "64", "--limit-test", "32", "--val-split", "0",
                 "--no-progress", "--out", str(tmp_path / "r")]) == 0
    ckpt = str(tmp_path / "r" / "last.ckpt")
    capsys.readouterr()
    assert main(["attack", ckpt, "--eps", "0.1,-1"]) == 2
    assert "--eps must be >= 0" in capsys.readouterr().err
    assert main(["attack", str(tmp_path / "missing.ckpt")]) == 2
    assert "not found" in capsys.readouterr().err
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "blank.png")
    assert main(["explain", ckpt, str(tmp_path / "blank.png"), "--target", "10"]) == 2
    assert "--target must be a class in [0, 9]" in capsys.readouterr().err
    assert main(["explain", ckpt, str(tmp_path / "blank.png"), "--method", "grad-cam", "--layer", "nope"]) == 2
    assert "no layer named" in capsys.readouterr().err


@pytest.mark.tutorial15
def test_robustness_and_attribution_plots(tmp_path):
    model = small_cnn()
    x = mc.tensor(images(4), dtype="float64")
    y = mc.tensor(np.array([0, 1, 2, 3]))
    loader = [(x, y)]
    res = attacks.robust_accuracy(model, loader, "pgd", [0.0, 0.1, 0.2], steps=2, seed=0)
    assert_png(res.plot(str(tmp_path / "curve.png")))
    assert_png(viz.plot_robust_accuracy({"a": res, "b": res.as_dict()}, str(tmp_path / "two.png")))
    adv = attacks.fgsm(model, x, y, 0.1)
    assert_png(viz.plot_adversarial_gallery(x, adv, y.numpy(), [0, 1, 2, 3], [1, 1, 2, 0],
                                            str(tmp_path / "gallery.png")))
    maps = {"saliency": explain.saliency(model, x, 1).numpy()[0],
            "Grad-CAM": explain.grad_cam(model, x, 1).numpy()[0]}          # (2, 2): upsampled for the overlay
    assert_png(viz.plot_attributions(x.numpy()[0], maps, str(tmp_path / "maps.png"), title="t"))
    assert_only(tmp_path, ["curve.png", "two.png", "gallery.png", "maps.png"])
    with pytest.raises(ValueError, match="differ in shape"):
        viz.plot_adversarial_gallery(x, adv.numpy()[:, :, :5], [0] * 4, [0] * 4, [0] * 4, str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.plot_attributions(x.numpy()[0], {}, str(tmp_path / "m.png"))
