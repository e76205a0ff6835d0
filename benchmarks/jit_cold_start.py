"""What Numba's compilation costs: the first training step with an empty cache vs a cached one.

    python benchmarks/jit_cold_start.py

Each measurement is a fresh Python process that imports minicnn with the
numba backend and runs one training step of the reference CNN (batch 32),
then one inference, in float32, then one training step in float64 (gradient
checks use float64, and each dtype is compiled separately). Numba compiles
every kernel the first time it meets a new dtype; with ``cache=True`` it
writes the machine code next to the source (``kernels/__pycache__``) and
later processes only load it.

The cold runs point ``NUMBA_CACHE_DIR`` at a new empty folder, so your real
cache is neither used nor disturbed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import minicnn as mc
import minicnn.functional as F
sys.path.insert(0, HERE)
import bench_model
t_import = time.perf_counter() - t0
timings = {"import minicnn": t_import}
for dtype in ("float32", "float64"):
    mc.manual_seed(0)
    model = bench_model.minicnn_model()
    if dtype == "float64":
        model.double()
    params = list(model.parameters())
    xs, ys = bench_model.random_batch(32)
    x, y = mc.tensor(xs, dtype=dtype), mc.tensor(ys)
    t = time.perf_counter()
    bench_model.minicnn_train_step(model, params, x, y)
    timings[f"first training step, {dtype}"] = time.perf_counter() - t
    t = time.perf_counter()
    bench_model.minicnn_train_step(model, params, x, y)
    timings[f"second training step, {dtype}"] = time.perf_counter() - t
print(json.dumps(timings))
""".replace("HERE", repr(HERE))


def run(cache_dir):
    env = dict(os.environ, MINICNN_BACKEND="numba")
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory(prefix="minicnn-numba-cache-") as cache:
        cold = run(cache)           # empty cache: compiles and fills it
        warm = run(cache)           # the same cache, now full
    print(f"{'':34}{'empty cache':>13}{'cached':>10}")
    for key in cold:
        print(f"{key:<34}{cold[key]:>12.2f}s{warm[key]:>9.2f}s")
    total_cold, total_warm = sum(cold.values()), sum(warm.values())
    print(f"{'total':<34}{total_cold:>12.2f}s{total_warm:>9.2f}s")


if __name__ == "__main__":
    main()
