"""``minicnn prune CKPT``: prune a trained model, optionally fine-tune and shrink it.

    minicnn prune runs/mnist/best.ckpt --method global-l1 --amount 0.9 --finetune-epochs 1 --out runs/p90
    minicnn prune runs/mnist/best.ckpt --method ln-structured --amount 0.5 --shrink --out runs/f50
    minicnn prune runs/mnist/best.ckpt --method global-l1 --amount 0.9 --schedule gradual --steps 5
    minicnn evaluate runs/p90/pruned.ckpt

Writes to ``--out``: ``pruned.ckpt`` (a normal checkpoint: the pruning made
permanent, zeros in place; after ``--shrink`` a smaller model whose layer
list is stored in the config so ``minicnn evaluate`` can rebuild it),
``pruned.sparse.safetensors`` (non-zeros + bitmask), ``sparsity.txt``, the
per-layer ``sensitivity.png`` and ``prune_report.json`` (accuracy before and
after, parameters, MACs, bytes on disk).

Validation images come from the training set with the same split (fraction
and seed) as the training run, so they were not trained on; fine-tuning uses
the rest. The test set is evaluated once before and once after.
"""
from __future__ import annotations

import os


def add_parser(subparsers):
    p = subparsers.add_parser("prune", help="prune a checkpoint (magnitude or filters), fine-tune, shrink")
    p.add_argument("checkpoint")
    p.add_argument("--method", default="global-l1", choices=("global-l1", "l1", "ln-structured"),
                   help="global-l1: one magnitude threshold over all conv+linear weights; l1: the same "
                        "fraction of each layer; ln-structured: whole conv filters by L1 norm")
    p.add_argument("--amount", type=float, default=0.9,
                   help="target sparsity: fraction of the weights (of the conv filters for "
                        "ln-structured) to remove (default 0.9)")
    p.add_argument("--schedule", default="oneshot", choices=("oneshot", "gradual"),
                   help="oneshot, or the gradual schedule of Zhu & Gupta (2017) in --steps steps")
    p.add_argument("--steps", type=int, default=5, help="steps of the gradual schedule (default 5)")
    p.add_argument("--finetune-epochs", type=float, default=0.0, metavar="E",
                   help="epochs of fine-tuning after pruning (gradual: spread over the steps; "
                        "fractions allowed, default 0)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam, default 1e-4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shrink", action="store_true",
                   help="remove the pruned filters for real (a smaller dense model)")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity analysis")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--limit-train", type=int, default=None, metavar="N")
    p.add_argument("--limit-test", type=int, default=None, metavar="N")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/pruned")
    p.set_defaults(func=cmd_prune)


def finetune(model, train_loader, epochs, lr, progress, log):
    """Adam on the pruned model (its masks keep the removed weights at zero); ``epochs`` may be fractional."""
    import math
    from .. import optim
    from ..train.loop import fit
    if epochs <= 0:
        return
    opt = optim.Adam(model.parameters(), lr=lr)
    whole = int(math.floor(epochs))
    if whole:
        fit(model, opt, train_loader, whole, progress=progress, log=log)
    rest = epochs - whole
    if rest > 1e-9:
        fit(model, opt, train_loader, 1, progress=progress, log=log,
            max_batches_per_epoch=max(1, round(rest * len(train_loader))))


def cmd_prune(args):
    import minicnn as mc
    from . import sparsity as compress
    from ..cli.commands import CLIError, load_checkpoint_file, model_from_checkpoint, build_loaders
    from ..io import write_json
    from . import prune
    from ..train.loop import evaluate, save_checkpoint

    if not 0.0 <= args.amount <= 1.0:
        raise CLIError(f"--amount must be a fraction in [0, 1], got {args.amount}")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.finetune_epochs < 0:
        raise CLIError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    state = load_checkpoint_file(args.checkpoint)
    model, config = model_from_checkpoint(state)
    if prune.is_pruned(model):
        raise CLIError("the checkpoint's model is already pruned")
    train_args = config.get("args", {})
    val_split = train_args.get("val_split", 0.1) or 0.1
    seed = train_args.get("seed", 0)
    mc.manual_seed(seed)
    train_loader, val_loader, test_loader, source, _ = build_loaders(
        config.get("dataset", "digits"), args.batch_size, data_dir=args.data_dir,
        download=not args.no_download, limit_train=args.limit_train or train_args.get("limit_train"),
        limit_test=args.limit_test, val_split=val_split, seed=seed)
    log = print
    os.makedirs(args.out, exist_ok=True)
    print(f"data: {source} — {len(train_loader.arrays[0])} fine-tuning / {len(val_loader.arrays[0])} "
          f"validation (the training run's split) / {len(test_loader.arrays[0])} test images")

    def val_acc(m):
        return evaluate(m, val_loader)["accuracy"]

    report = {"checkpoint": args.checkpoint, "method": args.method, "amount": args.amount,
              "schedule": args.schedule, "finetune_epochs": args.finetune_epochs,
              "before": {"val_acc": val_acc(model), "test_acc": evaluate(model, test_loader)["accuracy"],
                         "parameters": model.num_parameters(), "macs": compress.macs(model),
                         "dense_bytes": compress.dense_bytes(model)}}
    print(f"before: validation {report['before']['val_acc']:.4f}, test {report['before']['test_acc']:.4f}, "
          f"{report['before']['parameters']:,} parameters")
    written = []
    if not args.no_sensitivity:
        method = "ln-structured" if args.method == "ln-structured" else "l1"
        sens = compress.sensitivity_analysis(model, val_acc, method=method)
        report["sensitivity"] = sens
        written.append(compress.plot_sensitivity(sens, os.path.join(args.out, "sensitivity.png")))
        for name, accs in sens["layers"].items():
            print(f"sensitivity layer {name}: " + ", ".join(
                f"{s:.0%}->{a:.4f}" for s, a in zip(sens["sparsities"], accs)))

    progress = not args.no_progress
    if args.schedule == "oneshot":
        compress.prune_to(model, args.method, args.amount)
        report["after_prune_val_acc"] = val_acc(model)
        print(f"pruned to {args.amount:.0%} ({args.method}, one-shot): validation "
              f"{report['after_prune_val_acc']:.4f}")
        finetune(model, train_loader, args.finetune_epochs, args.lr, progress, log)
    else:
        per_step = args.finetune_epochs / args.steps
        report["gradual"] = compress.iterative_prune(
            model, args.method, args.amount, args.steps,
            finetune=lambda m: finetune(m, train_loader, per_step, args.lr, progress, log),
            evaluate=lambda m: {"val_acc": val_acc(m)}, log=log)

    report["sparsity"] = prune.sparsity(model).as_dict()
    table = str(prune.sparsity(model))
    compress.make_permanent(model)
    if args.shrink:
        try:
            model = compress.shrink(model)
        except compress.ShrinkError as e:
            raise CLIError(str(e)) from None
        config = dict(config, architecture=compress.architecture(model))
    model.eval()
    after = {"val_acc": val_acc(model), "test_acc": evaluate(model, test_loader)["accuracy"],
             "parameters": model.num_parameters(), "nonzero_parameters": sum(
                 int((p.numpy() != 0).sum()) for p in model.parameters()),
             "macs": compress.macs(model)}
    config = dict(config, pruning={k: report[k] for k in ("method", "amount", "schedule", "finetune_epochs")}
                  | {"shrunk": bool(args.shrink), "source": args.checkpoint})
    ckpt = save_checkpoint(os.path.join(args.out, "pruned.ckpt"), model, config=config,
                           epoch=state.get("epoch"))
    sparse_path = os.path.join(args.out, "pruned.sparse.safetensors")
    after["sparse_bytes"] = compress.save_sparse(model, sparse_path, metadata={"config": config})
    after["dense_bytes"] = compress.dense_bytes(model, metadata={"config": config})
    report["after"] = after
    with open(os.path.join(args.out, "sparsity.txt"), "w") as f:
        f.write(table + "\n")
    write_json(os.path.join(args.out, "prune_report.json"), report)
    print(table)
    print(f"after: validation {after['val_acc']:.4f}, test {after['test_acc']:.4f} "
          f"(before {report['before']['test_acc']:.4f}); parameters {after['parameters']:,} "
          f"({after['nonzero_parameters']:,} non-zero), MACs {after['macs']:,} "
          f"(before {report['before']['macs']:,}); on disk {after['sparse_bytes']:,} bytes sparse vs "
          f"{after['dense_bytes']:,} dense")
    written += [ckpt, sparse_path, os.path.join(args.out, "sparsity.txt"),
                os.path.join(args.out, "prune_report.json")]
    print("wrote " + ", ".join(written))
    return 0
