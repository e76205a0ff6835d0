"""Accuracy of int8 quantization on full MNIST: float32 vs FP16 vs PTQ (per-tensor / per-channel
weights x MinMax / percentile activation observers x 100 / 1,000 calibration images) vs QAT,
and the bytes on disk of each format.

    MINICNN_BACKEND=numba python benchmarks/quant_mnist.py --data-dir /work/shared/data \
        --ckpt runs/ref/last.ckpt --ckpt runs/refbn/last.ckpt --out benchmarks/results/quant_mnist.json

The checkpoints come from ``minicnn train --dataset mnist --model reference[-bn] --epochs 1``.
Calibration images come from the training split (never the test set; nothing is selected on
the test set: every configuration is evaluated once on the 10,000 test images, with the
integer path). QAT fine-tunes for one epoch with Adam (lr 1e-4) over ``--qat-train-images``
training images (all 54,001 by default).
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
from minicnn import quant
from minicnn.cli.commands import build_loaders, load_checkpoint_file, model_from_checkpoint
from minicnn.train import fit, predict


def accuracy(model, loader):
    logits, targets = predict(model, loader)
    return float((logits.argmax(axis=1) == targets).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", action="append", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--qat-train-images", type=int, default=None)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--calibrations", default="100,1000")
    p.add_argument("--quick", action="store_true",
                   help="only per-channel and per-tensor MinMax PTQ at the largest calibration (no QAT)")
    p.add_argument("--limit-train", type=int, default=None, help="smoke runs only")
    p.add_argument("--limit-test", type=int, default=None, help="smoke runs only")
    p.add_argument("--out", default="benchmarks/results/quant_mnist.json")
    args = p.parse_args(argv)
    results = []
    for ckpt in args.ckpt:
        model, config = model_from_checkpoint(load_checkpoint_file(ckpt))
        name = config["model_name"]
        mc.manual_seed(0)
        train_loader, val_loader, test_loader, source, _ = build_loaders(
            "mnist", 64, data_dir=args.data_dir, download=False, val_split=0.1, seed=0,
            limit_train=args.limit_train, limit_test=args.limit_test)
        row = {"model": name, "checkpoint": ckpt, "data": source}
        t0 = time.perf_counter()
        row["fp32"] = accuracy(model, test_loader)
        row["fp16"] = accuracy(quant.half_weights(model), test_loader)
        print(f"{name}: fp32 {row['fp32']:.4f} fp16 {row['fp16']:.4f}", flush=True)

        def save_partial():
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out + ".tmp", "w") as f:
                json.dump({"backend": mc.get_backend(), "results": results + [row], "partial": True}, f, indent=1)
            os.replace(args.out + ".tmp", args.out)

        def ptq(per_channel, observer, n):
            mc.manual_seed(0)
            prepared = quant.prepare(model, observer=observer, per_channel=per_channel)
            quant.calibrate(prepared, train_loader, max_images=n)
            qmodel = quant.convert(prepared)
            key = f"ptq/{'per-channel' if per_channel else 'per-tensor'}/{observer}/{n}"
            row[key] = accuracy(qmodel, test_loader)
            print(f"  {key}: {row[key]:.4f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
            save_partial()
            return qmodel

        def qat():
            mc.manual_seed(0)
            prepared = quant.prepare_qat(model)
            batches = None if args.qat_train_images is None else max(1, args.qat_train_images // 64)
            fit(prepared, mc.optim.Adam(prepared.parameters(), lr=args.qat_lr), train_loader, 1, progress=False,
                log=lambda *a: None, max_batches_per_epoch=batches, callbacks=[quant.QATSchedule(1, 2)])
            row["qat/per-channel/1-epoch"] = accuracy(quant.convert(prepared), test_loader)
            row["qat_train_images"] = min(args.qat_train_images or 10 ** 9, len(train_loader.arrays[0]))
            print(f"  QAT 1 epoch ({row['qat_train_images']} images): {row['qat/per-channel/1-epoch']:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            save_partial()

        # most informative first (a run cut short still answers the main questions)
        calibrations = [int(v) for v in args.calibrations.split(",")]
        qmodel = ptq(True, "minmax", calibrations[-1])
        with tempfile.TemporaryDirectory() as d:
            from safetensors.numpy import save_file
            from minicnn.backend import to_host
            save_file({k: np.array(to_host(v.array), order="C") for k, v in model.state_dict().items()},
                      os.path.join(d, "fp32"))
            quant.save_fp16(os.path.join(d, "fp16"), model, config)
            quant.save_quantized(os.path.join(d, "int8"), qmodel, config)
            row["bytes"] = {k: os.path.getsize(os.path.join(d, k)) for k in ("fp32", "fp16", "int8")}
        ptq(False, "minmax", calibrations[-1])
        if args.quick:
            results.append(row)
            continue
        ptq(True, "percentile", calibrations[-1])
        ptq(False, "percentile", calibrations[-1])
        qat()
        for n in calibrations[:-1]:
            for per_channel in (True, False):
                for observer in ("minmax", "percentile"):
                    ptq(per_channel, observer, n)
        results.append(row)
    keys = sorted({k for r in results for k in r if k.startswith(("fp", "ptq", "qat/"))})
    print("\n| configuration | " + " | ".join(r["model"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{100 * r[k]:.2f}" if k in r else "-" for r in results) + " |")
    for r in results:
        b = r["bytes"]
        print(f"{r['model']}: bytes fp32 {b['fp32']:,}  fp16 {b['fp16']:,}  int8 {b['int8']:,} "
              f"({b['fp32'] / b['int8']:.2f}x smaller)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump({"backend": mc.get_backend(), "results": results}, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
