"""``minicnn train --teacher CKPT --temperature T --alpha A``: knowledge distillation.

A train plug-in (``cli.TRAIN_PLUGINS``): with ``--teacher`` the training step
becomes :class:`minicnn.compress.distill.DistillationStep` — the student (``--model``)
learns from the teacher's softened probabilities and the hard labels. Without
``--teacher`` nothing changes. For example::

    minicnn train --dataset mnist --model reference-bn --out runs/teacher
    minicnn train --dataset mnist --model <small> --teacher runs/teacher/best.ckpt \\
        --temperature 4 --alpha 0.9 --out runs/student
"""
from __future__ import annotations


def add_train_arguments(parser):
    g = parser.add_argument_group("knowledge distillation")
    g.add_argument("--teacher", default=None, metavar="CKPT",
                   help="a trained checkpoint whose soft targets the model learns from")
    g.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="softmax temperature of the soft targets (default 4; needs --teacher)")
    g.add_argument("--alpha", type=float, default=None, metavar="A",
                   help="weight of the soft-target term, 1 - A for the hard labels (default 0.9; "
                        "needs --teacher)")


def configure_training(args, run):
    from ..cli.commands import CLIError, load_checkpoint_file, model_from_checkpoint
    from .distill import DistillationStep
    teacher_path = getattr(args, "teacher", None)
    if teacher_path is None:
        if args.temperature is not None or args.alpha is not None:
            raise CLIError("--temperature and --alpha need --teacher CKPT")
        return
    T = 4.0 if args.temperature is None else args.temperature
    alpha = 0.9 if args.alpha is None else args.alpha
    if not T > 0:
        raise CLIError(f"--temperature must be > 0, got {T}")
    if not 0.0 <= alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1], got {alpha}")
    teacher, config = model_from_checkpoint(load_checkpoint_file(teacher_path))
    if config.get("num_classes", 10) != len(run.classes):
        raise CLIError(f"--teacher {teacher_path} predicts {config.get('num_classes')} classes but the "
                       f"data has {len(run.classes)}")
    if config.get("dataset") not in (None, run.key):
        raise CLIError(f"--teacher {teacher_path} was trained on {config.get('dataset')!r}, "
                       f"not on {run.key!r}")
    run.train_step = DistillationStep(teacher, temperature=T, alpha=alpha)
    run.config["distillation"] = {"teacher": teacher_path, "teacher_model": config.get("model_name"),
                                  "temperature": T, "alpha": alpha}
    print(f"distillation: teacher {config.get('model_name')} ({teacher.num_parameters():,} parameters) "
          f"from {teacher_path}, T = {T:g}, alpha = {alpha:g}")
