"""Data-parallel training of the reference CNN on MPI: where a step's time goes.

    python benchmarks/bench_distributed.py                   # ~2 minutes on 2 quiet cores
    python benchmarks/bench_distributed.py --rounds 2 --steps 10   # quicker, noisier

At a global batch of 128 it compares, in alternating rounds (one worker job
per configuration per round, the order rotating; the machine's noise then hits
both alike):

* **1 rank x 2 threads** — one process, batch 128, Numba with 2 threads;
* **2 ranks x 1 thread** — ``mpiexec -n 2``, batch 64 per rank, 1 thread each.

For each it splits a step into compute (forward + loss + backward), gradient
all-reduce (``ddp.sync_gradients``) and the optimizer step, per rank 0's
clock. In the 2-rank job, steps alternate between the bucketed all-reduce
(all 225k gradients in one 0.9 MB buffer, one ``Allreduce``) and one
``Allreduce`` per parameter (8 calls), and the job times bare ``Allreduce``
calls on a 225k float32 buffer to give the bandwidth MPI reaches. Reported:
medians over all steps of all rounds, and the median of the per-round ratios.

What a 2-core machine can show, and what it cannot: the two ranks share the
same two cores and the same memory bus that one process with two threads
uses, and their "network" is shared memory inside one machine, so this
measures the *overheads* of data parallelism (communication latency and
bandwidth, the cost of smaller per-rank batches, load imbalance) — not
scaling. Speed-up from more ranks needs more cores or more machines; on a
cluster the all-reduce goes over the interconnect (and on GPUs through
NCCL), with very different bandwidth, and a production DDP overlaps it with
backward (bucket by bucket as gradients become ready), which minicnn does
not do.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GLOBAL_BATCH = 128


# -----------------------------------------------------------------------------
# Worker: runs under mpiexec (or alone); rank 0 prints one JSON line
# -----------------------------------------------------------------------------
def worker(steps, warmup, bandwidth_reps):
    import numpy as np

    sys.path.insert(0, HERE)
    import minicnn as mc
    from minicnn import distributed as dist
    from minicnn import functional as F
    from minicnn import optim
    from bench_model import minicnn_model

    rank, world = dist.init()
    mc.manual_seed(0)
    model = minicnn_model()
    bucketed = dist.DistributedDataParallel(model)                      # one 0.9 MB bucket
    per_param = dist.DistributedDataParallel(model, bucket_cap_mb=0)   # one Allreduce per tensor
    opt = optim.SGD(model.parameters(), lr=0.01)
    b = GLOBAL_BATCH // world
    rs = np.random.default_rng(rank)
    x = mc.tensor(rs.random((b, 1, 28, 28), dtype=np.float32))
    y = mc.tensor(rs.integers(0, 10, b))
    rows = {"bucketed": [], "per_parameter": []}
    for i in range(warmup + 2 * steps):
        ddp = bucketed if i % 2 == 0 else per_param
        dist.barrier()                     # start together: the all-reduce then measures imbalance only
        t0 = time.perf_counter()
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        t1 = time.perf_counter()
        ddp.sync_gradients()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            rows["bucketed" if ddp is bucketed else "per_parameter"].append((t1 - t0, t2 - t1, t3 - t2))
    n = sum(p.array.size for p in model.parameters())
    bw = []
    if world > 1:
        buf = np.ones(n, dtype=np.float32)
        for i in range(bandwidth_reps + 5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce_(buf)
            if i >= 5:
                bw.append(time.perf_counter() - t0)
    if rank == 0:
        print("RESULT " + json.dumps({"world": world, "params": n, "steps": rows, "allreduce_s": bw,
                                      "threads": os.environ.get("NUMBA_NUM_THREADS"),
                                      "backend": mc.get_backend()}), flush=True)


# -----------------------------------------------------------------------------
# Driver
# -----------------------------------------------------------------------------
def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def run_job(ranks, threads, steps, warmup, bw_reps):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(steps),
           "--warmup", str(warmup), "--bandwidth-reps", str(bw_reps)]
    if ranks > 1:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{r.stdout}\n{r.stderr}")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="measured steps per mode per job")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--bandwidth-reps", type=int, default=50)
    p.add_argument("--out", default=os.path.join(HERE, "results", "distributed.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.steps, a.warmup, a.bandwidth_reps)

    configs = [("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1)]
    load0 = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    results = {name: [] for name, _, _ in configs}
    for rnd in range(a.rounds):
        order = configs if rnd % 2 == 0 else configs[::-1]
        for name, ranks, threads in order:
            results[name].append(run_job(ranks, threads, a.steps, a.warmup, a.bandwidth_reps))
            print(f"round {rnd + 1}/{a.rounds}: {name} done", file=sys.stderr, flush=True)
    load1 = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None

    def phase(jobs, mode, k):
        return [row[k] for job in jobs for row in job["steps"][mode]]

    table, summary = [], {}
    for name, _, _ in configs:
        jobs = results[name]
        modes = ["bucketed", "per_parameter"] if jobs[0]["world"] > 1 else ["bucketed"]
        for mode in modes:
            c, s, o = (med(phase(jobs, mode, k)) for k in range(3))
            label = name if jobs[0]["world"] == 1 else f"{name}, {mode.replace('_', '-')}"
            summary[label] = {"compute_ms": c * 1e3, "allreduce_ms": s * 1e3, "step_ms": o * 1e3,
                              "total_ms": (c + s + o) * 1e3, "images_per_s": GLOBAL_BATCH / (c + s + o)}
            table.append((label, c, s, o))
    one, two = results["1 rank x 2 threads"], results["2 ranks x 1 thread"]

    def per_round_ratio(f):
        return med([f(j2) / f(j1) for j1, j2 in zip(one, two)])

    def total(job, mode="bucketed"):
        return med([sum(r) for r in job["steps"][mode]])

    ratio_2v1 = per_round_ratio(lambda j: total(j))
    ratio_pp = med([med([r[1] for r in j["steps"]["per_parameter"]]) / med([r[1] for r in j["steps"]["bucketed"]])
                    for j in two])
    bw_s = med([t for j in two for t in j["allreduce_s"]])
    nbytes = two[0]["params"] * 4
    print(f"\nreference CNN ({two[0]['params']:,} parameters), global batch {GLOBAL_BATCH}, "
          f"backend {two[0]['backend']}, {a.rounds} rounds x {a.steps} steps; load average "
          f"{load0} -> {load1}\n")
    print("| configuration | compute (fwd+bwd) ms | all-reduce ms | optimizer ms | step ms | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, c, s, o in table:
        print(f"| {label} | {c * 1e3:.1f} | {s * 1e3:.2f} | {o * 1e3:.2f} | {(c + s + o) * 1e3:.1f} "
              f"| {GLOBAL_BATCH / (c + s + o):.0f} |")
    print(f"\nstep time, 2 ranks x 1 thread / 1 rank x 2 threads (median of per-round ratios): "
          f"{ratio_2v1:.2f}x")
    print(f"all-reduce time, per-parameter (8 calls) / bucketed (1 call), median of per-job ratios: "
          f"{ratio_pp:.2f}x")
    print(f"bare Allreduce of {two[0]['params']:,} float32 ({nbytes / 1e6:.2f} MB), 2 ranks: median "
          f"{bw_s * 1e3:.3f} ms = {nbytes / bw_s / 1e9:.2f} GB/s algorithmic bandwidth "
          f"(bytes / time; a ring all-reduce moves 2(n-1)/n = 1x that per rank)")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "loadavg_before": load0, "loadavg_after": load1},
           "global_batch": GLOBAL_BATCH, "summary": summary, "ratio_2ranks_over_1rank_step": ratio_2v1,
           "ratio_per_parameter_over_bucketed_allreduce": ratio_pp,
           "allreduce_225k_float32_ms": bw_s * 1e3, "allreduce_GB_per_s": nbytes / bw_s / 1e9,
           "raw": results}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
