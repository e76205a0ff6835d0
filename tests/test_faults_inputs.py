"""Issue 30, bad inputs: nothing lost, nothing silent.

Each case was a fault probe that failed: a constructor that crashed with
ZeroDivisionError or NumPy's message, ``load_state_dict`` of a list, a 1 GB
file with a junk header read whole before being refused, hostile int8
checkpoints accepted or crashing, a 16-bit PNG read wrong. Now each is either
built as PyTorch builds it or refused with a one-line error that names what
was expected and what was given. Hostile files are written here, in tmp_path.
"""
import io
import json
import os
import struct
import time
import zlib

import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import quant
from minicnn.cli.commands import CLIError, load_image
from minicnn.io import CheckpointError

torch = pytest.importorskip("torch")


# -- layer constructors: build what PyTorch builds, refuse what it refuses ---------------------------
BUILT = [  # (ours, theirs): PyTorch builds these, with these weight shapes
    (lambda: nn.Conv2d(0, 4, 3), lambda: torch.nn.Conv2d(0, 4, 3)),
    (lambda: nn.Conv2d(1, 0, 3), lambda: torch.nn.Conv2d(1, 0, 3)),
    (lambda: nn.Conv2d(4, 4, 3, groups=4), lambda: torch.nn.Conv2d(4, 4, 3, groups=4)),
    (lambda: nn.Linear(0, 3), lambda: torch.nn.Linear(0, 3)),
    (lambda: nn.Linear(3, 0), lambda: torch.nn.Linear(3, 0)),
    (lambda: nn.BatchNorm2d(0), lambda: torch.nn.BatchNorm2d(0)),
    (lambda: nn.BatchNorm1d(0), lambda: torch.nn.BatchNorm1d(0)),
    (lambda: nn.Dropout(0.0), lambda: torch.nn.Dropout(0.0)),
    (lambda: nn.Dropout(1), lambda: torch.nn.Dropout(1)),
]


@pytest.mark.parametrize("ours, theirs", BUILT)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_what_pytorch_builds_is_built_with_its_shapes(ours, theirs):
    a, b = ours(), theirs()
    assert {k: tuple(v.shape) for k, v in a.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in b.state_dict().items()}
    for v in a.state_dict().values():
        assert np.isfinite(v.numpy()).all()               # no ZeroDivisionError, no NaN bound


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_layers_with_no_inputs_run_as_pytorch():
    """Linear(0, 3) gives its bias for every sample (PyTorch leaves that bias uninitialised:
    zeros here), and Linear(3, 0) an empty output, as PyTorch's."""
    y = nn.Linear(0, 3)(mc.zeros((2, 0)))
    assert y.shape == tuple(torch.nn.Linear(0, 3)(torch.zeros(2, 0)).shape) == (2, 3)
    np.testing.assert_array_equal(y.numpy(), np.zeros((2, 3)))
    assert nn.Linear(3, 0)(mc.ones((2, 3))).shape == tuple(torch.nn.Linear(3, 0)(torch.ones(2, 3)).shape)


REFUSED = [  # (ours, what the message must say, theirs): PyTorch refuses these too (at build or first call)
    (lambda: nn.Conv2d(1, 4, 3, groups=0), "Conv2d: groups must be a positive int, got 0",
     lambda: torch.nn.Conv2d(1, 4, 3, groups=0)),
    (lambda: nn.Conv2d(2, 4, 3, groups=-2), "groups must be a positive int, got -2",
     lambda: torch.nn.Conv2d(2, 4, 3, groups=-2)),
    (lambda: nn.Conv2d(2, 4, 3, groups=3), r"groups=3 must divide in_channels \(2\)",
     lambda: torch.nn.Conv2d(2, 4, 3, groups=3)),
    (lambda: nn.Conv2d(1, -2, 3), "Conv2d: out_channels must be >= 0, got -2",
     lambda: torch.nn.Conv2d(1, -2, 3)),
    (lambda: nn.Conv2d(-1, 2, 3), "Conv2d: in_channels must be >= 0, got -1",
     lambda: torch.nn.Conv2d(-1, 2, 3)),
    (lambda: nn.Conv2d(1.5, 4, 3), "Conv2d: in_channels must be an int, got 1.5",
     lambda: torch.nn.Conv2d(1.5, 4, 3)),
    (lambda: nn.LazyConv2d(4, 3, groups=0), "LazyConv2d: groups must be a positive int, got 0",
     lambda: torch.nn.LazyConv2d(4, 3, groups=0)),
    (lambda: nn.Linear(-1, 3), "Linear: in_features must be >= 0, got -1", lambda: torch.nn.Linear(-1, 3)),
    (lambda: nn.Linear(3, -2), "Linear: out_features must be >= 0, got -2", lambda: torch.nn.Linear(3, -2)),
    (lambda: nn.Linear(2.5, 3), "Linear: in_features must be an int, got 2.5", lambda: torch.nn.Linear(2.5, 3)),
    (lambda: nn.LazyLinear(-1), "LazyLinear: out_features must be >= 0, got -1", lambda: torch.nn.LazyLinear(-1)(torch.zeros(1, 2))),
    (lambda: nn.BatchNorm2d(-1), "BatchNorm2d: num_features must be >= 0, got -1",
     lambda: torch.nn.BatchNorm2d(-1)),
    (lambda: nn.BatchNorm1d(2.5), "BatchNorm1d: num_features must be an int, got 2.5",
     lambda: torch.nn.BatchNorm1d(2.5)),
    (lambda: nn.Dropout(-0.1), r"Dropout: p must be in \[0, 1\], got -0.1", lambda: torch.nn.Dropout(-0.1)),
    (lambda: nn.Dropout(1.5), r"Dropout: p must be in \[0, 1\], got 1.5", lambda: torch.nn.Dropout(1.5)),
    (lambda: nn.Dropout("a"), r"Dropout: p must be a number in \[0, 1\], got 'a'", lambda: torch.nn.Dropout("a")),
]


def pooling_forward(layer):
    return lambda: layer(torch.zeros(1, 1, 6, 6))


# Pooling windows that cannot work: PyTorch builds the layer and refuses at its first forward
# ("stride should not be zero", "pad should be at most half of effective kernel size"); a
# minicnn layer refuses the same windows when it is built (one step earlier, the same reason).
REFUSED += [
    (lambda: nn.MaxPool2d(0), "MaxPool2d: kernel_size must be >= 1, got 0",
     pooling_forward(torch.nn.MaxPool2d(0))),
    (lambda: nn.MaxPool2d(-1), "MaxPool2d: kernel_size must be >= 1, got -1",
     pooling_forward(torch.nn.MaxPool2d(-1))),
    (lambda: nn.MaxPool2d(2, stride=0), "MaxPool2d: stride must be >= 1, got 0",
     pooling_forward(torch.nn.MaxPool2d(2, stride=0))),
    (lambda: nn.MaxPool2d(2, stride=-1), "MaxPool2d: stride must be >= 1, got -1",
     pooling_forward(torch.nn.MaxPool2d(2, stride=-1))),
    (lambda: nn.MaxPool2d(2, padding=-1), "MaxPool2d: padding must be >= 0, got -1",
     pooling_forward(torch.nn.MaxPool2d(2, padding=-1))),
    (lambda: nn.MaxPool2d(2, padding=2), "padding .* must be at most half the kernel size",
     pooling_forward(torch.nn.MaxPool2d(2, padding=2))),
    (lambda: nn.AvgPool2d(0), "AvgPool2d: kernel_size must be >= 1, got 0",
     pooling_forward(torch.nn.AvgPool2d(0))),
    (lambda: nn.AvgPool2d(2, stride=0), "AvgPool2d: stride must be >= 1, got 0",
     pooling_forward(torch.nn.AvgPool2d(2, stride=0))),
    (lambda: nn.MixedPool2d(2, stride=0), "MixedPool2d: stride must be >= 1, got 0",
     pooling_forward(torch.nn.MaxPool2d(2, stride=0))),
]


@pytest.mark.parametrize("ours, message, theirs", REFUSED, ids=[m for _, m, _ in REFUSED])
def test_what_pytorch_refuses_is_refused_with_a_clear_message(ours, message, theirs):
    with pytest.raises(Exception):          # PyTorch refuses it (so no working program is turned away)
        theirs()
    with pytest.raises((ValueError, TypeError), match=message) as info:
        ours()
    assert "\n" not in str(info.value)


def test_max_pool_stride_zero_is_no_longer_read_as_the_default():
    """``stride or kernel_size`` took stride=0 for "not given" and pooled with stride 2."""
    assert nn.MaxPool2d(2).stride == 2 and nn.MaxPool2d(3, stride=1).stride == 1
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        nn.MaxPool2d(2, stride=0)


# -- load_state_dict ---------------------------------------------------------------------------------
@pytest.mark.parametrize("state, message", [
    ([1, 2, 3], "expected a dict-like state_dict .*got list"),
    ("weight", "expected a dict-like state_dict .*got str"),
    (None, "expected a dict-like state_dict .*got NoneType"),
])
def test_load_state_dict_refuses_what_is_not_a_mapping(state, message):
    with pytest.raises(TypeError, match=message):
        nn.Linear(2, 3).load_state_dict(state)
    with pytest.raises(TypeError, match="dict-like"):            # PyTorch's message says the same
        torch.nn.Linear(2, 3).load_state_dict(state)


@pytest.mark.parametrize("value, message", [
    ("abc", "'weight' must be a Tensor or an array, got str"),
    (None, "'weight' must be a Tensor or an array, got NoneType"),
    ([[1.0, 2.0]] * 3, "'weight' must be a Tensor or an array, got list"),
    (np.array([["a", "b"]] * 3), "'weight' must hold numbers, got an array of dtype <U1"),
    (np.empty((3, 2), dtype=object), "'weight' must hold numbers, got an array of dtype object"),
])
def test_load_state_dict_refuses_values_that_are_not_arrays(value, message):
    layer = nn.Linear(2, 3)
    before = layer.weight.numpy().copy()
    with pytest.raises(TypeError, match=message):
        layer.load_state_dict({"weight": value, "bias": np.zeros(3)})
    np.testing.assert_array_equal(layer.weight.numpy(), before)      # nothing changed


def test_load_state_dict_still_takes_tensors_numpy_and_torch_arrays():
    layer = nn.Linear(2, 3)
    w = np.arange(6.0).reshape(3, 2)
    for value in (w, mc.tensor(w), torch.tensor(w), w.astype(np.float16)):
        layer.load_state_dict({"weight": value, "bias": np.ones(3, dtype=np.int64)})
        np.testing.assert_array_equal(layer.weight.numpy(), w)
        assert layer.weight.dtype == np.float32
        np.testing.assert_array_equal(layer.bias.numpy(), np.ones(3))
    with pytest.raises(KeyError, match=r"shape mismatch: weight: expected shape \(3, 2\), got \(2, 3\)"):
        layer.load_state_dict({"weight": w.T, "bias": np.zeros(3)})
    with pytest.raises(KeyError, match="unexpected keys: 1"):     # a non-string key is named, not a crash
        layer.load_state_dict({"weight": w, "bias": np.zeros(3), 1: np.zeros(1)})


# -- mc.load: the header is checked before the body is read -----------------------------------------
def safetensors_file(path, header, body=b""):
    """A file with this JSON header (a dict, or raw bytes) and body."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)
    return path


class CountingOpen:
    """Wrap ``open`` in minicnn.io to count the bytes read from files."""

    def __init__(self, monkeypatch):
        import builtins
        import minicnn.io as mio
        self.read, real_open = 0, builtins.open
        counter = self

        class Counted:
            def __init__(self, f):
                self.f = f

            def read(self, *n):
                data = self.f.read(*n)
                counter.read += len(data)
                return data

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        monkeypatch.setattr(mio, "open", lambda *a, **k: Counted(real_open(*a, **k)), raising=False)


@pytest.mark.parametrize("header", [
    b'{"junk": ' + b"x" * 50,                                       # not JSON
    b"\x00" * 64,                                                    # not even text
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},   # valid, but a 1 GB body it does not claim
])
def test_a_1gb_file_with_a_junk_header_is_refused_after_reading_little(tmp_path, monkeypatch, header):
    path = safetensors_file(tmp_path / "junk.ckpt", header)
    with open(path, "r+b") as f:
        f.truncate(1 << 30)                                         # sparse: no disk used
    counting = CountingOpen(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        mc.load(path)
    assert time.perf_counter() - start < 0.5
    assert counting.read < 1 << 20, f"{counting.read:,} bytes read to refuse it"


def test_a_header_length_past_the_end_of_the_file_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "long.ckpt"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b"{}")
    counting = CountingOpen(monkeypatch)
    with pytest.raises(CheckpointError, match=r"header length says 1099511627776 bytes, but the file has 2"):
        mc.load(path)
    assert counting.read <= 64                                      # the length, and the error's sniff
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", (1 << 63) + 5) + b"{}")           # the 2^63 header of the fuzz probes
    with pytest.raises(CheckpointError, match="header length says"):
        mc.load(path)


@pytest.mark.parametrize("entry, message", [
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, r"shape \[3\] of F32 is 12 bytes"),  # lying shape
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "non-negative ints"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, r"data_offsets must be \[begin, end\]"),
    ({"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}, "dtype 'BF16' is not one NumPy reads"),
    ({"dtype": "F32", "shape": [2]}, "expected dtype, shape and data_offsets"),
])
def test_a_header_that_lies_about_its_tensors_is_refused(tmp_path, entry, message):
    path = safetensors_file(tmp_path / "lie.ckpt", {"w": entry}, b"\0" * 8)
    with pytest.raises(CheckpointError, match=message):
        mc.load(path)


def test_overlapping_gaps_and_short_bodies_are_refused(tmp_path):
    f32 = lambda begin: {"dtype": "F32", "shape": [2], "data_offsets": [begin, begin + 8]}  # noqa: E731
    for header, body, message in [({"a": f32(0), "b": f32(4)}, 12, "an overlap"),
                                  ({"a": f32(0), "b": f32(12)}, 20, "a gap"),
                                  ({"a": f32(0)}, 4, "hold 8 bytes of data, but the file has 4")]:
        with pytest.raises(CheckpointError, match=message):
            mc.load(safetensors_file(tmp_path / "bad.ckpt", header, b"\0" * body))


def test_good_files_still_load(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(0, dtype=np.int64)}
    mc.save(state, tmp_path / "ok.ckpt")
    back = mc.load(tmp_path / "ok.ckpt")
    np.testing.assert_array_equal(back["w"], state["w"])
    assert back["b"].shape == (0,)
    from safetensors.numpy import save_file
    save_file({"x": np.ones((2, 2), dtype=np.float64)}, str(tmp_path / "plain.safetensors"))
    np.testing.assert_array_equal(mc.load(tmp_path / "plain.safetensors")["x"], np.ones((2, 2)))


# -- hostile int8 checkpoints ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    """A real int8 checkpoint (a small conv net) and its tensors and metadata, to be made hostile."""
    mc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 13 * 13, 4))
    model.eval()
    p = quant.prepare(model)
    quant.calibrate(p, [np.random.default_rng(0).random((8, 1, 28, 28)).astype(np.float32)])
    path = tmp_path_factory.mktemp("int8") / "good.int8"
    quant.save_quantized(path, quant.convert(p), {"model_name": "custom"})
    from safetensors import safe_open
    from safetensors.numpy import load_file
    with safe_open(str(path), framework="np") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return path, load_file(str(path)), meta


def write_int8(path, tensors, meta):
    from safetensors.numpy import save_file
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    return path


def hostile(int8_file, tmp_path, change):
    """The good file, with ``change(tensors, meta)`` applied."""
    _, tensors, meta = int8_file
    tensors, meta = dict(tensors), json.loads(json.dumps(meta))
    change(tensors, meta)
    return write_int8(tmp_path / "hostile.int8", tensors, meta)


def layer_index(meta, op):
    return next(i for i, s in enumerate(meta["steps"]) if s["op"] == op)


def set_scale(value):
    def change(tensors, meta):
        i = layer_index(meta, "conv")
        tensors[f"steps.{i}.weight_scale"] = np.full_like(tensors[f"steps.{i}.weight_scale"], value)
    return change


def float_weights(tensors, meta):
    i = layer_index(meta, "conv")
    tensors[f"steps.{i}.weight_q"] = tensors[f"steps.{i}.weight_q"].astype(np.float32) * 0.01


def no_steps(tensors, meta):
    meta["steps"] = []


def pool_stride(value):
    def change(tensors, meta):
        meta["steps"][layer_index(meta, "maxpool")]["args"][1] = value
    return change


def conv_stride_zero(tensors, meta):
    meta["steps"][layer_index(meta, "conv")]["conv_args"]["stride"] = [0, 1]


def input_scale(value):
    def change(tensors, meta):
        meta["steps"][0]["scale"] = value
    return change


def out_zero_point(value):
    def change(tensors, meta):
        meta["steps"][layer_index(meta, "linear")]["out"][1] = value
    return change


def missing_bias(tensors, meta):
    del tensors[f"steps.{layer_index(meta, 'linear')}.bias_q"]


def unknown_op(tensors, meta):
    meta["steps"].insert(1, {"op": "softmax", "args": []})


def only_quantize(tensors, meta):
    meta["steps"] = meta["steps"][:1]


@pytest.mark.parametrize("change, message", [
    (set_scale(float("nan")), "weight_scale must hold 1 or 3 positive finite scales"),
    (set_scale(float("inf")), "weight_scale must hold 1 or 3 positive finite scales"),
    (set_scale(-1.0), "weight_scale must hold 1 or 3 positive finite scales"),
    (float_weights, r"steps\.\d+\.weight_q: expected int8, got float32"),
    (no_steps, "steps: expected a non-empty list of steps"),
    (only_quantize, "no int8 layer"),
    (pool_stride(0), r"maxpool takes \[kernel >= 1, stride >= 1"),
    (pool_stride(-2), r"maxpool takes \[kernel >= 1, stride >= 1"),
    (conv_stride_zero, "conv_args stride must be two ints >= 1"),
    (input_scale(float("nan")), "positive finite scale"),
    (input_scale(0.0), "positive finite scale"),
    (out_zero_point(300), r"zero point must be an int in \[0, 255\]"),
    (missing_bias, "bias_q: missing from the file"),
    (unknown_op, "unknown op 'softmax'"),
], ids=["nan scale", "inf scale", "negative scale", "float32 weights", "no steps", "no layer",
        "pool stride 0", "pool stride -2", "conv stride 0", "nan input scale", "zero input scale",
        "zero point 300", "missing bias", "unknown op"])
def test_hostile_int8_checkpoints_are_refused_by_name(int8_file, tmp_path, change, message):
    path = hostile(int8_file, tmp_path, change)
    with pytest.raises(quant.QuantError, match=message) as info:
        quant.load_quantized(path)
    assert str(path) in str(info.value)
    # and through the CLI's loader: a CLIError (exit 2), not a crash and not exit 0
    from minicnn.cli.commands import load_checkpoint_file
    with pytest.raises(CLIError, match=message):
        load_checkpoint_file(str(path))


def test_the_good_int8_checkpoint_still_loads_and_runs(int8_file):
    path, _, _ = int8_file
    loaded = quant.load_quantized(path)
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    assert loaded["module"](mc.tensor(x)).shape == (2, 4)


def test_an_int8_file_with_a_junk_header_is_a_checkpoint_error(tmp_path):
    path = safetensors_file(tmp_path / "junk.int8", b'{"__metadata__": {"format": "minicnn-int8"}, ' + b"x" * 20)
    with pytest.raises(CheckpointError):
        quant.load_quantized(path)


# -- 16-bit PNG --------------------------------------------------------------------------------------
def png_bytes(pixels, bit_depth, color_type):
    """A PNG written by hand (PIL cannot write 16-bit RGB): pixels (H, W) or (H, W, C) uint."""
    h, w = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + pixels[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.mark.parametrize("side", [28, 56])
def test_a_16_bit_png_reads_as_its_8_bit_twin(tmp_path, side):
    """Scaled by 65535 (torchvision's decode_png + to_dtype(scale=True)), not clipped at 255."""
    rs = np.random.default_rng(0)
    grey16 = rs.integers(0, 65536, (side, side)).astype(np.uint16)
    grey16[: side // 2] //= 8                                        # a dark half, so no inversion either way
    grey8 = np.rint(grey16 / 257).astype(np.uint8)                   # the same picture in 8 bits
    a16 = load_image(write(tmp_path / "g16.png", png_bytes(grey16, 16, 0)))
    a8 = load_image(write(tmp_path / "g8.png", png_bytes(grey8, 8, 0)))
    assert a16.dtype == np.float32 and a16.shape == (28, 28)
    assert 0 <= a16.min() and a16.max() <= 1
    np.testing.assert_allclose(a16, a8, atol=2 / 255)                # was up to 0.99 off
    if side == 28:                                                   # no resize: exactly v / 65535
        expected = grey16 / 65535.0
        expected = 1 - expected if expected.mean() > 0.5 else expected
        np.testing.assert_allclose(a16, expected, rtol=1e-6, atol=1e-7)
    rgb16 = load_image(write(tmp_path / "g16.png", png_bytes(grey16, 16, 0)), channels=3)
    assert rgb16.shape == (3, 28, 28)
    np.testing.assert_allclose(rgb16, np.stack([load_image(str(tmp_path / "g8.png"), channels=3)[0]] * 3),
                               atol=2 / 255)


def test_16_bit_rgb_and_grey_alpha_pngs_read_right(tmp_path):
    rs = np.random.default_rng(1)
    rgb16 = rs.integers(0, 65536, (28, 28, 3)).astype(np.uint16)
    a = load_image(write(tmp_path / "rgb16.png", png_bytes(rgb16, 16, 2)), channels=3)
    np.testing.assert_allclose(a, rgb16.transpose(2, 0, 1) / 65535.0, atol=1 / 255)
    la16 = np.stack([rs.integers(0, 65536, (28, 28)) // 4, np.full((28, 28), 65535)], -1).astype(np.uint16)
    b = load_image(write(tmp_path / "la16.png", png_bytes(la16, 16, 4)))
    np.testing.assert_allclose(b, la16[..., 0] / 65535.0, atol=1 / 255)


def test_pixels_of_unknown_range_are_refused(tmp_path):
    from PIL import Image
    Image.fromarray(np.arange(28 * 28, dtype=np.int32).reshape(28, 28) * 1000).save(tmp_path / "i32.tif")
    with pytest.raises(CLIError, match=r"32-bit integer pixels \(PIL mode 'I'\)"):
        load_image(str(tmp_path / "i32.tif"))
    Image.fromarray(np.ones((28, 28), dtype=np.float32) * 3.5).save(tmp_path / "f32.tif")
    with pytest.raises(CLIError, match="floating-point pixels"):
        load_image(str(tmp_path / "f32.tif"))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(buf, format="PNG")   # 8-bit: unchanged
    np.testing.assert_array_equal(load_image(write(tmp_path / "z.png", buf.getvalue())), np.zeros((28, 28)))
    assert os.path.exists(tmp_path / "z.png")
