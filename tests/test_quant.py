"""minicnn.quant: observers and fake quantization against PyTorch and by hand, BN folding,
the integer path bit-exact with the fake-quant simulation, fixed-point requantization,
the int8 kernels of every backend, QAT, checkpoints, and the errors that name the layer."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
from minicnn import models, nn, quant
from minicnn.backend import to_host

pytestmark = pytest.mark.tutorial13        # what tutorials/13_*.ipynb teaches (tests/README.md)

try:
    import torch
except ImportError:           # the hand-worked cases below still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")


def t(a, grad=False):
    return mc.tensor(np.asarray(a, dtype=np.float32), requires_grad=grad)


# -----------------------------------------------------------------------------
# fake quantization: hand-worked cases
# -----------------------------------------------------------------------------
def test_fake_quant_rounds_half_to_even_and_clips(cpu_backend):
    # scale 0.5, zero point 10, quint8: x/s = 1.25 -> 1 (down), 2.5 -> 2 (even), 3.5 -> 4 (even)
    x = t([0.625, 1.25, 1.75, -6.0, 200.0, 0.0], grad=True)
    y = F.fake_quantize_per_tensor_affine(x, 0.5, 10, 0, 255)
    #      codes: rint(1.25)=1 -> 0.5; rint(2.5)=2 -> 1.0; rint(3.5)=4 -> 2.0; -12+10=-2 -> clip 0 -> -5.0;
    #             400+10 -> clip 255 -> 122.5; 0 -> 0
    np.testing.assert_array_equal(y.numpy(), [0.5, 1.0, 2.0, -5.0, 122.5, 0.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1, 1, 1, 0, 0, 1])     # STE: zero where clipped


def test_fake_quant_per_channel_by_hand(cpu_backend):
    x = t([[0.3, -0.3, 1.0], [0.3, -0.3, 1.0]], grad=True)
    y = F.fake_quantize_per_channel_affine(x, np.array([0.2, 0.1]), np.array([0, 0]), 0, -128, 127)
    # row 0: 1.5 -> 2 (even), -1.5 -> -2, 5 -> 5;  row 1: 3, -3, 10
    np.testing.assert_allclose(y.numpy(), [[0.4, -0.4, 1.0], [0.3, -0.3, 1.0]], rtol=1e-6)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))


def test_fake_quant_bad_arguments_are_clear_errors(cpu_backend):
    x = t([1.0, 2.0])
    with pytest.raises(ValueError, match="scale must be a positive"):
        F.fake_quantize_per_tensor_affine(x, 0.0, 0, 0, 255)
    with pytest.raises(ValueError, match="zero_point 300 is outside"):
        F.fake_quantize_per_tensor_affine(x, 0.1, 300, 0, 255)
    with pytest.raises(ValueError, match="channel 1 has 0.0"):
        F.fake_quantize_per_channel_affine(t([[1.0], [2.0]]), [0.1, 0.0], [0, 0], 0, -128, 127)


# -----------------------------------------------------------------------------
# observers: hand-worked cases
# -----------------------------------------------------------------------------
def test_minmax_observer_by_hand():
    obs = quant.MinMaxObserver()                             # quint8, affine
    obs(np.array([-1.0, 2.0, 3.0], np.float32))
    obs(np.array([0.5, 4.1], np.float32))
    s, z = obs.calculate_qparams()
    assert np.isclose(s, 5.1 / 255) and int(z) == 50        # z = 0 - round(-1 / 0.02) = 50


def test_all_negative_quint8_keeps_zero_representable():
    obs = quant.MinMaxObserver()
    obs(np.array([-4.0, -2.0], np.float32))                  # the range is widened to [-4, 0]
    s, z = obs.calculate_qparams()
    assert np.isclose(s, 4 / 255) and int(z) == 255


def test_all_equal_and_all_zero_tensors():
    obs = quant.MinMaxObserver()
    obs(np.full(5, 3.0, np.float32))
    s, z = obs.calculate_qparams()
    assert np.isclose(s, 3 / 255) and int(z) == 0
    obs = quant.MinMaxObserver(dtype="qint8", qscheme="per_tensor_symmetric")
    obs(np.zeros(4, np.float32))
    s, z = obs.calculate_qparams()
    assert s == np.finfo(np.float32).eps and int(z) == 0     # eps floor: a scale is never 0


def test_observer_without_data_is_a_clear_error():
    with pytest.raises(quant.ObserverError, match="seen no data"):
        quant.MinMaxObserver().calculate_qparams()
    with pytest.raises(quant.ObserverError, match="seen no data"):
        quant.PerChannelMinMaxObserver().calculate_qparams()


def test_percentile_observer_ignores_outliers():
    x = np.concatenate([np.linspace(0, 1, 100_000), [50.0]]).astype(np.float32)
    p = quant.PercentileObserver(percentile=99.9)
    p(x)
    m = quant.MinMaxObserver()
    m(x)
    assert p.calculate_qparams()[0] < m.calculate_qparams()[0] / 40


# -----------------------------------------------------------------------------
# against PyTorch
# -----------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("dtype,qscheme", [("quint8", "per_tensor_affine"), ("qint8", "per_tensor_affine"),
                                           ("quint8", "per_tensor_symmetric"), ("qint8", "per_tensor_symmetric")])
def test_observers_equal_torch(dtype, qscheme):
    from torch.ao.quantization import MinMaxObserver, MovingAverageMinMaxObserver
    rs = np.random.default_rng(0)
    batches = [rs.standard_normal((4, 7)).astype(np.float32) * 3 + 0.7 for _ in range(3)]
    tdt = getattr(torch, dtype)
    tq = getattr(torch, qscheme)
    for ours, theirs in ((quant.MinMaxObserver(dtype=dtype, qscheme=qscheme),
                          MinMaxObserver(dtype=tdt, qscheme=tq)),
                         (quant.MovingAverageMinMaxObserver(0.1, dtype=dtype, qscheme=qscheme),
                          MovingAverageMinMaxObserver(0.1, dtype=tdt, qscheme=tq))):
        for b in batches:
            ours(b)
            theirs(torch.from_numpy(b))
        s, z = ours.calculate_qparams()
        ts, tz = theirs.calculate_qparams()
        assert np.float32(s) == ts.numpy().astype(np.float32).reshape(()) and int(z) == int(tz)


@needs_torch
@pytest.mark.parametrize("qscheme", ["per_channel_symmetric", "per_channel_affine"])
def test_per_channel_observer_equals_torch(qscheme):
    from torch.ao.quantization import PerChannelMinMaxObserver
    w = np.random.default_rng(1).standard_normal((6, 3, 3, 3)).astype(np.float32) * np.arange(1, 7).reshape(6, 1, 1, 1)
    ours = quant.PerChannelMinMaxObserver(0, "qint8", qscheme)
    theirs = PerChannelMinMaxObserver(0, dtype=torch.qint8, qscheme=getattr(torch, qscheme))
    ours(w)
    theirs(torch.from_numpy(w))
    s, z = ours.calculate_qparams()
    ts, tz = theirs.calculate_qparams()
    np.testing.assert_array_equal(s, ts.numpy().astype(np.float32))
    np.testing.assert_array_equal(z, tz.numpy())


@needs_torch
def test_fake_quant_equals_torch_value_and_ste_grad(cpu_backend):
    rs = np.random.default_rng(2)
    scale, zp = 0.05, 7
    x = (rs.standard_normal(2000) * 4).astype(np.float32)
    x[:20] = (np.arange(20) - 10 + 0.5) * scale          # exactly on rounding ties (x/s = k + 0.5)
    ours = t(x, grad=True)
    y = F.fake_quantize_per_tensor_affine(ours, scale, zp, 0, 255)
    g = rs.standard_normal(x.shape).astype(np.float32)
    y.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.fake_quantize_per_tensor_affine(tx, scale, zp, 0, 255)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(ours.grad.numpy(), tx.grad.numpy())

    w = (rs.standard_normal((5, 4, 3)) * 2).astype(np.float32)
    s = np.array([0.01, 0.02, 0.05, 0.1, 0.2], np.float32)
    z = np.array([0, 3, -2, 0, 1], np.int32)
    ours = t(w, grad=True)
    y = F.fake_quantize_per_channel_affine(ours, s, z, 0, -128, 127)
    gw = rs.standard_normal(w.shape).astype(np.float32)
    y.backward(gw)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.fake_quantize_per_channel_affine(tw, torch.tensor(s), torch.tensor(z), 0, -128, 127)
    ty.backward(torch.tensor(gw))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(ours.grad.numpy(), tw.grad.numpy())


# -----------------------------------------------------------------------------
# folding, the integer path, requantization
# -----------------------------------------------------------------------------
def _trained_like(name, seed=0):
    """A model with non-trivial BN statistics (as after training), in eval mode."""
    mc.manual_seed(seed)
    m = models.get_model(name)
    rs = np.random.default_rng(seed)
    for mod in m.modules():
        if getattr(mod, "running_var", None) is not None:
            mod.running_var.array[:] = rs.random(mod.running_var.shape).astype(np.float32) + 0.5
            mod.running_mean.array[:] = rs.standard_normal(mod.running_mean.shape).astype(np.float32) * 0.1
            mod.weight.array[:] = rs.random(mod.weight.shape).astype(np.float32) + 0.5
            mod.bias.array[:] = rs.standard_normal(mod.bias.shape).astype(np.float32) * 0.1
    return m.eval()


def _images(n=24, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28)).astype(np.float32)


def test_conv_bn_folding_keeps_the_output(cpu_backend):
    m = _trained_like("reference-bn")
    fused, names = quant.fuse(m)
    assert names[0] == "0+1+2" and names[-1] == "13" and len(fused) == 8
    assert not any(isinstance(l, nn.BatchNorm2d) for l in fused.modules())
    x = mc.tensor(_images(8))
    with mc.no_grad():
        np.testing.assert_allclose(fused(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, groups=1), nn.BatchNorm2d(4)
    bn.running_mean.array[:] = [0.1, -0.2, 0.3, 0.0]
    bn.running_var.array[:] = [0.5, 2.0, 1.0, 4.0]
    bn.eval()
    x = mc.tensor(np.random.default_rng(1).standard_normal((2, 3, 5, 5)))
    with mc.no_grad():
        np.testing.assert_allclose(quant.fold_bn(conv, bn)(x).numpy(), bn(conv(x)).numpy(), atol=1e-6)


def _layer_codes(q, x, mode, requant="float"):
    """The uint8 codes after every int8 layer (not just the last)."""
    from minicnn.quant.quantized import QuantizedModel
    out = []
    for k in range(1, len(q.steps) + 1):
        if isinstance(q.steps[k - 1], quant.QuantizedLayer):
            out.append(QuantizedModel(q.steps[:k]).codes(x, mode=mode, requant=requant))
    return out


@pytest.mark.parametrize("name,per_channel", [("reference", True), ("reference-bn", True), ("reference-bn", False)])
def test_integer_path_is_bit_exact_with_the_fake_quant_simulation(cpu_backend, name, per_channel):
    m = _trained_like(name)
    p = quant.prepare(m, per_channel=per_channel)
    quant.calibrate(p, [_images(32, seed=1)])
    q = quant.convert(p)
    x = _images(16, seed=2)                       # not the calibration images: some codes clip
    for a, b in zip(_layer_codes(q, x, "integer"), _layer_codes(q, x, "simulate")):
        np.testing.assert_array_equal(a, b)
    # the fixed-point multiplier + shift gives the same codes as the float multiplier
    np.testing.assert_array_equal(q.codes(x, requant="fixed"), q.codes(x))
    # and the int8 model is close to the float one (a sanity check, not the point)
    with mc.no_grad():
        ref = m(mc.tensor(x)).numpy()
    assert np.abs(q(mc.tensor(x)).numpy() - ref).max() < 0.1 * np.abs(ref).max()


def test_fixed_point_multiplier_by_hand():
    m0, n = quant.quantize_multiplier(np.array([0.25, 0.3, 1.0 - 1e-12]))
    assert list(m0) == [2 ** 30, round(0.6 * 2 ** 31), 2 ** 30] and list(n) == [32, 32, 30]
    v = np.array([5, 6, 7, -5, -6, -7, 12], np.int64)            # / 4: 1.25 1.5 1.75 ... 3
    np.testing.assert_array_equal(quant.rounding_shift(v, np.int64(2)), [1, 2, 2, -1, -2, -2, 3])
    np.testing.assert_array_equal(quant.rounding_shift(np.array([2, 6, 10], np.int64), np.int64(2)),
                                  np.rint(np.array([0.5, 1.5, 2.5])))     # ties to even, as np.rint


def test_qat_trains_and_converts_with_the_callback(cpu_backend):
    from minicnn import optim
    from minicnn.data import DataLoader
    from minicnn.train import fit
    m = _trained_like("reference-bn")
    qat = quant.prepare_qat(m)
    x = _images(32)
    y = np.arange(32) % 10
    loader = DataLoader((x, y), batch_size=16, shuffle=False)
    sched = quant.QATSchedule(freeze_bn_epoch=1, freeze_observer_epoch=2)
    bn = qat.quant_layers()[0].bn
    before = bn.running_mean.numpy()
    fit(qat, optim.SGD(qat.parameters(), lr=0.01), loader, 3, progress=False, log=lambda *a: None,
        callbacks=[sched])
    layers = qat.quant_layers()
    assert all(l.bn_frozen for l in layers if l.bn is not None)
    assert not any(f.observer_enabled for f in qat.fake_quant_modules())
    assert not np.array_equal(before, bn.running_mean.numpy())           # epoch 1 did update BN
    assert m[1].running_mean.numpy()[0] == before[0]                     # the float model is untouched
    q = quant.convert(qat)
    qat.eval()
    with mc.no_grad():
        fq = qat(mc.tensor(x)).numpy()
    # QAT's float32 fake-quant forward and the integer model agree to within one output step
    step = q.layers[-1].out_scale
    assert np.abs(q(mc.tensor(x)).numpy() - fq).max() <= step * 1.01


def test_int8_kernels_equal_numpy_ref(backend):
    from hypothesis import given, settings, strategies as st
    from minicnn.backend import current, to_device
    from minicnn.kernels import numpy_ref

    @settings(max_examples=15, deadline=None)
    @given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 70), st.integers(0, 255), st.integers(0, 2 ** 31))
    def check(M, K, L, z, seed):
        rs = np.random.default_rng(seed)
        w = rs.integers(-128, 128, (M, K)).astype(np.int8)
        c = rs.integers(0, 256, (K, L)).astype(np.uint8)
        ref = numpy_ref.qgemm_u8s8(w, c, z)
        got = to_host(current.kernels.qgemm_u8s8(to_device(w), to_device(c), z))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref)
    check()
    # the extremes: every term -128 * 255 over many taps, exactly
    w, c = np.full((2, 4000), -128, np.int8), np.full((4000, 3), 255, np.uint8)
    got = to_host(current.kernels.qgemm_u8s8(to_device(w), to_device(c), 0))
    assert (got == -128 * 255 * 4000).all()


# -----------------------------------------------------------------------------
# checkpoints and errors
# -----------------------------------------------------------------------------
def test_int8_and_fp16_checkpoints_round_trip(cpu_backend, tmp_path):
    m = _trained_like("reference-bn")
    p = quant.prepare(m)
    quant.calibrate(p, [_images(16)])
    q = quant.convert(p)
    config = {"model_name": "reference-bn", "num_classes": 10}
    quant.save_quantized(tmp_path / "m.int8", q, config)
    quant.save_fp16(tmp_path / "m.fp16", m, config)
    assert quant.is_quantized_checkpoint(tmp_path / "m.int8")
    loaded = quant.load_quantized(tmp_path / "m.int8")
    x = _images(8, seed=3)
    np.testing.assert_array_equal(loaded["module"].codes(x), q.codes(x))
    assert loaded["config"] == config
    half = quant.load_quantized(tmp_path / "m.fp16")["module"]
    with mc.no_grad():
        a, b = half(mc.tensor(x)).numpy(), quant.half_weights(m)(mc.tensor(x)).numpy()
    np.testing.assert_array_equal(a, b)
    with open(tmp_path / "m.int8", "rb") as f:
        assert b"pickle" not in f.read(200)


def test_errors_name_the_layer(cpu_backend):
    with pytest.raises(quant.QuantError, match=r"layer '1' \(Tanh\) is not supported"):
        quant.prepare(models.get_model("lenet5"))
    with pytest.raises(quant.QuantError, match="SmallResNet has its own forward"):
        quant.prepare(models.get_model("resnet"))
    p = quant.prepare(models.get_model("reference"))
    with pytest.raises(quant.ObserverError, match="no calibration data"):
        quant.calibrate(p, [])
    with pytest.raises(quant.QuantError, match="QuantStub.*seen no data"):
        quant.convert(p)


def test_qat_observers_ignore_evaluation_batches(cpu_backend):
    qat = quant.prepare_qat(_trained_like("reference"))
    x = mc.tensor(_images(8))
    qat(x)                                            # a training-mode forward: observed
    before = [f.calculate_qparams() for f in qat.fake_quant_modules()]
    qat.eval()
    with mc.no_grad():
        qat(mc.tensor(_images(8, seed=5) * 10))       # very different images, in eval mode
    after = [f.calculate_qparams() for f in qat.fake_quant_modules()]
    for (s0, z0), (s1, z1) in zip(before, after):
        np.testing.assert_array_equal(s0, s1)
        np.testing.assert_array_equal(z0, z1)
