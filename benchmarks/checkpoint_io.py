"""What the safe checkpoints and the NaN guard cost.

1. Writing and reading a checkpoint of the reference CNN with Adam state (the same state dict):
   minicnn's safetensors format vs the old pickle format (pickle only as a yardstick; minicnn
   never loads pickles).
2. One training step of the reference CNN (batch 64) under ``nan_policy="stop"`` (the default:
   one ``isfinite`` on a host scalar already read for the progress bar) vs ``"skip-batch"``
   (copies weights + optimizer state before every step).

Contenders alternate round after round in one process; the table gives the median time of each
and the median of the per-round ratios. Writes JSON with --json.

    python benchmarks/checkpoint_io.py                # ~30 s on a quiet 2-core machine
    python benchmarks/checkpoint_io.py --rounds 30 --json /tmp/checkpoint_io.json
"""
import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minicnn as mc  # noqa: E402
import minicnn.functional as F  # noqa: E402
from minicnn import models, optim, train  # noqa: E402
from minicnn.data import DataLoader  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    mc.manual_seed(0)
    model = models.ReferenceCNN()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rs = np.random.default_rng(0)
    x = rs.random((64, 28, 28)).astype(np.float32)
    y = rs.integers(0, 10, 64)
    loader = DataLoader((np.repeat(x, 4, axis=0), np.repeat(y, 4)), batch_size=64, shuffle=False)
    train.fit(model, opt, loader, epochs=1, progress=False, log=lambda *_: None)   # Adam state + JIT warm-up

    folder = tempfile.mkdtemp(prefix="minicnn-ckpt-bench-")
    st_path, pk_path = os.path.join(folder, "a.ckpt"), os.path.join(folder, "a.pkl")
    state = {"model": train._host_tree(model.state_dict()), "optimizer": opt.state_dict()}

    def st_save():
        train.save_checkpoint(st_path, model, opt, epoch=1)

    def pk_save():
        with open(pk_path, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())

    def st_load():
        train.load_checkpoint(st_path)

    def pk_load():
        with open(pk_path, "rb") as f:
            pickle.load(f)

    def steps(policy):
        def run():
            train.fit(model, opt, loader, epochs=1, progress=False, log=lambda *_: None, nan_policy=policy)
        return run

    pairs = {"save": (st_save, pk_save), "load": (st_load, pk_load),
             "train step": (steps("stop"), steps("skip-batch"))}
    labels = {"save": ("safetensors", "pickle"), "load": ("safetensors", "pickle"),
              "train step": ("nan_policy=stop", "nan_policy=skip-batch")}
    per_step = {"save": 1, "load": 1, "train step": len(loader)}
    for a, b in pairs.values():        # warm-up
        a(); b()
    results = {}
    for name, (a, b) in pairs.items():
        ta, tb, ratios = [], [], []
        for r in range(args.rounds):
            order = [(a, ta), (b, tb)] if r % 2 == 0 else [(b, tb), (a, ta)]
            for fn, sink in order:
                sink.append(_timed(fn) / per_step[name])
            ratios.append(tb[-1] / ta[-1])
        results[name] = {labels[name][0]: 1000 * statistics.median(ta), labels[name][1]: 1000 * statistics.median(tb),
                         "median ratio (2nd / 1st)": statistics.median(ratios)}
    size = os.path.getsize(st_path), os.path.getsize(pk_path)
    load1, load5, _ = os.getloadavg()
    print(f"reference CNN + Adam state; checkpoint {size[0]:,} bytes (safetensors) vs {size[1]:,} (pickle); "
          f"load average {load1:.1f}, {os.cpu_count()} cores; backend {mc.get_backend()}; {args.rounds} rounds")
    print(f"{'what':<12} {'first':<24} {'ms':>9} {'second':<24} {'ms':>9} {'ratio':>7}")
    for name, r in results.items():
        (la, va), (lb, vb), (_, ratio) = r.items()
        print(f"{name:<12} {la:<24} {va:9.2f} {lb:<24} {vb:9.2f} {ratio:7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "bytes": {"safetensors": size[0], "pickle": size[1]},
                       "loadavg": [load1, load5], "backend": mc.get_backend(), "rounds": args.rounds}, f, indent=1)


if __name__ == "__main__":
    main()
