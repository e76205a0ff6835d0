"""``minicnn train`` options for transfer learning (a TRAIN_PLUGIN, see ``cli.TRAIN_PLUGINS``)::

    minicnn train --dataset mnist --out runs/mnist                       # pretrain
    minicnn train --dataset fashion-mnist --init-from runs/mnist/best.ckpt --reset-head \\
                  --freeze backbone --limit-train 1000                    # linear probe
    minicnn train --dataset fashion-mnist --init-from runs/mnist/best.ckpt --reset-head \\
                  --backbone-lr 1e-4 --head-lr 1e-3                       # discriminative lrs

The work is done by :mod:`minicnn.transfer`; this module turns options into calls
and says what it did.
"""
from __future__ import annotations


def add_train_arguments(parser):
    g = parser.add_argument_group("transfer learning")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (same --model and --width); a new head is "
                        "created when the class count differs")
    g.add_argument("--reset-head", action="store_true",
                   help="with --init-from: a freshly initialised head even when the class count matches "
                        "(a new task with as many classes)")
    g.add_argument("--freeze", default=None, metavar="LAYERS",
                   help="layers not to train: indices or dotted names from mc.summary, comma-separated "
                        "(e.g. 0,3 or 0-8 or stem,stages.0), or 'backbone' (all but the head: a linear probe); "
                        "their BatchNorms stay in eval mode")
    g.add_argument("--head-lr", type=float, default=None, metavar="LR",
                   help="learning rate of the head (the last Linear layer); default --lr")
    g.add_argument("--backbone-lr", type=float, default=None, metavar="LR",
                   help="learning rate of everything but the head; default --lr")


def configure_model(args, run):
    from . import finetune as transfer
    from ..cli.commands import CLIError, load_checkpoint_file
    model = run.model
    if args.init_from:
        state = load_checkpoint_file(args.init_from)
        config = state.get("config") or {}
        source = config.get("model_name")
        if source is not None and source != args.model:
            raise CLIError(f"--init-from: {args.init_from} holds a {source!r} model but --model is "
                           f"{args.model!r}; use --model {source}")
        theirs, ours = config.get("model_kwargs", {}), run.config.get("model_kwargs", {})
        if "model_name" in config and theirs != ours:
            raise CLIError(f"--init-from: {args.init_from} was trained with model options {theirs or 'none'}, "
                           f"this run has {ours or 'none'} (pass the same --width)")
        try:
            report = transfer.load_pretrained(model, state["model"], reset_head=args.reset_head)
        except ValueError as e:
            raise CLIError(f"--init-from {args.init_from}: {e}") from None
        head = report["head"]
        why = ("--reset-head" if args.reset_head else
               f"{config.get('num_classes', '?')} -> {run.config['num_classes']} classes")
        print(f"init-from: {len(report['loaded'])} tensors from {args.init_from} "
              f"({source or 'model'} trained on {config.get('dataset', '?')})"
              + (f"; new head {head!r} ({why})" if report["new_head"] else f"; head {head!r} loaded too"))
        run.config["init_from"] = args.init_from
    if args.freeze:
        try:
            names = transfer.resolve_layers(model, args.freeze)
        except ValueError as e:
            raise CLIError(f"--freeze: {e}") from None
        report = transfer.freeze_layers(model, names, bn_eval=True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"freeze: {', '.join(names)} ({report['params']:,} parameters frozen, {trainable:,} trainable)")
        if report["batchnorms"]:
            print(f"freeze: BatchNorm layers {', '.join(report['batchnorms'])} stay in eval mode "
                  "(their running statistics are not updated)")
        if trainable == 0:
            raise CLIError("--freeze: every parameter is frozen; nothing would train")
        run.config["freeze"] = names
    if args.head_lr is not None or args.backbone_lr is not None:
        for flag, value in (("--head-lr", args.head_lr), ("--backbone-lr", args.backbone_lr)):
            if value is not None and value <= 0:
                raise CLIError(f"{flag} must be > 0, got {value}")
        head_lr = args.lr if args.head_lr is None else args.head_lr
        backbone_lr = args.lr if args.backbone_lr is None else args.backbone_lr
        run.param_groups = transfer.param_groups(model, head_lr=head_lr, backbone_lr=backbone_lr)
        print(f"learning rates: head {transfer.head_name(model)!r} {head_lr:g}, backbone {backbone_lr:g}")
