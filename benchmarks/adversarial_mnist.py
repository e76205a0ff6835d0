"""Robustness of the reference CNN on full MNIST: undefended vs PGD adversarial training.

    # 1. train both models (writes OUT/undefended/last.ckpt and OUT/pgd/last.ckpt)
    MINICNN_DATA_DIR=/work/shared/data nice -n 10 python benchmarks/adversarial_mnist.py train --out runs/adv
    # 2. the table (FGSM, PGD-40 x1 and x10 restarts at eps 0.05/0.1/0.2/0.3) -> OUT/robustness.json
    MINICNN_DATA_DIR=/work/shared/data nice -n 10 python benchmarks/adversarial_mnist.py eval --out runs/adv

Training, as `minicnn train` does it: Adam lr 1e-3, batch 64 (128 for the adversarial
phase), 10 % stratified validation split, normalisation in the data pipeline.
The undefended model trains ``--clean-epochs`` epochs. The defended model starts
from the undefended weights and is fine-tuned ``--adv-epochs`` epochs with Madry's
PGD (eps 0.1 in pixel units, 7 steps of 2.5*eps/7, random start) through
``attacks.AdversarialTraining`` — the same step `minicnn train --adversarial pgd` uses.

Evaluation: every attack on the model wrapped as Normalize -> model, in pixel units [0, 1].
Clean accuracy on all 10,000 test images; FGSM and PGD-40 (1 restart) on the first
``--n-attack`` test images; PGD-40 with 10 restarts on the first ``--n-restarts``
(restart r runs only on the images that restarts 1..r-1 did not fool: for
accuracy this is exactly the worst case over 10 restarts, and much cheaper).
alpha = 2.5 * eps / 40. Seeds fixed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicnn as mc  # noqa: E402
from minicnn import attacks, models, optim, train  # noqa: E402
from minicnn.cli import NORMALIZATION, build_loaders  # noqa: E402
from minicnn.backend import to_host  # noqa: E402
from minicnn.data import DataLoader  # noqa: E402

EPS = (0.05, 0.1, 0.2, 0.3)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def _config(args, kind):
    return {"model_name": "reference", "num_classes": 10, "dataset": "mnist", "classes": [str(i) for i in range(10)],
            "normalization": NORMALIZATION["mnist"], "args": {"benchmark": "adversarial_mnist", "kind": kind,
                                                              **{k: v for k, v in vars(args).items() if k != "func"}}}


def cmd_train(args):
    mc.manual_seed(args.seed)
    norm = NORMALIZATION["mnist"]
    out_u, out_a = os.path.join(args.out, "undefended"), os.path.join(args.out, "pgd")
    timings = {}
    if not os.path.isfile(os.path.join(out_u, "last.ckpt")):
        tl, vl, _, src, _ = build_loaders("mnist", 64, data_dir=args.data_dir, download=False, val_split=0.1,
                                          seed=args.seed)
        model = models.get_model("reference")
        opt = optim.Adam(model.parameters(), lr=1e-3)
        log(f"undefended: {args.clean_epochs} epochs on {len(tl.arrays[0])} images ({src})")
        t0 = time.perf_counter()
        train.fit(model, opt, tl, args.clean_epochs, val_loader=vl, out_dir=out_u, progress=False, log=log,
                  checkpoint_extra={"config": _config(args, "undefended")})
        timings["undefended_s"] = time.perf_counter() - t0
        timings["clean_epochs"] = args.clean_epochs
        log(f"undefended trained in {timings['undefended_s']:.0f}s")
    state = train.load_checkpoint(os.path.join(out_u, "last.ckpt"))
    model = models.get_model("reference")
    model.load_state_dict(state["model"])
    mc.manual_seed(args.seed + 1)
    tl, vl, _, _, _ = build_loaders("mnist", 128, data_dir=args.data_dir, download=False, val_split=0.1,
                                    seed=args.seed)
    opt = optim.Adam(model.parameters(), lr=args.adv_lr)
    step = attacks.AdversarialTraining(args.eps, attack="pgd", steps=args.pgd_steps, normalization=norm)
    log(f"adversarial fine-tuning: {args.adv_epochs} epochs, {step}")
    t0 = time.perf_counter()
    train.fit(model, opt, tl, args.adv_epochs, val_loader=vl, out_dir=out_a, progress=False, log=log,
              train_step=step, checkpoint_extra={"config": _config(args, "pgd")},
              max_batches_per_epoch=args.max_batches)
    timings["pgd_s"] = time.perf_counter() - t0
    log(f"adversarial training took {timings['pgd_s']:.0f}s")
    with open(os.path.join(args.out, "train_times.json"), "a") as f:
        f.write(json.dumps({**timings, "adv_epochs": args.adv_epochs, "max_batches": args.max_batches,
                            "pgd_steps": args.pgd_steps, "backend": mc.get_backend()}) + "\n")


def _pixel_loader(images, labels, batch_size=250):
    return DataLoader((images, labels), batch_size=batch_size, shuffle=False)


def _accuracy(model, x, y):
    with mc.no_grad():
        return float((model(x).array.argmax(axis=1) == y.array).mean())


def _restart_accuracy(net, images, labels, eps, restarts, steps, seed):
    """Accuracy after each of `restarts` PGD runs (a list: worst case over the first r + 1 restarts),
    attacking only the images that the previous restarts did not fool."""
    alive = np.arange(len(labels))
    curve = []
    for r in range(restarts):
        if len(alive) == 0:
            break
        keep = []
        for s in range(0, len(alive), 250):
            idx = alive[s:s + 250]
            x = mc.tensor(images[idx])
            y = mc.tensor(labels[idx])
            adv = attacks.pgd(net, x, y, eps, steps=steps, restarts=1, seed=seed + 1000 * r + s)
            with mc.no_grad():
                ok = to_host(net(adv).array.argmax(axis=1)) == labels[idx]
            keep.append(idx[ok])
        alive = np.concatenate(keep)
        curve.append(len(alive) / len(labels))
    return curve + [curve[-1]] * (restarts - len(curve))


def cmd_eval(args):
    from minicnn.data import get_dataset
    test = get_dataset("mnist", train=False, root=args.data_dir, download=False)
    images, labels = test.arrays()
    images = images.astype(np.float32)[:, None] / 255.0
    labels = labels.astype(np.int64)
    results = {}
    for kind in ("undefended", "pgd"):
        path = os.path.join(args.out, kind, "last.ckpt")
        if not os.path.isfile(path):
            log(f"skip {kind}: {path} missing")
            continue
        state = train.load_checkpoint(path)
        model = models.get_model("reference")
        model.load_state_dict(state["model"])
        net = models.with_normalize(model, *state["config"]["normalization"]).eval()
        row = {"clean_full": np.mean([_accuracy(net, mc.tensor(images[s:s + 500]), mc.tensor(labels[s:s + 500]))
                                      for s in range(0, len(labels), 500)])}
        n, nr = args.n_attack, args.n_restarts
        loader = _pixel_loader(images[:n], labels[:n])
        t0 = time.perf_counter()
        mc.manual_seed(args.seed)
        pg = attacks.robust_accuracy(net, loader, "pgd", EPS, steps=40)       # + FGSM and noise (sanity check)
        row.update(clean_subset=pg.clean, n_attack=n, fgsm=pg.fgsm, pgd40=pg.accuracy,
                   noise=pg.noise, warnings=pg.warnings, time_pgd40_s=time.perf_counter() - t0)
        log(f"{kind}: FGSM {pg.fgsm} PGD-40 {pg.accuracy} ({time.perf_counter() - t0:.0f}s)")
        t0 = time.perf_counter()
        curves = [_restart_accuracy(net, images[:nr], labels[:nr], e, 10, 40, args.seed) for e in EPS]
        row["pgd40_10restarts"] = [c[-1] for c in curves]
        row["pgd40_1restart_on_restart_subset"] = [c[0] for c in curves]
        row["restart_curves"] = curves
        row["n_restarts"] = nr
        row["time_restarts_s"] = time.perf_counter() - t0
        log(f"{kind}: PGD-40 x10 on {nr}: {row['pgd40_10restarts']} ({time.perf_counter() - t0:.0f}s)")
        results[kind] = row
        with open(os.path.join(args.out, "robustness.json"), "w") as f:
            json.dump({"eps": EPS, "results": results}, f, indent=1)
    print(f"\n{'model':<12}{'attack':<28}" + "".join(f"eps {e:<6}" for e in EPS))
    for kind, row in results.items():
        print(f"{kind:<12}{'clean (10,000 test)':<28}{row['clean_full']:.4f}")
        for key, label in (("fgsm", f"FGSM (first {row['n_attack']})"),
                           ("pgd40", f"PGD-40 x1 (first {row['n_attack']})"),
                           ("pgd40_1restart_on_restart_subset", f"PGD-40 x1 (first {row['n_restarts']})"),
                           ("pgd40_10restarts", f"PGD-40 x10 (first {row['n_restarts']})")):
            print(f"{'':<12}{label:<28}" + "".join(f"{a:<10.4f}" for a in row[key]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--clean-epochs", type=int, default=2)
    t.add_argument("--adv-epochs", type=int, default=2)
    t.add_argument("--adv-lr", type=float, default=1e-3)
    t.add_argument("--eps", type=float, default=0.1)
    t.add_argument("--pgd-steps", type=int, default=7)
    t.add_argument("--max-batches", type=int, default=None)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval")
    e.add_argument("--n-attack", type=int, default=1000)
    e.add_argument("--n-restarts", type=int, default=200)
    e.set_defaults(func=cmd_eval)
    for s in (t, e):
        s.add_argument("--out", default="runs/adv")
        s.add_argument("--data-dir", default=os.environ.get("MINICNN_DATA_DIR"))
        s.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
