"""`minicnn train --adversarial pgd|fgsm --eps 0.1 --pgd-steps 7`: adversarial training.

A train plug-in (see ``cli.TRAIN_PLUGINS``): it replaces the Run's training
step by :class:`minicnn.attacks.AdversarialTraining`. The data pipeline still
normalises the batches (so checkpoints, ``minicnn evaluate`` and ``predict``
work as for any run); the step maps each batch back to pixel units, attacks
``Normalize -> model`` there and trains on the attack's images. So ``--eps`` is
an L∞ radius in **pixel units** [0, 1] (0.1 = a tenth of the black-to-white
range), whatever the dataset's normalisation.
"""
from __future__ import annotations


def add_train_arguments(parser):
    g = parser.add_argument_group("adversarial training (minicnn.attacks; ε in pixel units [0, 1])")
    g.add_argument("--adversarial", choices=("none", "pgd", "fgsm"), default="none",
                   help="train on adversarial examples: pgd = Madry et al.'s PGD min-max training; "
                        "fgsm = 'fast' FGSM from a random start (Wong et al. 2020), about 2x an ordinary "
                        "step instead of (steps+1)x (default: none)")
    g.add_argument("--eps", type=float, default=0.1,
                   help="L-inf radius of the training attack in pixel units [0, 1] (default 0.1)")
    g.add_argument("--pgd-steps", type=int, default=7, help="PGD steps per batch (default 7)")
    g.add_argument("--pgd-alpha", type=float, default=None,
                   help="step size in pixel units (default: 2.5*eps/steps for pgd, 1.25*eps for fgsm)")
    g.add_argument("--adv-mix", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of the loss taken on the clean batch (default 0: adversarial only)")


def configure_training(args, run):
    if getattr(args, "adversarial", "none") == "none":
        return
    from .fgsm_pgd import AdversarialTraining
    from ..cli.commands import CLIError
    if run.train_step is not None:
        raise CLIError("--adversarial cannot be combined with another feature that replaces the training "
                       "step (e.g. distillation)")
    if args.eps < 0:
        raise CLIError(f"--eps must be >= 0 (pixel units), got {args.eps}")
    if args.adversarial == "pgd" and args.pgd_steps < 1:
        raise CLIError(f"--pgd-steps must be >= 1, got {args.pgd_steps}")
    if not 0 <= args.adv_mix <= 1:
        raise CLIError(f"--adv-mix must be in [0, 1], got {args.adv_mix}")
    run.train_step = AdversarialTraining(args.eps, attack=args.adversarial, steps=args.pgd_steps,
                                         alpha=args.pgd_alpha, normalization=tuple(run.config["normalization"]),
                                         mix=args.adv_mix)
    run.config["adversarial"] = {"attack": args.adversarial, "eps": args.eps, "steps": run.train_step.steps,
                                 "alpha": run.train_step.alpha, "mix": args.adv_mix, "eps_units": "pixels [0, 1]"}
    print(f"adversarial training: {run.train_step} (eps in pixel units)")
