"""Training and inference speed of the reference CNN: minicnn (NumPy, Numba) vs PyTorch CPU.

    python benchmarks/bench_cnn.py                 # about a minute on 2 cores
    python benchmarks/bench_cnn.py --rounds 3      # quicker, noisier
    python benchmarks/bench_cnn.py --no-torch      # minicnn only

The network (``bench_model.py``): Conv2d(1,32,3)-ReLU-MaxPool(2)-Conv2d(32,64,3)-
ReLU-MaxPool(2)-Flatten-Linear(1600,128)-ReLU-Dropout(0.5)-Linear(128,10) on
28x28 images; a training step is forward, cross-entropy, backward and a plain
SGD update; inference is a forward pass in eval mode without a graph.

How it measures, and why:

* Every contender runs in its own worker process (started by this script),
  so that one framework's threads, allocator state and environment cannot
  leak into another's, and each process's peak memory is its own.
* After a warm-up (JIT compilation, allocator and cache warm-up), the
  contenders are measured *alternately*: round after round, each runs a few
  repetitions of each configuration in turn (the order rotates every round).
  Whatever else the machine is doing then slows every contender alike
  instead of whichever happened to run at that moment. A short pause before
  each block lets the previous contender's BLAS/OpenMP threads go to sleep.
* Reported: the median time per step over all repetitions, as images/s;
  the throughput relative to PyTorch; achieved GFLOP/s, counting only the
  convolutions and linear layers analytically (``bench_model.flops_per_image``;
  a training step counts 3x the forward); and peak memory: the worker's peak
  resident set (``ru_maxrss``), and how much of it appeared after the model
  and data were set up (the step's working memory).
* PyTorch gets ``torch.set_num_threads`` equal to Numba's thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BATCHES = (64, 128)
MODES = ("train", "infer")


# -----------------------------------------------------------------------------
# Worker side: one process per (contender, batch size)
# -----------------------------------------------------------------------------
def _rss_mib():
    """Peak resident set size of this process so far, in MiB (Linux: KiB units)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _current_rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _make_minicnn(backend, batch):
    import minicnn as mc
    import bench_model
    assert mc.get_backend() == backend, (mc.get_backend(), backend)
    mc.manual_seed(0)
    model = bench_model.minicnn_model()
    params = list(model.parameters())
    xs, ys = bench_model.random_batch(batch)
    x, y = mc.tensor(xs), mc.tensor(ys)

    def train():
        model.train()
        bench_model.minicnn_train_step(model, params, x, y)

    def infer():
        model.eval()
        with mc.no_grad():
            model(x)
    return {"train": train, "infer": infer}


def _make_torch(batch, threads):
    import torch
    import bench_model
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = bench_model.torch_model()
    xs, ys = bench_model.random_batch(batch)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)

    def train():
        model.train()
        for p in model.parameters():
            p.grad = None
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= bench_model.LR * p.grad

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)
    return {"train": train, "infer": infer}


def worker(contender, batch, threads):
    """Serve commands from the parent on stdin, one JSON line per answer."""
    sys.path.insert(0, HERE)
    if contender == "torch":
        steps = _make_torch(batch, threads)
    else:
        steps = _make_minicnn(contender.split("-", 1)[1], batch)
    base_rss = _current_rss_mib()
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "warmup":
            t = time.perf_counter()
            for mode in MODES:
                for _ in range(cmd["reps"]):
                    steps[mode]()
            answer = {"seconds": time.perf_counter() - t}
        elif cmd["op"] == "run":
            times = []
            for _ in range(cmd["reps"]):
                t = time.perf_counter()
                steps[cmd["mode"]]()
                times.append(time.perf_counter() - t)
            answer = {"times": times}
        elif cmd["op"] == "memory":
            answer = {"peak_rss_mib": _rss_mib(), "setup_rss_mib": base_rss}
        else:
            break
        out.write(json.dumps(answer) + "\n")
        out.flush()


# -----------------------------------------------------------------------------
# Parent side
# -----------------------------------------------------------------------------
def _split(contender):
    """"minicnn-numba [A=1 B=2]" -> ("minicnn-numba", {"A": "1", "B": "2"})."""
    name, _, extra = contender.partition(" [")
    env = dict(item.split("=", 1) for item in extra.rstrip("]").split()) if extra else {}
    return name, env


class Worker:
    def __init__(self, contender, batch, threads):
        name, extra_env = _split(contender)
        env = dict(os.environ, **extra_env)
        if name.startswith("minicnn-"):
            env["MINICNN_BACKEND"] = name.split("-", 1)[1]
        self.contender, self.batch = contender, batch
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", name,
             "--batch-size", str(batch), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.contender} (batch {self.batch}) died; see its stderr above")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=30)


def _cpu_jiffies(pids):
    """(busy jiffies of the whole machine, jiffies used by ``pids``), Linux only."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]          # all but idle and iowait
        ours = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            ours += int(stat[11]) + int(stat[12])           # utime + stime
        return busy, ours
    except (OSError, ValueError, IndexError):
        return None


def _numba_threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS


def _torch_available():
    try:
        import importlib.util
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="alternation rounds (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per block (default 3)")
    ap.add_argument("--pause", type=float, default=0.15,
                    help="seconds of rest before each block (default 0.15)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--backends", nargs="+", default=["numpy", "numba"])
    ap.add_argument("--with-env", nargs=2, action="append", default=[], metavar=("BACKEND", "VAR=VALUE"),
                    help="add a contender: minicnn BACKEND with environment variables set "
                         "(several separated by spaces), e.g. --with-env numba OPENBLAS_THREAD_TIMEOUT=4")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.batch_size, args.threads)

    sys.path.insert(0, HERE)
    import bench_model
    threads = _numba_threads()
    contenders = [f"minicnn-{b}" for b in args.backends]
    contenders += [f"minicnn-{b} [{assignments}]" for b, assignments in args.with_env]
    if not args.no_torch and _torch_available():
        contenders.append("torch")
    elif not args.no_torch:
        print("PyTorch is not installed: comparing minicnn backends only.\n")

    import numpy as np
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}, NumPy {np.__version__}; threads: {threads}")
    width = max(15, max(len(c) for c in contenders) + 1)
    workers = {}
    for batch in args.batch_sizes:
        for c in contenders:
            workers[c, batch] = Worker(c, batch, threads)
    try:
        for (c, batch), w in workers.items():
            secs = w.ask(op="warmup", reps=3)["seconds"]
            print(f"warm-up {c:<{width}} batch {batch:>4}: {secs:6.2f} s (includes JIT compilation)")
        times = {key + (mode,): [] for key in workers for mode in MODES}
        blocks = [(mode, batch) for mode in MODES for batch in args.batch_sizes]
        pids = [os.getpid()] + [w.proc.pid for w in workers.values()]
        jiffies0 = _cpu_jiffies(pids)
        t0 = time.perf_counter()
        for r in range(args.rounds):
            for mode, batch in blocks:
                order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
                for c in order:
                    time.sleep(args.pause)
                    times[c, batch, mode] += workers[c, batch].ask(op="run", mode=mode, reps=args.reps)["times"]
        elapsed = time.perf_counter() - t0
        jiffies1 = _cpu_jiffies(pids)
        print(f"measured {args.rounds} rounds x {args.reps} reps in {elapsed:.0f} s")
        if jiffies0 and jiffies1:
            others = (jiffies1[0] - jiffies0[0]) - (jiffies1[1] - jiffies0[1])
            share = others / (os.sysconf("SC_CLK_TCK") * elapsed * os.cpu_count())
            print(f"other processes used {max(share, 0):.0%} of the machine's CPU time meanwhile"
                  + ("  (a busy machine: expect noisy figures)" if share > 0.1 else ""))
        print()
        memory = {key: w.ask(op="memory") for key, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()

    flops = bench_model.flops_per_image()
    results = []
    header = (f"{'mode':<6}{'batch':>6}  {'contender':<{width}}{'ms/step':>9}{'images/s':>10}"
              f"{'vs torch':>9}{'GFLOP/s':>9}{'peak RSS':>10}{'step mem':>10}")
    print(header)
    print("-" * len(header))
    for mode in MODES:
        for batch in args.batch_sizes:
            ref = times.get(("torch", batch, mode))
            ref_ips = batch / _median(ref) if ref else None
            for c in contenders:
                t = _median(times[c, batch, mode])
                ips = batch / t
                gflops = flops * batch * (3 if mode == "train" else 1) / t / 1e9
                mem = memory[c, batch]
                ratio = ips / ref_ips if ref_ips else float("nan")
                results.append(dict(mode=mode, batch=batch, contender=c, ms=t * 1e3, images_per_s=ips,
                                    ratio_to_torch=ratio, gflops=gflops, **mem))
                print(f"{mode:<6}{batch:>6}  {c:<{width}}{t * 1e3:>9.1f}{ips:>10.0f}"
                      f"{ratio:>8.2f}x{gflops:>9.1f}{mem['peak_rss_mib']:>8.0f}MB"
                      f"{mem['peak_rss_mib'] - mem['setup_rss_mib']:>8.0f}MB")
    print("\nvs torch: throughput relative to PyTorch (higher is better). peak RSS: the worker's")
    print("peak resident memory (one worker per contender and batch size, training and inference);")
    print("step mem: the part of it that appeared after the model and data were set up.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
