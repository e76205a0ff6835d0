"""Accuracy of pruned reference CNNs on full MNIST: one-shot, one-shot + fine-tune, gradual;
and 50 % of the conv filters removed (L1 norm) and shrunk.

    MINICNN_DATA_DIR=/work/shared/data python benchmarks/prune_mnist.py --checkpoint runs/ref/best.ckpt
    MINICNN_DATA_DIR=/work/shared/data python benchmarks/prune_mnist.py --train-epochs 3   # trains it first

Protocol: the checkpoint's own validation split (10 % of the training images,
stratified, same seed) is the only data anything is chosen on; fine-tuning uses
the remaining training images; every row's test accuracy (10,000 images) is
measured once, for the table. Gradual pruning (Zhu & Gupta 2017, ``--steps``
steps) gets the same fine-tuning budget as one-shot + fine-tune, spread over
its steps. Results are appended to the JSON file after every row.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import accuracy, loaders, write_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a trained reference CNN (minicnn train --model reference)")
    p.add_argument("--train-epochs", type=int, default=3, help="without --checkpoint: train one this long")
    p.add_argument("--data-dir", default=os.environ.get("MINICNN_DATA_DIR"))
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=5, help="gradual schedule steps")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam)")
    p.add_argument("--limit-finetune", type=int, default=None, metavar="N",
                   help="fine-tune on the first N training images only (a smaller budget)")
    p.add_argument("--skip", nargs="*", default=[], choices=["oneshot", "finetune", "gradual", "structured"])
    p.add_argument("--json", default="runs/benchmarks/prune_mnist.json")
    args = p.parse_args(argv)

    import minicnn as mc
    from minicnn import compress, models
    from minicnn.compress.prune_cli import finetune
    from minicnn.nn.utils import prune
    from minicnn.train import fit, load_checkpoint, save_checkpoint

    if not args.data_dir:
        sys.exit("set MINICNN_DATA_DIR (or --data-dir) to the folder holding mnist/")
    mc.manual_seed(0)
    train, val, test, source = loaders(args.data_dir)
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        base_state = state["model"]
    else:
        model = models.ReferenceCNN()
        fit(model, mc.optim.Adam(model.parameters(), lr=1e-3), train, args.train_epochs, val_loader=val,
            progress=False)
        base_state = {k: v.numpy() for k, v in model.state_dict().items()}
        save_checkpoint("runs/benchmarks/reference.ckpt", model, config={"model_name": "reference"})
    ft_loader = train
    if args.limit_finetune is not None:        # a subset of the training part (never the validation split)
        from minicnn.data import DataLoader
        ft_loader = DataLoader(tuple(a[:args.limit_finetune] for a in train.arrays), batch_size=64,
                               shuffle=True, transform=train.transform)

    def fresh():
        m = models.ReferenceCNN()
        m.load_state_dict(base_state)
        return m

    out = {"source": source, "args": vars(args), "rows": [],
           "finetune_images": len(ft_loader.arrays[0]), "fine_tune_batches_per_epoch": len(ft_loader)}
    dense = fresh()
    out["dense"] = {"val_acc": accuracy(dense, val), "test_acc": accuracy(dense, test),
                    "parameters": dense.num_parameters(), "macs": compress.macs(dense)}
    print(f"dense reference: val {out['dense']['val_acc']:.4f} test {out['dense']['test_acc']:.4f}", flush=True)
    write_json(args.json, out)

    def row(kind, s, m, t0):
        r = {"kind": kind, "sparsity": s, "val_acc": accuracy(m, val), "test_acc": accuracy(m, test),
             "global_sparsity": prune.sparsity(m).global_sparsity, "seconds": time.perf_counter() - t0}
        out["rows"].append(r)
        write_json(args.json, out)
        print(f"{kind:<22} {s:5.0%}  val {r['val_acc']:.4f}  test {r['test_acc']:.4f}  "
              f"(weights zero: {r['global_sparsity']:.3f}, {r['seconds']:.0f}s)", flush=True)
        return r

    for s in args.sparsities:
        if "oneshot" not in args.skip or "finetune" not in args.skip:
            t0 = time.perf_counter()
            m = compress.prune_to(fresh(), "global-l1", s)
            if "oneshot" not in args.skip:
                row("one-shot", s, m, t0)
            if "finetune" not in args.skip:
                finetune(m, ft_loader, args.finetune_epochs, args.lr, False, lambda *a: None)
                row(f"one-shot + {args.finetune_epochs:g} ep", s, m, t0)
        if "gradual" not in args.skip:
            t0 = time.perf_counter()
            m = fresh()
            compress.iterative_prune(m, "global-l1", s, args.steps, finetune=lambda mm: finetune(
                mm, ft_loader, args.finetune_epochs / args.steps, args.lr, False, lambda *a: None))
            row(f"gradual {args.steps} st", s, m, t0)

    if "structured" not in args.skip:
        t0 = time.perf_counter()
        m = compress.prune_to(fresh(), "ln-structured", 0.5)
        compress.make_permanent(m)
        small = compress.shrink(m)
        st = {"val_acc_before_finetune": accuracy(small, val)}
        finetune(small, ft_loader, args.finetune_epochs, args.lr, False, lambda *a: None)
        st.update({"val_acc": accuracy(small, val), "test_acc": accuracy(small, test),
                   "parameters": small.num_parameters(), "macs": compress.macs(small),
                   "architecture": compress.architecture(small), "seconds": time.perf_counter() - t0})
        out["structured_50"] = st
        write_json(args.json, out)
        print(f"50% filters (L1) shrunk: params {st['parameters']:,} (dense {out['dense']['parameters']:,}), "
              f"MACs {st['macs']:,} (dense {out['dense']['macs']:,}), val before fine-tune "
              f"{st['val_acc_before_finetune']:.4f}, after {st['val_acc']:.4f}, test {st['test_acc']:.4f}",
              flush=True)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
