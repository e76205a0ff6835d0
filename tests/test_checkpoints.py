"""Checkpoints are safetensors files: exact round trips, never a pickle, readable by PyTorch."""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import optim
from minicnn.cli import main
from minicnn.train.loop import CheckpointError, load_checkpoint, save_checkpoint


def _small_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_every_kind_of_value_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rng.random(5)
    state = {
        "weights": OrderedDict([("conv.weight", rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
                                ("bn.num_batches_tracked", np.array(7, dtype=np.int64))]),
        "by_index": {0: {"step": 3, "exp_avg": np.arange(4.0)}, 1: {}},     # optimizer-style int keys
        "pair": (1.5, -2, "x"), "best": float("inf"), "worst": float("-inf"), "unknown": float("nan"),
        "np_scalar": np.float32(0.1), "flag": True, "none": None, "empty": np.zeros((0, 3), np.uint8),
        "mask": np.array([True, False]), "rng": rng.bit_generator.state,   # 128-bit integers
        "history": {"loss": [2.302585092994046, 0.1 + 0.2], "lr": [1e-3]},
        "tricky": {"__tensor__": "not a tensor"},                            # a key that looks like a tag
    }
    path = mc.save(state, tmp_path / "s.safetensors")
    back = mc.load(path)
    assert list(back) == list(state)
    np.testing.assert_array_equal(back["weights"]["conv.weight"], state["weights"]["conv.weight"])
    assert back["weights"]["bn.num_batches_tracked"].shape == () and back["weights"]["bn.num_batches_tracked"] == 7
    assert list(back["by_index"]) == [0, 1] and back["by_index"][0]["step"] == 3
    assert back["pair"] == (1.5, -2, "x") and type(back["pair"]) is tuple
    assert back["best"] == float("inf") and back["worst"] == float("-inf") and np.isnan(back["unknown"])
    assert type(back["np_scalar"]) is np.float32 and back["np_scalar"] == np.float32(0.1)
    assert back["flag"] is True and back["none"] is None
    assert back["empty"].shape == (0, 3) and back["empty"].dtype == np.uint8
    assert back["mask"].dtype == bool and back["mask"].tolist() == [True, False]
    assert back["rng"] == state["rng"]
    assert back["history"] == state["history"] and back["tricky"] == state["tricky"]
    # the RNG state really restores the generator: the same next numbers
    g = np.random.default_rng()
    g.bit_generator.state = back["rng"]
    np.testing.assert_array_equal(g.random(3), rng.random(3))


def test_a_flat_state_dict_keeps_its_keys_as_tensor_names(tmp_path):
    import safetensors.numpy
    model = _small_model()
    path = mc.save(model.state_dict(), tmp_path / "m.safetensors")
    raw = safetensors.numpy.load_file(path)
    assert set(raw) == set(model.state_dict())
    fresh = _small_model()
    fresh.load_state_dict(mc.load(path))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), v.numpy())


def test_unsupported_values_are_refused_with_the_path(tmp_path):
    with pytest.raises(TypeError, match=r"a\.b.*object"):
        mc.save({"a": {"b": object()}}, tmp_path / "x")
    with pytest.raises(ValueError, match="clashes"):
        mc.save({"a.b": np.zeros(1), "a": {"b": np.ones(1)}}, tmp_path / "x")
    assert not os.listdir(tmp_path)                     # nothing half-written


def test_checkpoint_layout_names_tensors_by_role(tmp_path):
    import safetensors.numpy
    model = _small_model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    x = mc.tensor(np.random.default_rng(0).random((2, 1, 8, 8)))
    mc.functional.cross_entropy(model(x), mc.tensor([0, 2])).backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.ckpt", model, opt, epoch=2, order=np.arange(5)[::-1],
                           config={"model_name": "x", "normalization": (0.1, 0.3)})
    names = set(safetensors.numpy.load_file(path))
    assert {"model.0.weight", "model.1.running_var", "optimizer.state.0.exp_avg", "order"} <= names
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and state["config"]["normalization"] == (0.1, 0.3)
    assert state["order"].tolist() == [4, 3, 2, 1, 0]
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        meta = f.metadata()
    import json
    info = json.loads(meta["__minicnn__"])
    assert info["kind"] == "checkpoint" and info["format_version"] == 2 and info["minicnn_version"]
    assert json.loads(meta["epoch"]) == 2                # plain JSON, readable without minicnn
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(mc.save({"w": np.zeros(2)}, tmp_path / "plain.safetensors"))


class _Trap:
    """Unpickling this creates a file: proof that something in the pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_and_nothing_in_it_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"model": _Trap(str(marker)), "version": 1}))
    # the test can fail: unpickling this file really does run code
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Trap(str(probe))))
    assert probe.exists()

    for load in (load_checkpoint, mc.load):
        with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*pickle"):
            load(evil)
    (tmp_path / "x.png").write_bytes(b"")
    for argv in (["evaluate", str(evil)], ["predict", str(evil), str(tmp_path / "x.png")],
                 ["train", "--resume", str(evil), "--limit-train", "64", "--limit-test", "32",
                  "--out", str(tmp_path / "run"), "--no-progress"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not a safetensors checkpoint" in err and "pickle" in err, err
    assert not marker.exists()
    # an old protocol-0 pickle and a torch.save zip are named too
    (tmp_path / "p0").write_bytes(pickle.dumps({"a": 1}, protocol=0))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "p0")
    (tmp_path / "z").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(CheckpointError, match="zip"):
        load_checkpoint(tmp_path / "z")


def test_pytorch_loads_the_weights_in_one_line_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch
    mc.manual_seed(0)
    model = _small_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = np.random.default_rng(1).random((4, 1, 8, 8)).astype(np.float32)
    for _ in range(2):                                   # move the BN running statistics
        mc.functional.cross_entropy(model(mc.tensor(x)), mc.tensor([0, 1, 2, 0])).backward()
        opt.step()
    model.eval()
    ours = model(mc.tensor(x)).numpy()
    path = save_checkpoint(tmp_path / "best.ckpt", model, opt, epoch=1)

    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                 torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 4 * 4, 3))
    sd = {k[len("model."):]: v for k, v in safetensors.torch.load_file(path).items() if k.startswith("model.")}
    theirs.load_state_dict(sd)                           # strict: every key and shape matches
    theirs.eval()
    with torch.no_grad():
        np.testing.assert_allclose(theirs(torch.from_numpy(x)).numpy(), ours, rtol=1e-5, atol=1e-6)

    # and back: a torch state dict saved with safetensors loads into minicnn with mc.load
    with torch.no_grad():
        theirs[0].weight.mul_(2.0)
    safetensors.torch.save_file(theirs.state_dict(), str(tmp_path / "torch.safetensors"))
    back = _small_model()
    back.load_state_dict(mc.load(tmp_path / "torch.safetensors"))
    with pytest.raises(CheckpointError, match="not one minicnn wrote"):
        load_checkpoint(tmp_path / "torch.safetensors")        # weights alone: not a training checkpoint
    back.eval()
    with torch.no_grad():
        np.testing.assert_allclose(back(mc.tensor(x)).numpy(), theirs(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-6)
