"""Inference speed at batch 128: minicnn float32 vs minicnn int8 (integer path, numba kernel)
vs onnxruntime float32 vs onnxruntime int8 (QDQ), for the reference CNN and reference-bn.

    MINICNN_BACKEND=numba python benchmarks/quant_speed.py --rounds 15 --out benchmarks/results/quant_speed.json

Contenders run alternately within each round (so a busy neighbour slows all of them alike);
the table gives the median time per batch and the median over rounds of each one's time
divided by minicnn float32's in the same round. Weights are random (speed does not depend on
them); the int8 model is calibrated on random images. Timing on a shared machine is
unreliable: re-run on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import minicnn as mc
from minicnn import models, quant


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--models", default="reference,reference-bn")
    p.add_argument("--out", default="benchmarks/results/quant_speed.json")
    args = p.parse_args(argv)
    try:
        import onnxruntime as ort
        from minicnn import onnx as mo
    except ImportError:
        ort = None
    rs = np.random.default_rng(0)
    x = rs.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            mc.manual_seed(0)
            model = models.get_model(name).eval()
            prepared = quant.prepare(model)
            quant.calibrate(prepared, [x])
            qmodel = quant.convert(prepared)
            X = mc.tensor(x)
            fast = mc.fuse(model)                  # the float model as fit runs it (ONNX gets `model`)
            contenders = {"minicnn fp32": lambda: fast(X), "minicnn int8": lambda: qmodel(X)}
            if ort is not None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = os.cpu_count() or 1
                # onnxruntime's threads spin after each run by default, waiting for the next
                # one; here the next call is another contender's, whose threads they would rob
                # of the cores (measured: minicnn fp32 at 35 ms instead of 13 ms per batch)
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                for label, m in (("onnxruntime fp32", model), ("onnxruntime int8 (QDQ)", qmodel)):
                    path = mo.export(m, (1, 1, 28, 28), os.path.join(d, f"{name}-{label[-4:]}.onnx"))
                    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                    contenders[label] = (lambda s=sess: s.run(None, {"input": x}))
            times = {k: [] for k in contenders}
            with mc.no_grad():
                for f in contenders.values():
                    f()                                            # warm-up (JIT, allocations)
                for _ in range(args.rounds):
                    for k, f in contenders.items():
                        t0 = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t0)
            base = np.array(times["minicnn fp32"])
            rows = {k: {"median_ms": 1e3 * float(np.median(v)),
                        "ratio_to_minicnn_fp32": float(np.median(np.array(v) / base))} for k, v in times.items()}
            results[name] = rows
            print(f"\n{name}, batch {args.batch}, {args.rounds} rounds, backend {mc.get_backend()}")
            print(f"{'contender':26}{'median ms':>11}{'time / minicnn fp32':>21}")
            for k, r in rows.items():
                print(f"{k:26}{r['median_ms']:>11.1f}{r['ratio_to_minicnn_fp32']:>21.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump({"backend": mc.get_backend(), "batch": args.batch, "rounds": args.rounds,
                   "cpu_count": os.cpu_count(), "results": results}, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
