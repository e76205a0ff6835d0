"""`minicnn quantize` and `minicnn export` end to end on the bundled digits (small limits)."""
import json
import os

import pytest

import minicnn as mc
from minicnn import models
from minicnn.cli import main
from minicnn.train import save_checkpoint

pytestmark = pytest.mark.tutorial13        # what tutorials/13_*.ipynb teaches (tests/README.md)


def test_quantize_then_evaluate_predict_and_export(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    mc.manual_seed(0)
    model = models.get_model("reference-bn").eval()
    config = {"model_name": "reference-bn", "num_classes": 10, "dataset": "digits",
              "classes": [str(i) for i in range(10)], "normalization": (0.1307, 0.3081), "args": {}}
    ckpt = save_checkpoint(tmp_path / "f.ckpt", model, config=config, epoch=1)
    out = tmp_path / "q"
    assert main(["quantize", str(ckpt), "--out", str(out), "--limit-train", "300", "--limit-test", "100",
                 "--calibration", "64", "--observer", "percentile", "--requant", "fixed", "--repeats", "1"]) == 0
    report = json.load(open(out / "quantize.json"))
    assert report["bytes"]["fp32"] / report["bytes"]["int8"] > 3.5
    assert abs(report["bytes"]["fp32"] / report["bytes"]["fp16"] - 2) < 0.1
    assert main(["evaluate", str(out / "model.int8.safetensors"), "--limit-test", "100",
                 "--out", str(tmp_path / "ev")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["export", str(out / "model.int8.safetensors"), str(tmp_path / "q.onnx")]) == 0
    assert os.path.getsize(tmp_path / "q.onnx") < report["bytes"]["fp32"] / 2
    assert main(["quantize", str(out / "model.int8.safetensors"), "--out", str(tmp_path / "x")]) == 2
    assert "already a quantized file" in capsys.readouterr().err
