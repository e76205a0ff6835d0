"""``minicnn doctor`` and ``minicnn train --doctor``: the command-line side of :mod:`minicnn.doctor`.

For example::

    minicnn doctor --model reference --lr 10 --optimizer sgd     # a model about to be trained
    minicnn doctor runs/latest/best.ckpt                         # a trained checkpoint
    minicnn train --doctor --lr 3e-3                             # examine, print the report, then train

``minicnn doctor`` takes every ``minicnn train`` option (the run it would
train), or a checkpoint: then the model, dataset, optimizer and learning rate
are the checkpoint's (``--data-dir``, ``--limit-train``, ``--batch-size`` and
``--seed`` still apply), and the initial-loss check is skipped (it holds only
before training). It prints the report and **exits with status 1 when it found
a problem, 0 when it found none** (as linters do, so a script can stop on it).

``minicnn train --doctor`` prints the same report before the first epoch and
then trains anyway, whatever it found: the report is advice, and a finding can
be intended (a learning rate you are testing). Layers frozen with ``--freeze``
count as frozen on purpose. The doctor's probe uses the ordinary training step,
so with ``--teacher`` or ``--adversarial`` it examines the plain step; it does
not combine with ``--distributed`` (run ``minicnn doctor`` first).
"""
from __future__ import annotations

import argparse

from ..train.loop import evaluate
from .checks import diagnose


def add_train_arguments(parser):
    """``--doctor`` for ``minicnn train`` (a TRAIN_PLUGIN, see ``cli.TRAIN_PLUGINS``)."""
    g = parser.add_argument_group("training doctor")
    g.add_argument("--doctor", action="store_true",
                   help="before training: run a few probe steps on a copy of the model, print what is "
                        "wrong (inputs, labels, initial loss, overfitting one batch, learning rate, dead or "
                        "saturated units, gradients, updates, frozen/unused parameters, NaN), then train")
    g.add_argument("--doctor-steps", type=int, default=10, metavar="N",
                   help="probe steps of the doctor (minicnn doctor and train --doctor; default 10)")


def examine(run, at_init=True):
    """The doctor's report on a prepared Run (``cli.prepare_run``): its model, training batches,
    optimizer, and its evaluation on the validation (else test) batches."""
    from ..cli.commands import CLIError
    if run.args.doctor_steps < 2:
        raise CLIError(f"--doctor-steps must be >= 2, got {run.args.doctor_steps}")
    evaluate_fn = run.evaluate_fn or evaluate
    held_out = run.val_loader if run.val_loader is not None else run.test_loader

    def eval_fn(model, loader):             # the evaluation `fit` runs after every epoch
        return evaluate_fn(model, held_out)
    expect_frozen = ([n for n, p in run.model.named_parameters() if not p.requires_grad]
                     if getattr(run.args, "freeze", None) else ())
    return diagnose(run.model, run.train_loader, optimizer=run.optimizer, steps=run.args.doctor_steps,
                    at_init=at_init, eval_fn=eval_fn, expect_frozen=expect_frozen, seed=run.args.seed)


def configure_training(args, run):
    """With ``--doctor``: print the report, then let training go on."""
    if not getattr(args, "doctor", False):
        return
    from ..cli.commands import CLIError
    if getattr(args, "distributed", False):
        raise CLIError("--doctor does not combine with --distributed: run `minicnn doctor` with the same "
                       "options first")
    if args.resume:
        print("doctor: skipped (--resume continues a run that has already started)")
        return
    print(examine(run), flush=True)


def cmd_doctor(args):
    from ..cli.commands import (CLIError, build_optimizer, load_checkpoint_file, model_from_checkpoint,
                                prepare_run)
    args.doctor = False                      # prepare_run must not run the doctor a second time
    at_init = True
    if args.checkpoint:
        state = load_checkpoint_file(args.checkpoint)
        model, config = model_from_checkpoint(state)
        if "module" in state:
            raise CLIError("minicnn doctor needs a float checkpoint (written by `minicnn train`), "
                           "not an int8/FP16 one")
        trained = config.get("args", {})
        args.dataset = config.get("dataset", args.dataset)
        for key in ("optimizer", "lr", "weight_decay", "width", "model"):
            if trained.get(key) is not None:
                setattr(args, key, trained[key])
        args.model = config["model_name"]
        run = prepare_run(args)
        run.model = model
        run.optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
        at_init = False
        print(f"doctor: {args.checkpoint} ({args.model} trained on {args.dataset}; "
              f"{args.optimizer} lr {args.lr:g})")
    else:
        run = prepare_run(args)
        print(f"doctor: {args.model} on {run.source}; {args.optimizer} lr {args.lr:g}")
    report = examine(run, at_init=at_init)
    print(report)
    return 0 if report.ok else 1


def add_parser(sub):
    from ..cli.commands import add_train_arguments
    d = sub.add_parser("doctor", help="run a few probe steps and name what is wrong with a training run",
                       description="Examine a run before training it (the train options) or a checkpoint: "
                                   "inputs, labels, initial loss, overfitting one batch, learning rate, "
                                   "activations, gradients, updates, frozen/unused parameters, BatchNorm "
                                   "at evaluation, NaN. Exit status 1 when a problem was found, 0 when none.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("checkpoint", nargs="?", default=None,
                   help="a checkpoint of `minicnn train` (else the model the train options describe)")
    add_train_arguments(d)
    d.set_defaults(func=cmd_doctor, out="runs/doctor")
