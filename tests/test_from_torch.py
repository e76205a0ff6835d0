"""``minicnn from-torch``: a PyTorch program runs on minicnn with only its import lines rewritten.

* the rewrite follows the import table and touches nothing but import lines;
* tests/programs/pytorch_digits.py — a PyTorch teaching program (TensorDataset,
  random_split, DataLoader, Adadelta, StepLR, ``.to(device)``, ``x.size(0)``,
  ``outputs.max(1)``, ``torch.flatten``, ``float(t)``, a 0-d tensor as an index)
  — runs through the command on the embedded digits, and, where PyTorch is
  installed, runs as it is under PyTorch to a comparable accuracy.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minicnn.cli.from_torch import IMPORT_TABLE, rewrite_imports
from minicnn.data.datasets import load_embedded_digits

PROGRAM = pathlib.Path(__file__).parent / "programs" / "pytorch_digits.py"

pytestmark = pytest.mark.tutorial00


@pytest.mark.parametrize("line, expected", [
    ("import torch", "import minicnn as torch"),
    ("import torch.nn as nn", "import minicnn.nn as nn"),
    ("import torch.nn.functional as F", "import minicnn.nn.functional as F"),
    ("import torch.optim as optim", "import minicnn.optim as optim"),
    ("from torch.optim.lr_scheduler import StepLR", "from minicnn.optim.lr_scheduler import StepLR"),
    ("from torch.utils.data import DataLoader, TensorDataset", "from minicnn.utils.data import DataLoader, TensorDataset"),
    ("from torchvision import datasets, transforms", "from minicnn.vision import datasets, transforms"),
    ("import torchvision", "import minicnn.vision as torchvision"),
    ("import torchvision.transforms as T", "import minicnn.vision.transforms as T"),
    ("import torch.nn", "import minicnn.nn, minicnn as torch"),              # binds torch, as Python does
    ("import numpy as np, torch  # both", "import numpy as np, minicnn as torch  # both"),
    ("    from torch import nn", "    from minicnn import nn"),
    ("from torch import nn, optim", "from minicnn import nn, optim"),
    ("import torchaudio", "import torchaudio"),                                # not in the table: left alone
    ("import torchx", "import torchx"),                                        # a prefix is not a module
    ("x = torch.zeros(3)  # import torch", "x = torch.zeros(3)  # import torch"),
    ("print('import torch')", "print('import torch')"),
])
def test_the_rewrite_follows_the_import_table(line, expected):
    assert rewrite_imports(line + "\n") == expected + "\n"


def test_the_table_is_the_readmes():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    for old, new in IMPORT_TABLE:
        assert f"| `{old}`" in readme and f"`{new}`" in readme, (old, new)


def test_only_import_lines_change():
    source = PROGRAM.read_text()
    before, after = source.splitlines(), rewrite_imports(source).splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert changed and all(a.lstrip().startswith(("import ", "from ")) for a, _ in changed), changed
    assert all("torch" not in b.replace("as torch", "") for _, b in changed), changed


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    images, labels = load_embedded_digits()
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, images=images[:2000], labels=labels[:2000])
    return path


def _accuracy(output):
    return float(output.strip().splitlines()[-1].split()[-1])


def _run(argv, backend="numpy"):
    env = dict(os.environ, MINICNN_BACKEND=backend)
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def minicnn_run(digits):
    res = _run([sys.executable, "-m", "minicnn.cli", "from-torch", str(PROGRAM), "--",
                "--data", str(digits), "--epochs", "2"], backend="numba")
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_a_pytorch_program_runs_on_minicnn(minicnn_run):
    lines = minicnn_run.splitlines()
    assert lines[0] == "train 1600 test 400 batch minicnn.Size([2, 1, 28, 28]) on cpu", lines[0]
    assert [ln.split(":")[0] for ln in lines[1:3]] == ["epoch 1", "epoch 2"]
    assert lines[3].startswith("first test images: ")
    assert _accuracy(minicnn_run) > 0.9, minicnn_run


def test_it_learns_as_well_as_under_pytorch(minicnn_run, digits):
    pytest.importorskip("torch")
    res = _run([sys.executable, str(PROGRAM), "--data", str(digits), "--epochs", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[0] == "train 1600 test 400 batch torch.Size([2, 1, 28, 28]) on cpu"
    # different random initialisations and shuffles: the same recipe, not the same numbers
    assert abs(_accuracy(minicnn_run) - _accuracy(res.stdout)) < 0.05, (minicnn_run, res.stdout)


def test_show_prints_the_rewritten_program(capsys):
    from minicnn.cli import main
    assert main(["from-torch", str(PROGRAM), "--show"]) == 0
    out = capsys.readouterr().out
    assert "import minicnn as torch\n" in out and "from minicnn.utils.data import" in out


def test_a_missing_program_is_one_line(capsys, tmp_path):
    from minicnn.cli import main
    assert main(["from-torch", str(tmp_path / "nope.py")]) == 2
    assert "cannot read the program" in capsys.readouterr().err


def test_torch_max_of_the_data_array_as_pytorch_programs_write_it():
    """``_, predicted = torch.max(outputs.data, 1)`` (the 60-minute blitz): ``.data`` is a
    detached tensor, as PyTorch's; ``mc.max`` also takes the backend array (``.array``)."""
    import minicnn as mc
    outputs = mc.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], requires_grad=True)
    values, predicted = mc.max(outputs.data, 1)
    assert predicted.tolist() == [1, 0] and values.tolist() == [2.0, 3.0]
    assert (predicted == mc.tensor([1, 2])).sum().item() == 1
    assert mc.max(outputs.array, 1)[1].tolist() == [1, 0]
