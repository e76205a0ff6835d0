"""Inference speed of pruned reference CNNs: dense vs unstructured-sparse vs filter-pruned + shrunk.

    python benchmarks/prune_speed.py                    # numba backend, batch 256, ~1 min quiet
    python benchmarks/prune_speed.py --backend numpy --batch 128 --rounds 15

Contenders (same input, eval mode, no_grad), measured alternately round after
round (order rotating) so machine noise hits all alike:

* dense       — the reference CNN
* masked-90   — 90 % of the weights zeroed by global magnitude pruning (the
                zeros are still multiplied: a dense kernel does not skip them)
* shrunk-50   — 50 % of each conv layer's filters removed (L1 norm, Li et al.
                2017) and the model physically shrunk (compress.shrink)

Speed does not depend on the weights' values, so the weights are random (the
pruned masks are what a trained model would get structurally). The speed-up
of a contender is the median over rounds of (dense time / its time) in that
round. Writes a JSON file. Params and MACs: compress.macs (= mc.summary(model).total_macs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def build(name):
    from minicnn import compress, models
    model = models.ReferenceCNN()
    if name == "masked-90":
        compress.prune_to(model, "global-l1", 0.9)
    elif name == "shrunk-50":
        compress.prune_to(model, "ln-structured", 0.5)
        compress.make_permanent(model)
        model = compress.shrink(model)
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="numba")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--reps", type=int, default=3, help="forward passes per contender per round")
    p.add_argument("--json", default="runs/benchmarks/prune_speed.json")
    args = p.parse_args(argv)
    import minicnn as mc
    from minicnn import compress
    from minicnn.nn.utils import prune
    mc.set_backend(args.backend)
    mc.manual_seed(0)
    names = ["dense", "masked-90", "shrunk-50"]
    models_ = {n: build(n) for n in names}
    # timed as fit runs them, through mc.fuse (the masked model's pruning hooks keep its
    # blocks unfused); the counts below look at the models as built
    fast = {n: mc.fuse(m) for n, m in models_.items()}
    x = mc.tensor(np.random.default_rng(0).standard_normal((args.batch, 1, 28, 28)).astype(np.float32))
    with mc.no_grad():
        for n in names:                                   # warm-up: JIT, caches, allocator
            for _ in range(2):
                fast[n](x)
    times = {n: [] for n in names}
    t_cpu0, t_wall0 = os.times(), time.perf_counter()
    with mc.no_grad():
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    fast[n](x)
                times[n].append((time.perf_counter() - t0) / args.reps)
    wall = time.perf_counter() - t_wall0
    rows = []
    for n in names:
        ratios = [d / t for d, t in zip(times["dense"], times[n])]
        m = models_[n]
        rows.append({"contender": n, "median_ms": 1e3 * statistics.median(times[n]),
                     "images_per_s": args.batch / statistics.median(times[n]),
                     "speedup_vs_dense": statistics.median(ratios),
                     "parameters": m.num_parameters(),
                     "nonzero_parameters": int(sum((q.numpy() != 0).sum() for q in m.parameters())),
                     "effective_nonzero": int(sum((a != 0).sum() for _, a in prune.effective_parameters(m))),
                     "macs": compress.macs(m)})
    print(f"backend {args.backend}, batch {args.batch}, {args.rounds} rounds x {args.reps} reps, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}, cores {os.cpu_count()}")
    print(f"{'contender':<10} {'ms/batch':>9} {'images/s':>9} {'speed-up':>9} {'params':>9} "
          f"{'non-zero':>9} {'MACs':>11}")
    for r in rows:
        print(f"{r['contender']:<10} {r['median_ms']:9.2f} {r['images_per_s']:9.0f} "
              f"{r['speedup_vs_dense']:8.2f}x {r['parameters']:9,} {r['effective_nonzero']:9,} {r['macs']:11,}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average during the run: {load:.1f} (timings are only trustworthy on a quiet machine)")
    out = {"backend": args.backend, "batch": args.batch, "rounds": args.rounds, "reps": args.reps,
           "rows": rows, "load_average": load, "wall_s": wall, "python": sys.version.split()[0],
           "platform": platform.platform()}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
