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
