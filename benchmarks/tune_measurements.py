"""Accuracy measurements of minicnn.tune (issue 16): lr_find suggestions, random vs TPE search.

    # what the README reports (LeNet-5 trials, 600 digits; ~1.5 h on 2 cores shared with 6 other jobs):
    python benchmarks/tune_measurements.py --out runs/tune_measurements --search-model lenet5 --lr-find-limit-train 600
    # the same with reference-CNN trials (adds dropout and kernel_size to the space) and lr-find on all digits:
    python benchmarks/tune_measurements.py --out runs/tune_reference
    python benchmarks/tune_measurements.py --only search --study-seeds 3 4   # more seeds into the same results.json

Part 1 (lr-find): the learning-rate range test (default settings: 100 steps
from 1e-7 to 10, batch 64) on the reference CNN with Adam and with plain SGD,
then a 3-epoch run at the suggested (valley) lr and at the default lr (1e-3);
best validation accuracy of each. On the embedded digits (3,600 training
images after the validation split), or on the first --lr-find-limit-train.

Part 2 (search): for each study seed in --study-seeds, a random-search study
and a TPE study of --trials trials x --epochs epochs on a fixed subset of the
digits (--limit-train images (600), --val-split (0.2) of them for validation), median
pruning, the same search space; the best validation accuracy of each study,
mean +- std over the seeds, against the default configuration on the same data.
The training seed (hence the validation split and initialisation) is 0 in every
trial; only the sampler's seed changes. No test image is used for selection.

Every number goes to OUT/results.json, updated after each step (a partial run
keeps what it finished); the tables are printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SPACE = ["lr=1e-4:1e-1:log", "batch_size=32,64,128", "optimizer=sgd,momentum,adam",
         "weight_decay=0:1e-3", "augment=on,off"]
SHAPE = ["dropout=0.2:0.6", "kernel_size=3,5"]          # only the reference CNN has these options


def minicnn(*argv):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minicnn.cli", *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def save(path, results):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def best_val(folder):
    with open(os.path.join(folder, "history.json")) as f:
        return max(a for a in json.load(f)["history"]["val_acc"] if a is not None)


def part_lr_find(args, results, path):
    out = os.path.join(args.out, "lr_find")
    data = [] if args.lr_find_limit_train is None else ["--limit-train", str(args.lr_find_limit_train),
                                                         "--val-split", str(args.val_split)]
    for opt in ("adam", "sgd"):
        folder = os.path.join(out, opt)
        if not os.path.isfile(os.path.join(folder, "lr_find.json")):      # a restarted run keeps what it has
            minicnn("lr-find", "--optimizer", opt, "--out", folder, "--no-progress", *data)
        with open(os.path.join(folder, "lr_find.json")) as f:
            found = json.load(f)
        row = {"optimizer": opt, "suggestions": found["suggestions"], "suggestion": found["suggestion"]}
        for label, lr in (("default", 1e-3), ("suggested", found["suggestion"])):
            run = os.path.join(folder, f"train_{label}")
            secs = None
            if not os.path.isfile(os.path.join(run, "history.json")):
                secs = minicnn("train", "--optimizer", opt, "--lr", repr(lr), "--epochs", "3", "--out", run,
                               "--no-progress", *data)
            row[label] = {"lr": lr, "best_val_acc": best_val(run), "seconds": secs}
        results["lr_find"].append(row)
        save(path, results)
        print(row, flush=True)


def part_search(args, results, path):
    fixed = ["--limit-train", str(args.limit_train), "--val-split", str(args.val_split),
             "--epochs", str(args.epochs), "--seed", "0", "--no-progress", "--model", args.search_model]
    space = SPACE + (SHAPE if args.search_model == "reference" else [])
    if "default" not in results["search"]:
        run = os.path.join(args.out, "default")
        minicnn("train", *fixed, "--out", run)
        results["search"]["default"] = best_val(run)
        save(path, results)
    import optuna
    from minicnn.tune import open_storage
    for seed in args.study_seeds:
        for sampler in ("random", "tpe"):
            key = f"{sampler}_seed{seed}"
            if key in results["search"]:
                continue
            folder = os.path.join(args.out, key)
            secs = minicnn("tune", *fixed, "--trials", str(args.trials), "--sampler", sampler,
                           "--study-seed", str(seed), "--pruner", "median", "--out", folder,
                           "--no-plots", *[a for s in space for a in ("--space", s)])
            study = optuna.load_study(study_name="minicnn",
                                      storage=open_storage("sqlite:///" + os.path.join(folder, "tune.db")))
            done = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
            curve, best = [], -1.0
            for t in study.trials:
                if t.state.name == "COMPLETE":
                    best = max(best, t.value)
                curve.append(best)
            results["search"][key] = {"sampler": sampler, "seed": seed, "best_val_acc": study.best_value,
                                      "best_params": study.best_params, "best_so_far": curve,
                                      "complete": len(done),
                                      "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
                                      "epochs_trained": sum(t.user_attrs.get("epochs_run", 0)
                                                            for t in study.trials),
                                      "seconds": secs}
            save(path, results)
            print(key, results["search"][key]["best_val_acc"], flush=True)


def part_test_once(args, results, path):
    """After the search: retrain each study's best.json once and read its test accuracy (and the default's)."""
    search = results["search"]
    with open(os.path.join(args.out, "default", "history.json")) as f:
        search["default_test_acc"] = json.load(f)["test_accuracy"]
    for key, row in search.items():
        if not isinstance(row, dict) or "test_acc" in row:
            continue
        folder = os.path.join(args.out, key)
        minicnn("train", "--config", os.path.join(folder, "best.json"), "--out", os.path.join(folder, "best"))
        with open(os.path.join(folder, "best", "history.json")) as f:
            h = json.load(f)
        row["test_acc"] = h["test_accuracy"]
        row["retrained_best_val_acc"] = max(a for a in h["history"]["val_acc"] if a is not None)
        save(path, results)


def report(results):
    import numpy as np
    lines = []
    if results["lr_find"]:
        lines.append("| optimizer | steepest | minimum/10 | valley (suggestion) | best val acc, 3 epochs at lr 1e-3 "
                     "| at the suggestion |")
        lines.append("|---|---|---|---|---|---|")
        for r in results["lr_find"]:
            s = r["suggestions"]
            lines.append(f"| {r['optimizer']} | {s['steepest']:.2g} | {s['minimum/10']:.2g} | {s['valley']:.2g} "
                         f"| {r['default']['best_val_acc']:.4f} | {r['suggested']['best_val_acc']:.4f} |")
    search = results["search"]
    if "default" in search:
        lines.append("")
        lines.append(f"default configuration ({results['settings'].get('search_model', 'reference')}, adam, lr 1e-3, batch 64): best val acc {search['default']:.4f}")
        if "default_test_acc" in search:
            lines[-1] += f", test acc {search['default_test_acc']:.4f}"
        lines.append("| sampler | best val acc per study seed | mean +- std | complete / pruned trials "
                     "| test acc of each study's best (once) |")
        lines.append("|---|---|---|---|---|")
        for sampler in ("random", "tpe"):
            rows = [v for v in search.values() if isinstance(v, dict) and v["sampler"] == sampler]
            if not rows:
                continue
            accs = np.array([r["best_val_acc"] for r in rows])
            lines.append(f"| {sampler} | {', '.join(f'{a:.4f}' for a in accs)} | {accs.mean():.4f} +- "
                         f"{accs.std(ddof=1) if len(accs) > 1 else 0:.4f} | "
                         f"{sum(r['complete'] for r in rows)} / {sum(r['pruned'] for r in rows)} | "
                         + ", ".join(f"{r['test_acc']:.3f}" for r in rows if "test_acc" in r) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/tune_measurements")
    p.add_argument("--only", choices=("lr-find", "search"), default=None)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=600)
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--study-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--search-model", default="reference", help="the model of every trial (lenet5: ~3x cheaper)")
    p.add_argument("--lr-find-limit-train", type=int, default=None,
                   help="run part 2 on the first N digits (with --val-split) instead of all 5,000")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = {"lr_find": [], "search": {}, "settings": vars(args)}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    if args.only in (None, "lr-find") and not results["lr_find"]:
        part_lr_find(args, results, path)
    if args.only in (None, "search"):
        part_search(args, results, path)
        part_test_once(args, results, path)
    print(report(results))


if __name__ == "__main__":
    main()
