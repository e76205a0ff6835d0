"""``minicnn quantize CKPT --mode ptq|qat ... --out DIR``: int8 (and FP16) versions of a checkpoint.

Prints float32 vs int8 test accuracy, the bytes on disk of float32 / FP16 /
int8 weights, and the inference time of one batch of 128 (float32 vs the
int8 integer path, alternating, median). Writes ``DIR/model.int8.safetensors``
(loadable by ``minicnn evaluate`` / ``predict`` / ``export``),
``DIR/model.fp16.safetensors``, ``DIR/model.fp32.safetensors`` (the weights
alone, for a fair size comparison) and ``DIR/quantize.json``.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..io import write_json


def add_parser(subparsers):
    q = subparsers.add_parser("quantize", help="int8 post-training or quantization-aware quantization of a checkpoint")
    q.add_argument("checkpoint")
    q.add_argument("--mode", choices=("ptq", "qat"), default="ptq")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default: per channel)")
    q.add_argument("--calibration", type=int, default=1000, metavar="N", help="PTQ: training images to calibrate on")
    q.add_argument("--observer", choices=("minmax", "moving", "percentile"), default="minmax",
                   help="PTQ: activation observer")
    q.add_argument("--requant", choices=("float", "fixed"), default="float",
                   help="requantization multiplier: float, or integer multiplier + shift")
    q.add_argument("--epochs", type=int, default=1, help="QAT: fine-tuning epochs")
    q.add_argument("--lr", type=float, default=1e-4, help="QAT: Adam learning rate")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--freeze-bn-epoch", type=int, default=1, help="QAT: freeze BN statistics from this epoch (0-based)")
    q.add_argument("--freeze-observer-epoch", type=int, default=2, help="QAT: freeze observers from this epoch")
    q.add_argument("--data-dir", default=None)
    q.add_argument("--no-download", action="store_true")
    q.add_argument("--limit-train", type=int, default=None, metavar="N")
    q.add_argument("--limit-test", type=int, default=None, metavar="N")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--repeats", type=int, default=5, help="timed batches of each model (median)")
    q.set_defaults(func=cmd_quantize)


def _accuracy(model, loader):
    from ..train.loop import predict
    logits, targets = predict(model, loader)
    return float((logits.argmax(axis=1) == targets).mean())


def _time_batch(fp32, int8, x, repeats=5):
    """Median seconds per batch of each, measured alternately (one warm-up each)."""
    import minicnn as mc
    t_f, t_q = [], []
    with mc.no_grad():
        fp32(x), int8(x)
        for _ in range(repeats):
            t0 = time.perf_counter(); fp32(x); t_f.append(time.perf_counter() - t0)      # noqa: E702
            t0 = time.perf_counter(); int8(x); t_q.append(time.perf_counter() - t0)      # noqa: E702
    return float(np.median(t_f)), float(np.median(t_q))


def cmd_quantize(args):
    import minicnn as mc
    from .. import quant
    from ..cli.commands import CLIError, load_checkpoint_file, model_from_checkpoint, build_loaders
    state = load_checkpoint_file(args.checkpoint)
    if "module" in state:
        raise CLIError(f"{args.checkpoint} is already a quantized file; give the float checkpoint")
    model, config = model_from_checkpoint(state)
    if args.calibration < 1:
        raise CLIError(f"--calibration must be >= 1, got {args.calibration}")
    mc.manual_seed(args.seed)
    train_loader, val_loader, test_loader, source, _ = build_loaders(
        config.get("dataset", "digits"), args.batch_size, data_dir=args.data_dir, download=not args.no_download,
        limit_train=args.limit_train, limit_test=args.limit_test, val_split=0.1, seed=args.seed)
    try:
        if args.mode == "ptq":
            prepared = quant.prepare(model, observer=args.observer, per_channel=not args.per_tensor)
            seen = quant.calibrate(prepared, train_loader, max_images=args.calibration)
            how = f"PTQ, {seen} calibration images, {args.observer} observer"
        else:
            from ..optim import Adam
            from ..train.loop import fit
            prepared = quant.prepare_qat(model, per_channel=not args.per_tensor)
            fit(prepared, Adam(prepared.parameters(), lr=args.lr), train_loader, args.epochs, val_loader=val_loader,
                progress=not args.no_progress, out_dir=None,
                callbacks=[quant.QATSchedule(args.freeze_bn_epoch, args.freeze_observer_epoch, log=print)])
            how = f"QAT, {args.epochs} epoch(s) at lr {args.lr:g}"
        qmodel = quant.convert(prepared, requant=args.requant)
    except quant.QuantError as e:
        raise CLIError(str(e)) from None
    how += f", {'per-tensor' if args.per_tensor else 'per-channel'} weights"

    os.makedirs(args.out, exist_ok=True)
    paths = {"int8": os.path.join(args.out, "model.int8.safetensors"),
             "fp16": os.path.join(args.out, "model.fp16.safetensors"),
             "fp32": os.path.join(args.out, "model.fp32.safetensors")}
    quant.save_quantized(paths["int8"], qmodel, config)
    quant.save_fp16(paths["fp16"], model, config)
    from safetensors.numpy import save_file
    from ..backend import to_host
    save_file({k: np.array(to_host(v.array), order="C", copy=True) for k, v in model.state_dict().items()},
              paths["fp32"])
    sizes = {k: os.path.getsize(p) for k, p in paths.items()}

    acc = {"fp32": _accuracy(model, test_loader), "int8": _accuracy(qmodel, test_loader),
           "fp16": _accuracy(quant.half_weights(model), test_loader)}
    x = mc.tensor(next(iter(test_loader))[0][:128])
    t_f, t_q = _time_batch(model, qmodel, x, max(1, args.repeats))
    print(f"data: {source} | {how} | backend {mc.get_backend()}")
    print(f"{'':8}{'test accuracy':>14}{'bytes on disk':>15}")
    for k in ("fp32", "fp16", "int8"):
        print(f"{k:8}{acc[k]:>14.4f}{sizes[k]:>15,}")
    print(f"int8 is {sizes['fp32'] / sizes['int8']:.2f}x smaller; accuracy change {100 * (acc['int8'] - acc['fp32']):+.2f} "
          f"points (fp16: {100 * (acc['fp16'] - acc['fp32']):+.2f})")
    print(f"inference, batch {len(x)}: fp32 {1e3 * t_f:.1f} ms, int8 {1e3 * t_q:.1f} ms "
          f"(int8/fp32 time ratio {t_q / t_f:.2f}; timing on a busy machine is unreliable)")
    report = {"mode": args.mode, "how": how, "accuracy": acc, "bytes": sizes, "batch": len(x),
              "seconds_per_batch": {"fp32": t_f, "int8": t_q}, "checkpoint": args.checkpoint, "backend": mc.get_backend()}
    write_json(os.path.join(args.out, "quantize.json"), report)
    print("wrote " + ", ".join(list(paths.values()) + [os.path.join(args.out, "quantize.json")]))
    return 0
