"""Count, on real test images, where the integer path and the fake-quant simulation disagree
(every int8 layer's output codes), and where fixed-point and float requantization disagree.

    MINICNN_BACKEND=numba python benchmarks/quant_bitexact.py --ckpt runs/ref/last.ckpt --data-dir DATA --images 1000
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import minicnn as mc
from minicnn import quant
from minicnn.cli.commands import build_loaders, load_checkpoint_file, model_from_checkpoint
from minicnn.quant.quantized import QuantizedModel


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--per-tensor", action="store_true")
    args = p.parse_args(argv)
    model, config = model_from_checkpoint(load_checkpoint_file(args.ckpt))
    mc.manual_seed(0)
    train_loader, _, test_loader, _, _ = build_loaders(config["dataset"], 64, data_dir=args.data_dir, download=False,
                                                        val_split=0.1, seed=0, limit_test=args.images)
    prepared = quant.prepare(model, per_channel=not args.per_tensor)
    quant.calibrate(prepared, train_loader, max_images=1000)
    q = quant.convert(prepared)
    out = {"model": config["model_name"], "images": 0, "layers": {}}
    for x, _ in test_loader:
        out["images"] += len(x)
        for k, step in enumerate(q.steps):
            if not isinstance(step, quant.QuantizedLayer):
                continue
            sub = QuantizedModel(q.steps[:k + 1])
            a, b, c = sub.codes(x), sub.codes(x, mode="simulate"), sub.codes(x, requant="fixed")
            r = out["layers"].setdefault(step.name, {"codes": 0, "integer_vs_simulate": 0, "fixed_vs_float": 0})
            r["codes"] += a.size
            r["integer_vs_simulate"] += int((a != b).sum())
            r["fixed_vs_float"] += int((a != c).sum())
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
