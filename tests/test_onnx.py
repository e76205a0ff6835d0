"""minicnn.quant.onnx: every built-in model exported, checked by onnx.checker and run by onnxruntime
(equal to minicnn within 1e-5 relative); the int8 model as QDQ; an unknown operation is an
error naming its layer."""
import numpy as np
import pytest

import minicnn as mc
from minicnn import models, nn, quant

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
from minicnn import onnx as mo  # noqa: E402

pytestmark = pytest.mark.tutorial13        # what tutorials/13_*.ipynb teaches (tests/README.md)


def _with_stats(m, seed=0):
    rs = np.random.default_rng(seed)
    for mod in m.modules():
        if getattr(mod, "running_var", None) is not None:
            mod.running_var.array[:] = rs.random(mod.running_var.shape).astype(np.float32) + 0.5
            mod.running_mean.array[:] = rs.standard_normal(mod.running_mean.shape).astype(np.float32) * 0.1
    return m.eval()


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_builtin_model_round_trips(cpu_backend, name, tmp_path):
    mc.manual_seed(0)
    m = _with_stats(models.get_model(name))
    path = mo.export(m, (1, 1, 28, 28), tmp_path / f"{name}.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = np.random.default_rng(1).random((5, 1, 28, 28)).astype(np.float32)   # batch 5: the batch axis is dynamic
    with mc.no_grad():
        ref = m(mc.tensor(x)).numpy()
    got = mo.run_onnxruntime(path, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_custom_forward_conv_options_and_activations(cpu_backend, tmp_path):
    class Odd(nn.Module):            # grouped + dilated conv, a residual add, several activations
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=2, dilation=2)
            self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2, stride=1)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(4 * 14 * 14, 3)

        def forward(self, x):
            h = mc.functional.leaky_relu(self.a(x), 0.1)
            h = mc.functional.silu(self.b(h)) + h * 0.5
            h = mc.functional.gelu(self.pool(h))
            return mc.functional.log_softmax(self.fc(h.flatten(1)), -1)

    mc.manual_seed(0)
    m = Odd().eval()
    path = mo.export(m, (1, 1, 28, 28), tmp_path / "odd.onnx")
    x = np.random.default_rng(2).random((3, 1, 28, 28)).astype(np.float32)
    with mc.no_grad():
        ref = m(mc.tensor(x)).numpy()
    np.testing.assert_allclose(mo.run_onnxruntime(path, x), ref, rtol=1e-5, atol=1e-6)


def test_quantized_model_exports_as_qdq(cpu_backend, tmp_path):
    mc.manual_seed(0)
    m = _with_stats(models.get_model("reference-bn"))
    x = np.random.default_rng(3).random((32, 1, 28, 28)).astype(np.float32)
    p = quant.prepare(m)
    quant.calibrate(p, [x])
    q = quant.convert(p)
    path = mo.export(q, (1, 1, 28, 28), tmp_path / "q.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    ref = q(mc.tensor(x)).numpy()
    # The graph as exported (no graph optimisation: every QuantizeLinear / DequantizeLinear and
    # float operator runs as written): onnxruntime computes the dequantized conv in float32,
    # minicnn exactly, so the output codes agree except where a float32 rounding error tips a
    # value over a rounding tie (one code).
    got = mo.run_onnxruntime(path, x, optimize=False)
    steps = np.abs(got - ref) / q.layers[-1].out_scale
    assert steps.max() <= 1.0001 and (steps > 0.5).mean() < 0.01
    # Optimised, onnxruntime fuses the QDQ pairs into its own integer kernels. On x86 CPUs
    # without VNNI its uint8 x int8 kernel adds pairs of products in int16 with saturation
    # (onnxruntime's docs suggest 7-bit weights, reduce_range, there), so codes can move by
    # several steps; the predicted classes must still agree. With VNNI: within one code.
    fused = mo.run_onnxruntime(path, x)
    assert (fused.argmax(1) == ref.argmax(1)).mean() >= 0.98
    if _cpu_has_vnni():
        assert (np.abs(fused - ref) / q.layers[-1].out_scale).max() <= 1.0001


def _cpu_has_vnni():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def test_unknown_operation_is_an_error_naming_the_layer(cpu_backend, tmp_path):
    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)[:, :1]          # indexing (GetItemFn) has no ONNX mapping here

    with pytest.raises(mo.ExportError, match=r"GetItemFn \(in layer 'Picky'\)"):
        mo.export(Picky(), (1, 4), tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()
