"""Train options for the model's shape: ``--dropout P`` and ``--kernel-size K``.

They exist so that ``minicnn tune --space dropout=0.2:0.6 --space kernel_size=3,5``
can search the network's shape as well as its training. Left unset (the
default) the model keeps its own values. The chosen values are stored in the
checkpoint's ``config["model_kwargs"]``, which ``minicnn evaluate`` / ``predict``
pass back to :func:`minicnn.models.get_model`.
"""
from __future__ import annotations


def add_train_arguments(parser):
    parser.add_argument("--dropout", type=float, default=None, metavar="P",
                        help="dropout probability of the model's classifier (default: the model's own)")
    parser.add_argument("--kernel-size", type=int, default=None, metavar="K",
                        help="kernel size of the reference CNN's convolutions (default 3)")


def model_kwargs(args):
    kwargs = {}
    if getattr(args, "dropout", None) is not None:
        if not 0.0 <= args.dropout < 1.0:
            from .commands import CLIError
            raise CLIError(f"--dropout must be in [0, 1), got {args.dropout}")
        kwargs["dropout"] = float(args.dropout)
    if getattr(args, "kernel_size", None) is not None:
        kwargs["kernel_size"] = int(args.kernel_size)
    return kwargs


def configure_model(args, run):
    """Rebuild the model with the shape options (only when some are given)."""
    from .commands import CLIError
    from ..models import get_model
    kwargs = model_kwargs(args)
    if not kwargs:
        return
    kwargs = {**run.config.get("model_kwargs", {}), **kwargs}
    try:
        run.model = get_model(args.model, num_classes=len(run.classes), **kwargs)
    except ValueError as e:
        raise CLIError(str(e)) from None
    run.config["model_kwargs"] = kwargs
