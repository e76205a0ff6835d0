"""The benchmark scripts parse and refuse clearly where what they need is missing."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).parent.parent / "benchmarks"


def test_gpu_check_parses_and_says_why_it_stops_without_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU driver is present: the script would really run")
    p = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 3
    assert "no NVIDIA GPU here" in p.stderr


def test_bench_protocol_requires_real_mnist_and_checks_its_options():
    env = {k: v for k, v in os.environ.items() if k != "MINICNN_DATA_DIR"}
    p = subprocess.run([sys.executable, str(BENCH / "bench_protocol.py")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode != 0 and "set MINICNN_DATA_DIR" in p.stderr
    env["MINICNN_DATA_DIR"] = "/nonexistent"
    p = subprocess.run([sys.executable, str(BENCH / "bench_protocol.py"), "--configs", "train128"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode != 0 and "--configs expects mode:batch pairs" in p.stderr


def test_profile_conv_block_runs_and_accounts_for_every_piece():
    p = subprocess.run([sys.executable, str(BENCH / "profile_conv_block.py"), "--batch", "8", "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for piece in ("im2col", "GEMM  y = W cols", "unpool (dY)", "GEMM  dW = dY cols^T", "GEMM  dcols = W^T dY",
                  "col2im", "whole kernel, 1 thread(s)"):
        assert piece in p.stdout
    assert p.stdout.count("sum of the pieces") == 2


def test_bench_protocol_imports_another_checkouts_minicnn(tmp_path):
    """minicnn-numba@DIR: the worker imports minicnn and its kernels from DIR, not from here."""
    root = pathlib.Path(__file__).parent.parent
    copy = tmp_path / "checkout"
    shutil.copytree(root / "minicnn", copy / "minicnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "kernels", copy / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_protocol as b; b.use_checkout(sys.argv[2]); "
            "import minicnn, minicnn.kernels.numpy_ref as k; print(minicnn.__file__); print(k.__file__)")
    p = subprocess.run([sys.executable, "-c", code, str(BENCH), str(copy)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "MINICNN_BACKEND": "numpy"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split()
    assert lines[0].startswith(str(copy / "minicnn")) and lines[1].startswith(str(copy / "kernels"))
