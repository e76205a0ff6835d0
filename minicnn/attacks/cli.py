"""`minicnn attack CKPT --method fgsm|pgd --eps 0.05,0.1,0.2,0.3 [--steps 40 --restarts 1]`.

Robust accuracy of a checkpoint's model on the test set, at each ε. The
checkpoint's model was trained on normalised images; it is attacked as
``Normalize(config["normalization"]) -> model``, so **ε is in pixel units**
[0, 1] (ε = 0.1: every pixel may move by a tenth of the black-to-white range).
Prints the table (with FGSM and random-noise baselines and the
gradient-masking check for PGD) and writes ``robust_accuracy.png``,
``adversarial_gallery.png`` and ``robustness.json``.
"""
from __future__ import annotations

import os

from ..io import write_json


def add_parser(subparsers):
    a = subparsers.add_parser("attack", help="robust accuracy under FGSM / PGD (eps in pixel units [0, 1])")
    a.add_argument("checkpoint")
    a.add_argument("--method", choices=("fgsm", "pgd"), default="pgd")
    a.add_argument("--eps", default="0.05,0.1,0.2,0.3",
                   help="comma-separated L-inf radii in pixel units [0, 1] (default 0.05,0.1,0.2,0.3)")
    a.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    a.add_argument("--alpha", type=float, default=None, help="PGD step size (default 2.5*eps/steps)")
    a.add_argument("--restarts", type=int, default=1, help="PGD random restarts (default 1)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=250)
    a.add_argument("--limit-test", type=int, default=None, metavar="N", help="attack the first N test images")
    a.add_argument("--dataset", default=None, help="default: the dataset it was trained on")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--no-download", action="store_true")
    a.add_argument("--out", default=None, help="folder for the plots (default: the checkpoint's folder)")
    a.set_defaults(func=cmd_attack)


def parse_eps(text):
    from ..cli.commands import CLIError
    try:
        eps = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--eps: expected comma-separated numbers such as 0.05,0.1, got {text!r}") from None
    if not eps:
        raise CLIError("--eps: give at least one value")
    bad = [e for e in eps if e < 0]
    if bad:
        raise CLIError(f"--eps must be >= 0 (pixel units [0, 1]), got {bad[0]:g}")
    return eps


def pixel_model(state):
    """The checkpoint's model as ``Normalize -> model`` (pixel-unit input) and its config."""
    from ..cli import commands as cli
    from ..models import with_normalize
    model, config = cli.model_from_checkpoint(state)
    mean, std = config.get("normalization", cli.NORMALIZATION["mnist"])
    return with_normalize(model, mean, std).eval(), config


def cmd_attack(args):

    import minicnn as mc
    from . import fgsm_pgd as attacks
    from ..cli import commands as cli
    from ..train import viz
    from ..data import DataLoader
    eps = parse_eps(args.eps)
    if args.steps < 1 or args.restarts < 1:
        raise cli.CLIError("--steps and --restarts must be >= 1")
    state = cli.load_checkpoint_file(args.checkpoint)
    net, config = pixel_model(state)
    key = config.get("dataset", "digits") if args.dataset is None else cli.dataset_key(args.dataset)
    _, _, test_loader, _, classes = cli.build_loaders(key, 64, data_dir=args.data_dir,
                                                          download=not args.no_download, limit_test=args.limit_test)
    images, labels = test_loader.arrays
    loader = DataLoader((images, labels), batch_size=args.batch_size)          # pixel units: no Normalize
    mc.manual_seed(args.seed)
    kwargs = {} if args.method == "fgsm" else dict(steps=args.steps, alpha=args.alpha, restarts=args.restarts)
    what = "FGSM" if args.method == "fgsm" else f"PGD-{args.steps} ({args.restarts} restart{'s' * (args.restarts > 1)})"
    print(f"checkpoint: {args.checkpoint} | data: {key} test split, {len(labels)} images | attack: {what}, "
          f"eps in pixel units [0, 1]")
    res = attacks.robust_accuracy(net, loader, args.method, eps, **kwargs)
    header = f"{'eps':>6}  {what:>22}"
    if res.fgsm is not None:
        header += f"  {'FGSM':>8}  {'noise ±eps':>10}"
    print(f"clean accuracy: {res.clean:.4f}")
    print(header)
    for i, e in enumerate(res.eps):
        row = f"{e:>6g}  {res.accuracy[i]:>22.4f}"
        if res.fgsm is not None:
            row += f"  {res.fgsm[i]:>8.4f}  {res.noise[i]:>10.4f}"
        print(row)
    for w in res.warnings:
        print(f"warning: {w}")
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out, exist_ok=True)
    written = [res.plot(os.path.join(out, "robust_accuracy.png"), title=f"{what} on {key} ({len(labels)} test images)")]
    x, y = next(iter(DataLoader((images[:8], labels[:8]), batch_size=8)))
    e_show = eps[len(eps) // 2] if len(eps) > 1 else eps[0]
    adv = attacks.fgsm(net, x, y, e_show) if args.method == "fgsm" else \
        attacks.pgd(net, x, y, e_show, alpha=args.alpha, steps=args.steps, seed=args.seed)
    with mc.no_grad():
        pc, pa = net(x).numpy().argmax(1), net(adv).numpy().argmax(1)
    written.append(viz.plot_adversarial_gallery(x, adv, y.numpy(), pc, pa, os.path.join(out, "adversarial_gallery.png"),
                                                class_names=classes, title=f"{what}, eps = {e_show:g} (pixel units)"))
    path = os.path.join(out, "robustness.json")
    write_json(path, {**res.as_dict(), "checkpoint": os.path.abspath(args.checkpoint), "steps": args.steps,
                      "restarts": args.restarts, "eps_units": "pixels [0, 1]"})
    print("wrote " + ", ".join(written + [path]))
    return 0
