"""minicnn vs PyTorch CPU, measured the way a user trains (the performance issue's protocol).

    MINICNN_DATA_DIR=../shared/data python benchmarks/bench_protocol.py            # ~4 min on 2 cores
    python benchmarks/bench_protocol.py --rounds 6 --end-to-end 2 --json out.json
    python benchmarks/bench_protocol.py --contenders minicnn-numba,torch --no-end-to-end

What is measured, and how (each point is what a user's run does):

* The course's reference CNN (``minicnn.models.ReferenceCNN``), or with
  ``--model`` any built-in model (``all``: every one the README's table shows);
  PyTorch runs the same layers with the same initial weights
  (``bench_model.torch_twin``, checked by ``bench_model.check_twin``), float32, ``Adam(lr=1e-3)``, cross-entropy. PyTorch 2.13 CPU
  with ``torch.set_num_threads(2)`` (the threads Numba uses here).
* Real MNIST training images, normalised, **a new slice every step**,
  cycling through the first 4,096 images (labels likewise) — not one fixed
  batch that stays in the caches.
* Every contender lives in **its own worker process** (no thread pool of one
  can spin on the cores of another; peak memory is per process). Each worker
  is warmed up, then timed in **blocks of 10 consecutive steps**; the parent
  alternates the contenders block by block for ``--rounds`` rounds (the order
  rotating each round), and the figure is the **median of the per-round
  ratios** (minicnn time / PyTorch time), with min and max beside it.
* Training at batch 64 and 128; inference (``eval()``, ``no_grad``, the logits
  copied to a host NumPy array) at batch 128 and 1,000.
* End to end: the wall time of ``minicnn train --dataset mnist --epochs 1``
  (data from ``MINICNN_DATA_DIR``; the default 10 % validation split) vs a
  PyTorch script doing the same epoch — ``DataLoader(TensorDataset(...),
  batch_size=64, shuffle=True)`` over the same 54,000 training images, Adam,
  then validation and test accuracy — each a whole process, alternated,
  best of ``--end-to-end`` runs.
* Peak resident memory (``ru_maxrss``) of each training worker.

A ratio below 1.0 means minicnn is faster. Nothing else should run on the
machine meanwhile: the script warns when other processes use the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from bench_model import BENCH_MODELS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
POOL = 4096                      # the first 4,096 training images, cycled
BLOCK = 10                       # steps per timed block
CONFIGS = [("train", 64), ("train", 128), ("infer", 128), ("infer", 1000)]
MODEL_CONFIGS = [("train", 64), ("train", 128), ("infer", 128)]          # the every-model table
MEAN, STD = 0.1307, 0.3081


# -----------------------------------------------------------------------------
# Worker side
# -----------------------------------------------------------------------------
def _pool():
    """(images (4096, 1, 28, 28) float32 normalised, labels int64) of real MNIST."""
    import numpy as np
    from minicnn.data import load_mnist_arrays
    images, labels = load_mnist_arrays(train=True, download=False)
    x = ((images[:POOL].astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    return np.ascontiguousarray(x), labels[:POOL].astype(np.int64)


def _peak_rss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _minicnn_runner(mode, batch, model_name="reference"):
    import numpy as np
    import minicnn as mc
    import minicnn.functional as F
    from minicnn import optim
    from minicnn.models import get_model
    from minicnn.backend import to_host
    xs, ys = _pool()
    mc.manual_seed(0)
    model = get_model(model_name)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    # the fused model, as fit runs it; an older checkout (no mc.fuse) fused inside Sequential
    model = mc.fuse(model) if hasattr(mc, "fuse") else model
    pos = [0]

    def next_batch():
        i = pos[0]
        pos[0] = (i + batch) % (POOL - batch + 1) if batch < POOL else 0
        return mc.tensor(xs[i:i + batch]), mc.tensor(ys[i:i + batch])

    def train_step():
        model.train()
        x, y = next_batch()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()                               # the progress bar reads the loss every step

    def infer_step():
        model.eval()
        x, _ = next_batch()
        with mc.no_grad():
            np.asarray(to_host(model(x).array))
    return train_step if mode == "train" else infer_step


def _torch_runner(mode, batch, threads, device="cpu", model_name="reference"):
    import torch
    import torch.nn as tnn
    import minicnn as mc
    from minicnn.models import get_model
    from bench_model import torch_twin
    torch.set_num_threads(threads)
    xs, ys = _pool()
    xs, ys = torch.from_numpy(xs), torch.from_numpy(ys)      # host memory, like a DataLoader's batches
    torch.manual_seed(0)
    mc.manual_seed(0)
    # the same layers, built from minicnn's model with its weights (bench_model.check_twin proves
    # the twin computes the same logits and gradients)
    model = torch_twin(get_model(model_name)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pos = [0]

    def next_batch():
        i = pos[0]
        pos[0] = (i + batch) % (POOL - batch + 1) if batch < POOL else 0
        return xs[i:i + batch].to(device), ys[i:i + batch].to(device)

    def train_step():
        model.train()
        x, y = next_batch()
        loss = tnn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    def infer_step():
        model.eval()
        x, _ = next_batch()
        with torch.no_grad():
            model(x).cpu().numpy().copy()
    return train_step if mode == "train" else infer_step


def use_checkout(path):
    """Import minicnn from the checkout in ``path``, its own kernels/ included (an editable
    install of this checkout would otherwise map minicnn.kernels to this one's)."""
    import importlib.util
    sys.path.insert(0, path)
    folder = os.path.join(path, "kernels")
    spec = importlib.util.spec_from_file_location("minicnn.kernels", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["minicnn.kernels"] = module
    spec.loader.exec_module(module)
    import minicnn
    if not minicnn.__file__.startswith(path):
        raise RuntimeError(f"bench_protocol: wanted the minicnn of {path}, imported {minicnn.__file__}")


def worker(contender, mode, batch, threads, model_name="reference"):
    """Serve 'warmup' / 'block' / 'memory' commands from the parent, one JSON line each."""
    if os.environ.get("MINICNN_BENCH_CHECKOUT"):
        use_checkout(os.environ["MINICNN_BENCH_CHECKOUT"])
    if contender in ("torch", "torch-cuda"):
        step = _torch_runner(mode, batch, threads, "cuda" if contender == "torch-cuda" else "cpu", model_name)
    else:
        step = _minicnn_runner(mode, batch, model_name)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "warmup":
            for _ in range(cmd["steps"]):
                step()
            answer = {}
        elif cmd["op"] == "block":
            t = time.perf_counter()
            for _ in range(BLOCK):
                step()
            answer = {"seconds": time.perf_counter() - t}
        elif cmd["op"] == "memory":
            answer = {"peak_rss_mib": _peak_rss_mib()}
        else:
            break
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


# -----------------------------------------------------------------------------
# Parent side
# -----------------------------------------------------------------------------
class Worker:
    def __init__(self, contender, mode, batch, threads, model_name="reference"):
        env = dict(os.environ)
        if contender.startswith("minicnn-"):
            backend, _, checkout = contender.split("-", 1)[1].partition("@")
            env["MINICNN_BACKEND"] = backend
            if checkout:                             # minicnn-numba@DIR: the minicnn of another checkout
                env["MINICNN_BENCH_CHECKOUT"] = os.path.abspath(checkout)
        self.name = contender
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", contender, "--mode", mode,
             "--batch", str(batch), "--threads", str(threads), "--model", model_name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (see its error above)")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def _other_load():
    """Load average minus what we expect from ourselves: a hint that the machine is busy."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def steady_state(contenders, rounds, threads, warmup, configs=CONFIGS, model_name="reference"):
    results = []
    for mode, batch in configs:
        workers = [Worker(c, mode, batch, threads, model_name) for c in contenders]
        try:
            for w in workers:
                w.ask(op="warmup", steps=warmup)
            times = {w.name: [] for w in workers}
            for r in range(rounds):
                order = workers[r % len(workers):] + workers[:r % len(workers)]
                for w in order:
                    time.sleep(0.2)                  # let the previous contender's threads sleep
                    times[w.name].append(w.ask(op="block")["seconds"])
            memory = {w.name: w.ask(op="memory")["peak_rss_mib"] for w in workers}
        finally:
            for w in workers:
                w.close()
        row = {"model": model_name, "mode": mode, "batch": batch, "ms_per_step": {}, "images_per_s": {}, "peak_rss_mib": memory}
        for name, ts in times.items():
            per_step = statistics.median(ts) / BLOCK
            row["ms_per_step"][name] = per_step * 1e3
            row["images_per_s"][name] = batch / per_step
        ref = next((n for n in ("torch", "torch-cuda") if n in times), None)
        if ref is not None:
            row["ratio_vs_torch"] = {}
            for name, ts in times.items():
                if name == ref:
                    continue
                ratios = [a / b for a, b in zip(ts, times[ref])]
                row["ratio_vs_torch"][name] = {"median": statistics.median(ratios), "min": min(ratios),
                                               "max": max(ratios)}
        results.append(row)
        _print_row(row)
    return results


def _print_row(row):
    names = list(row["ms_per_step"])
    parts = [f"{row.get('model', 'reference'):12s} {row['mode']:5s} batch {row['batch']:4d}:"]
    for n in names:
        part = f" {n} {row['ms_per_step'][n]:7.2f} ms ({row['images_per_s'][n]:7.0f} img/s"
        if row["mode"] == "train":
            part += f", peak {row['peak_rss_mib'][n]:.0f} MiB"
        part += ")"
        if n in row.get("ratio_vs_torch", {}):
            r = row["ratio_vs_torch"][n]
            part += f" ratio {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
        parts.append(part)
    print(" |".join(parts), flush=True)


TORCH_EPOCH = r'''
import sys, time, numpy as np, torch, torch.nn as tnn
from torch.utils.data import DataLoader, TensorDataset
from minicnn.data import load_mnist_arrays, stratified_split
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
t0 = time.perf_counter()
xi, yi = load_mnist_arrays(train=True, download=False)
xt, yt = load_mnist_arrays(train=False, download=False)
norm = lambda a: torch.from_numpy(((a.astype(np.float32) / 255.0 - 0.1307) / 0.3081)[:, None])
tr, va = stratified_split(yi, 0.1, seed=0)          # the same 54,000 / 6,000 split as minicnn train
train = DataLoader(TensorDataset(norm(xi[tr]), torch.from_numpy(yi[tr].astype(np.int64))), batch_size=64, shuffle=True)
model = tnn.Sequential(tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(32, 64, 3), tnn.ReLU(),
                       tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(1600, 128), tnn.ReLU(), tnn.Dropout(0.5),
                       tnn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model.train()
for x, y in train:
    loss = tnn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step(); loss.item()
model.eval()
def acc(x, y):
    with torch.no_grad():
        return float(sum((model(x[i:i + 1000]).argmax(1).numpy() == y[i:i + 1000]).sum()
                         for i in range(0, len(y), 1000)) / len(y))
print(f"val {acc(norm(xi[va]), yi[va]):.4f} test {acc(norm(xt), yt):.4f} wall {time.perf_counter() - t0:.1f}s")
'''


def end_to_end(runs, threads, checkouts=()):
    """Wall time of whole processes: `minicnn train` vs the PyTorch script, alternated, best of `runs`.

    ``checkouts``: other minicnn checkouts (the ``@DIR`` of the contenders) whose
    `minicnn train` runs in the same alternation (a before/after comparison).
    """
    walls = {"minicnn train": [], "pytorch script": []}
    walls.update({f"minicnn train@{d}": [] for d in checkouts})
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "torch_epoch.py")
        with open(script, "w") as f:
            f.write(TORCH_EPOCH)
        commands = {
            "minicnn train": [sys.executable, "-m", "minicnn.cli", "train", "--dataset", "mnist", "--epochs", "1",
                              "--no-download", "--no-progress", "--out", os.path.join(tmp, "run")],
            "pytorch script": [sys.executable, script, str(threads)],
        }
        for i, d in enumerate(checkouts):       # the other checkout's own minicnn and kernels (use_checkout)
            train_args = commands["minicnn train"][3:-1] + [os.path.join(tmp, f"run-other-{i}")]
            code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                    f"from bench_protocol import use_checkout; use_checkout({d!r}); "
                    f"from minicnn.cli import main; sys.exit(main({train_args!r}))")
            commands[f"minicnn train@{d}"] = [sys.executable, "-c", code]
        env = dict(os.environ, MINICNN_BACKEND=os.environ.get("MINICNN_BACKEND", "numba"))
        for r in range(runs):
            for name in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
                time.sleep(1.0)
                t = time.perf_counter()
                p = subprocess.run(commands[name], capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t
                if p.returncode != 0:
                    raise RuntimeError(f"{name} failed:\n{p.stderr[-2000:]}")
                walls[name].append(wall)
                lines = [ln for ln in p.stdout.splitlines() if "accuracy" in ln or ln.startswith("val ")]
                outputs[name] = lines[-1] if lines else ""
                print(f"  end to end, {name}: {wall:.1f} s  ({outputs[name].strip()})", flush=True)
    best = {k: min(v) for k, v in walls.items()}
    ratio = best["minicnn train"] / best["pytorch script"]
    print(f"end to end (best of {runs}): minicnn train {best['minicnn train']:.1f} s, "
          f"PyTorch {best['pytorch script']:.1f} s, ratio {ratio:.2f}x", flush=True)
    ratios = {name: best[name] / best["pytorch script"] for name in best if name.startswith("minicnn train@")}
    for name, r in ratios.items():
        print(f"end to end (best of {runs}): {name} {best[name]:.1f} s, ratio {r:.2f}x", flush=True)
    return {"walls_s": walls, "best_s": best, "ratio": ratio, "ratios_other_checkouts": ratios,
            "last_output": outputs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contenders", default="minicnn-numba,minicnn-numpy,torch",
                    help="comma-separated: minicnn-<backend>, torch, torch-cuda; minicnn-<backend>@DIR "
                         "runs the minicnn of the checkout in DIR (a before/after comparison in one run) "
                         "(default: %(default)s)")
    ap.add_argument("--model", default="reference",
                    help="comma-separated names of minicnn.models.MODELS, or 'all' for "
                         f"{', '.join(BENCH_MODELS)} (default: %(default)s); PyTorch runs the same layers "
                         "(bench_model.torch_twin)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated mode:batch pairs (default: "
                         f"{','.join(f'{m}:{b}' for m, b in CONFIGS)} for one model, "
                         f"{','.join(f'{m}:{b}' for m, b in MODEL_CONFIGS)} for several)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=20, help="steps before timing")
    ap.add_argument("--end-to-end", type=int, default=2, metavar="RUNS")
    ap.add_argument("--no-end-to-end", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.mode, args.batch, args.threads, args.model)
    from minicnn.models import MODELS          # the parent only: a worker may import another checkout's
    model_names = list(BENCH_MODELS) if args.model == "all" else args.model.split(",")
    unknown = [m for m in model_names if m not in MODELS]
    if unknown:
        sys.exit(f"bench_protocol: --model expects names of {', '.join(MODELS)} or 'all', got {unknown}")
    if args.configs is None:
        args.configs = ",".join(f"{m}:{b}" for m, b in (CONFIGS if len(model_names) == 1 else MODEL_CONFIGS))
    if not os.environ.get("MINICNN_DATA_DIR"):
        sys.exit("bench_protocol: set MINICNN_DATA_DIR to the folder holding mnist/ (real MNIST is required)")
    contenders = args.contenders.split(",")
    try:
        configs = [(m, int(b)) for m, b in (c.split(":") for c in args.configs.split(","))]
    except ValueError:
        sys.exit(f"bench_protocol: --configs expects mode:batch pairs like train:128, got {args.configs!r}")
    if any(c.startswith("torch") for c in contenders):
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("bench_protocol: PyTorch is not installed (pip install torch==2.13.0), or drop it "
                     "from --contenders")
    load = _other_load()
    print(f"bench_protocol: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.2f} at start; {args.rounds} rounds of {BLOCK}-step blocks; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    if load > 0.5:
        print("bench_protocol: WARNING: the machine is busy; figures will be noisy", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cores": os.cpu_count(),
           "threads": args.threads, "rounds": args.rounds, "block_steps": BLOCK, "load_at_start": load,
           "models": model_names,
           "steady_state": [row for name in model_names
                            for row in steady_state(contenders, args.rounds, args.threads, args.warmup, configs,
                                                    name)]}
    if not args.no_end_to_end and "torch" in contenders and "reference" in model_names:
        checkouts = [c.partition("@")[2] for c in contenders if c.startswith("minicnn-") and "@" in c]
        out["end_to_end"] = end_to_end(args.end_to_end, args.threads, checkouts)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
