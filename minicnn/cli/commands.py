"""The ``minicnn`` command: train, evaluate, predict, info.

    minicnn train                      # the reference CNN on the embedded digits (no network)
    minicnn train --dataset mnist --epochs 3 --out runs/mnist
    minicnn evaluate runs/mnist/best.ckpt
    minicnn predict runs/mnist/best.ckpt my_digit.png
    minicnn info

Bad arguments and missing files end in a one-line error (exit status 2),
never a traceback (set MINICNN_DEBUG=1 to see the traceback of an error).
A training run whose loss becomes NaN/Inf stops with a diagnosis (exit status 3).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

from ..io import write_json
from ..train.schema import SchemaError, check, check_model_config

# Normalisation constants (mean, std of the training pixels in [0, 1]).
NORMALIZATION = {"mnist": (0.1307, 0.3081), "digits": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530),
                 "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])}   # per channel, R G B
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
SCHEDULES = ("none", "step", "exponential", "cosine", "warmup-cosine", "plateau")


class CLIError(Exception):
    """A user-facing error: printed as one line."""


# -----------------------------------------------------------------------------
# Building blocks
# -----------------------------------------------------------------------------
def dataset_key(name):
    from ..data.datasets import ALIASES, DATASETS
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DATASETS:
        raise CLIError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def build_loaders(dataset, batch_size, augment=False, data_dir=None, download=True,
                  limit_train=None, limit_test=None, eval_batch_size=256, val_split=0.0, seed=0):
    """(train_loader, val_loader, test_loader, source text, class names) for a dataset name.

    ``val_split`` (a fraction in [0, 1)) of the training images — stratified by
    class, chosen by ``seed`` — becomes the validation set; the rest trains.
    With ``val_split=0`` there is no validation set (``val_loader`` is None).
    The test split is never used for validation.
    """
    from ..data import DataLoader, get_dataset, stratified_split
    from ..data.transforms import Compose, Normalize, RandomAffine
    key = dataset_key(dataset)
    if not (0.0 <= val_split < 1.0):
        raise CLIError(f"--val-split must be in [0, 1), got {val_split}")
    for option, value in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and value < 1:      # 0 must not mean "no limit", nor -5 "all but 5"
            raise CLIError(f"{option} must be a number of images >= 1 (or left out for all), got {value}")
    train = get_dataset(key, train=True, root=data_dir, download=download)
    test = get_dataset(key, train=False, root=data_dir, download=download)
    mean, std = NORMALIZATION[key]
    normalize = Normalize(mean, std)
    train_tf = Compose([RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)), normalize]) \
        if augment else normalize
    train_arrays, test_arrays = train.arrays(), test.arrays()
    if limit_train is not None:
        train_arrays = tuple(a[:limit_train] for a in train_arrays)
    if limit_test is not None:
        test_arrays = tuple(a[:limit_test] for a in test_arrays)
    for split, arrays in (("training", train_arrays), ("test", test_arrays)):
        if len(arrays[0]) == 0:                  # found now, not after a whole training run
            raise CLIError(f"the {split} split of {key} has no images ({getattr(train, 'source', key)})")
    val_loader = None
    if val_split > 0:
        train_idx, val_idx = stratified_split(train_arrays[1], val_split, seed=seed)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise CLIError(f"--val-split {val_split} leaves {len(train_idx)} training and "
                           f"{len(val_idx)} validation images; use more data or another fraction")
        val_arrays = tuple(a[val_idx] for a in train_arrays)
        train_arrays = tuple(a[train_idx] for a in train_arrays)
        val_loader = DataLoader(val_arrays, batch_size=eval_batch_size, shuffle=False, transform=normalize)
    train_loader = DataLoader(train_arrays, batch_size=batch_size, shuffle=True, transform=train_tf)
    test_loader = DataLoader(test_arrays, batch_size=eval_batch_size, shuffle=False, transform=normalize)
    classes = list(getattr(train, "classes", [str(i) for i in range(10)]))
    source = getattr(train, "source", key)
    return train_loader, val_loader, test_loader, source, classes


def input_shape_of(loader):
    """``(C, H, W)`` of the images a loader built by :func:`build_loaders` yields."""
    shape = loader.arrays[0].shape[1:]
    return (1,) + tuple(shape) if len(shape) == 2 else tuple(shape)


def build_optimizer(name, params, lr, weight_decay=0.0):
    from .. import optim
    params = list(params)
    if name == "sgd":
        return optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay or 1e-2)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "adadelta":                 # PyTorch's MNIST example: lr 1.0 (a scale on its own step size)
        return optim.Adadelta(params, lr=lr, weight_decay=weight_decay)
    raise CLIError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(name, optimizer, epochs, steps_per_epoch):
    """(scheduler or None, step_per_batch). Cosine schedules are stepped per batch."""
    from ..optim import lr_scheduler as S
    total = epochs * steps_per_epoch
    if name == "none":
        return None, False
    if name == "step":
        return S.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1), False
    if name == "exponential":
        return S.ExponentialLR(optimizer, gamma=0.8), False
    if name == "plateau":
        return S.ReduceLROnPlateau(optimizer, factor=0.3, patience=1), False
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total), True
    if name == "warmup-cosine":
        warm = max(1, min(steps_per_epoch, total // 10))
        return S.SequentialLR(optimizer, [S.LinearLR(optimizer, start_factor=0.1, total_iters=warm),
                                          S.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))],
                              milestones=[warm]), True
    raise CLIError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


def count_parameters(config):
    """Parameters of the model a checkpoint's ``config`` describes (built here: call it at width 1)."""
    from ..models import get_model
    model = get_model(config["model_name"], num_classes=config.get("num_classes", 10),
                      **config.get("model_kwargs", {}))
    return model.num_parameters()


def model_from_checkpoint(state, path="the checkpoint"):
    from ..models import MODELS, get_model
    if "module" in state:                     # an int8 / FP16 file (minicnn.quant.checkpoint)
        return state["module"], state["config"]
    config = state.get("config") or {}
    if not isinstance(config, dict) or "model_name" not in config:
        raise CLIError(f"{path} has no model configuration (was it written by `minicnn train`?)")
    try:                                      # types, ranges, sizes: before anything is allocated
        if "architecture" not in config:      # a described architecture (shrunk, or your own) may have any name
            check(config, {"properties": {"model_name": {"type": "string", "enum": list(MODELS)}}},
                  f"{path} [config]")
        check_model_config(config, state["model"], f"{path} [config]", count_parameters)
    except SchemaError as e:
        raise CLIError(str(e)) from None
    if "architecture" in config:        # shrunk by `minicnn prune --shrink`: its own channel counts
        from ..compress.sparsity import model_from_architecture
        model = model_from_architecture(config["architecture"])
    else:
        model = get_model(config["model_name"], num_classes=config.get("num_classes", 10),
                          **config.get("model_kwargs", {}))
    model.load_state_dict(state["model"])
    model.eval()
    return model, config


RESUME_MAY_CHANGE = {"out", "resume", "config", "no_progress", "no_fuse", "data_dir", "no_download",
                     "limit_test", "nan_policy", "early_stopping", "epochs", "batch_size", "doctor"}


def load_resume_checkpoint(args):
    """``--resume``'s checkpoint, checked against this run's options before anything is built.

    A resumed run continues exactly where the checkpoint stopped, so the
    options that decide the data, the model and the optimizer must be the
    ones it was trained with: a changed one is refused, naming it. Options
    that can change from the resume point on: the batch size (the position
    in the epoch is kept in samples; not with a schedule counted in batches),
    the number of epochs (not with a schedule planned over them), and those
    that change no number (output folder, progress bar, test images, ...).
    """
    state = load_checkpoint_file(args.resume)
    if "module" in state:
        raise CLIError(f"--resume {args.resume}: a quantized checkpoint cannot be trained on")
    config = state.get("config")
    saved = config.get("args") if isinstance(config, dict) else None
    if not isinstance(saved, dict):
        return state                           # not written by `minicnn train`: fit checks the position
    now = {k: _plain(v) for k, v in vars(args).items() if k != "func"}
    may_change = set(RESUME_MAY_CHANGE)
    if args.schedule in ("cosine", "warmup-cosine"):
        may_change -= {"batch_size", "epochs"}   # their length was planned in batches over all epochs
    elif args.schedule == "step":
        may_change -= {"epochs"}                 # its step size was epochs // 3
    if isinstance(saved.get("dataset"), str):
        saved = dict(saved, dataset=saved["dataset"].strip().lower())   # "MNIST" and "mnist" are one dataset
        now["dataset"] = str(now["dataset"]).strip().lower()
    for key in sorted(set(saved) & set(now) - may_change - {"batch_size", "epochs"}):
        if saved[key] != now[key]:
            option = "--" + key.replace("_", "-")
            raise CLIError(f"--resume {args.resume}: {option} is {now[key]!r} but the checkpoint was "
                           f"trained with {saved[key]!r}; resume with the same {option} (or start a new run)")
    for key in ("batch_size", "epochs"):
        if key in saved and key not in may_change and saved[key] != now[key]:
            option = "--" + key.replace("_", "-")
            raise CLIError(f"--resume {args.resume}: {option} is {now[key]!r} but the checkpoint was "
                           f"trained with {saved[key]!r}, and --schedule {args.schedule} was planned for "
                           f"that; resume with the same {option}")
    return state


def load_checkpoint_file(path):
    from ..quant.checkpoint import is_quantized_checkpoint, load_quantized
    from ..train.loop import load_checkpoint
    try:
        if is_quantized_checkpoint(path):
            return load_quantized(path)
        return load_checkpoint(path)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    except ValueError as e:
        raise CLIError(str(e)) from None


# -----------------------------------------------------------------------------
# Commands
# -----------------------------------------------------------------------------
class Run:
    """Everything one training run is made of, built from the train options.

    :func:`prepare_run` fills it in; feature plug-ins (see ``TRAIN_PLUGINS``)
    may change it before ``fit`` is called: load weights into ``model``,
    freeze parts of it, set ``param_groups``, replace ``train_step``, add
    ``callbacks``. ``minicnn tune`` and ``minicnn lr-find`` build the same
    Run from the same options.
    """

    def __init__(self, **fields):
        self.train_step = None                 # None: train.standard_step
        self.callbacks = []
        self.param_groups = None               # None: one group with all parameters
        self.evaluate_fn = None                # None: train.evaluate
        self.main_process = True               # False on the ranks > 0 of a distributed run: write nothing
        self.__dict__.update(fields)


# Modules that add options to `minicnn train` and adjust the Run. Each defines
# ``add_train_arguments(parser)`` and may define ``configure_model(args, run)``
# (after the model is built, before the optimizer) and
# ``configure_training(args, run)`` (just before fit). Applied in this order.
TRAIN_PLUGINS = ("minicnn.cli.model_shape",     # rebuilds the model with --dropout/--kernel-size: first
                 "minicnn.transfer.cli",            # then --init-from loads weights into it, --freeze
                 "minicnn.compress.distill_cli", "minicnn.attacks.adversarial_cli",
                 "minicnn.distributed.cli",     # wraps the model and the loaders
                 "minicnn.doctor.cli")          # --doctor: examines the finished Run, prints, training goes on

# Modules that add a subcommand: each defines ``add_parser(subparsers)``,
# which registers the command and its function (set_defaults(func=...)).
COMMANDS = ("minicnn.compress.prune_cli", "minicnn.quant.cli", "minicnn.quant.export_cli",
            "minicnn.attacks.cli", "minicnn.explain.cli", "minicnn.tune.cli",
            "minicnn.course.cli", "minicnn.cli.from_torch", "minicnn.doctor.cli")


def _plugins(names):
    import importlib
    return [importlib.import_module(name) for name in names]


def _plain(value):
    """An option's value as checkpoint metadata can hold it (JSON); paths and the like as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def prepare_run(args) -> Run:
    """Check the train options and build data, model, optimizer and schedule."""
    import minicnn as mc
    from ..models import get_model

    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    for option, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay),
                          ("--width", getattr(args, "width", 1.0))):
        if not math.isfinite(value):
            raise CLIError(f"{option} must be a finite number, got {value}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    if getattr(args, "width", 1.0) <= 0:
        raise CLIError(f"--width must be > 0, got {args.width}")
    if args.resume and not os.path.isfile(args.resume):
        raise CLIError(f"--resume: checkpoint not found: {args.resume}")
    if args.resume:
        load_resume_checkpoint(args)          # its options against these, before anything is built
    mc.manual_seed(args.seed)
    key = dataset_key(args.dataset)
    train_loader, val_loader, test_loader, source, classes = build_loaders(
        key, args.batch_size, args.augment, args.data_dir, not args.no_download,
        args.limit_train, args.limit_test, val_split=args.val_split, seed=args.seed)
    model_kwargs = {} if getattr(args, "width", 1.0) == 1.0 else {"width": args.width}
    input_shape = input_shape_of(train_loader)
    if input_shape != (1, 28, 28):          # MNIST's shape needs no option: its configs stay as they were
        model_kwargs.update(in_channels=input_shape[0], input_size=input_shape[1])
    try:
        model = get_model(args.model, num_classes=len(classes), **model_kwargs)
    except ValueError as e:
        raise CLIError(str(e)) from None
    config = {"model_name": args.model, "num_classes": len(classes), "model_kwargs": model_kwargs,
              "dataset": key, "classes": classes, "input_shape": list(input_shape),
              "normalization": NORMALIZATION[key],
              "args": {k: _plain(v) for k, v in vars(args).items() if k != "func"}}
    run = Run(args=args, key=key, source=source, classes=classes, model=model, config=config,
              train_loader=train_loader, val_loader=val_loader, test_loader=test_loader, out=args.out)
    plugins = _plugins(TRAIN_PLUGINS)
    for plugin in plugins:
        if hasattr(plugin, "configure_model"):
            plugin.configure_model(args, run)
    params = run.param_groups if run.param_groups is not None else run.model.parameters()
    run.optimizer = build_optimizer(args.optimizer, params, args.lr, args.weight_decay)
    run.scheduler, run.per_batch = build_scheduler(args.schedule, run.optimizer, args.epochs,
                                                   len(train_loader))
    run.early_stopping = None
    if args.early_stopping:
        from ..train.loop import EarlyStopping
        run.early_stopping = EarlyStopping(patience=args.early_stopping, monitor="val_loss")
    for plugin in plugins:
        if hasattr(plugin, "configure_training"):
            plugin.configure_training(args, run)
    return run


def run_fit(run, progress=True, log=print):
    """``train.fit`` on a prepared Run; returns the history."""
    from ..train.loop import fit
    try:
        return fit(run.model, run.optimizer, run.train_loader, run.args.epochs, val_loader=run.val_loader,
                   scheduler=run.scheduler, out_dir=run.out, early_stopping=run.early_stopping,
                   resume=run.args.resume, progress=progress, log=log,
                   step_scheduler_per_batch=run.per_batch, checkpoint_extra={"config": run.config},
                   train_step=run.train_step, callbacks=run.callbacks, evaluate_fn=run.evaluate_fn,
                   nan_policy=getattr(run.args, "nan_policy", "stop"),
                   fuse=not getattr(run.args, "no_fuse", False))
    except SchemaError as e:                     # the resumed checkpoint does not fit this run
        raise CLIError(f"--resume {e}") from None


def cmd_train(args):
    import minicnn as mc
    from ..train import viz
    from ..train.metrics import classification_report, confusion_matrix
    from ..train.loop import predict

    run = prepare_run(args)
    if not run.main_process:                   # ranks > 0 of `mpirun ... --distributed`: train, stay silent
        run_fit(run, progress=False, log=lambda *a, **k: None)
        return 0
    model, classes, test_loader = run.model, run.classes, run.test_loader
    n_train = len(run.train_loader.arrays[0])
    n_test = len(test_loader.arrays[0])
    n_val = 0 if run.val_loader is None else len(run.val_loader.arrays[0])
    print(f"data: {run.source} — {n_train} training / {n_val} validation "
          f"({args.val_split:g} of the training images, stratified) / {n_test} test images")
    print(f"model: {args.model} ({model.num_parameters():,} parameters) | optimizer: {args.optimizer} "
          f"lr {args.lr:g} | schedule: {args.schedule} | augmentation: {'on' if args.augment else 'off'} "
          f"| backend: {mc.get_backend()} | seed {args.seed}")
    out = args.out
    from ..train.runlock import RunLockError, run_lock
    try:
        with run_lock(out):                        # one run per folder: never interleave checkpoints
            t0 = time.perf_counter()
            history = run_fit(run, progress=not args.no_progress)
            total = time.perf_counter() - t0
    except RunLockError as e:
        raise CLIError(str(e)) from None

    logits, targets = predict(model if getattr(args, "no_fuse", False) else mc.fuse(model), test_loader)
    pred = logits.argmax(axis=1)
    acc = float((pred == targets).mean())
    print(classification_report(pred, targets, num_classes=len(classes), class_names=classes))
    print(f"test accuracy: {acc:.4f} ({int((pred == targets).sum())}/{len(targets)} held-out test images); "
          f"training took {total:.1f}s")
    write_json(os.path.join(out, "history.json"), {"history": history, "test_accuracy": acc,
                                                     "data": run.source, "config": run.config["args"]})
    images = test_loader.arrays[0]
    wrong = np.flatnonzero(pred != targets)        # all mistakes: the plot shows 25 of them
    written = [
        viz.plot_history(history, os.path.join(out, "curves.png")),
        viz.plot_confusion_matrix(confusion_matrix(pred, targets, len(classes)), classes,
                                  os.path.join(out, "confusion_matrix.png")),
        viz.plot_filters(_first_conv(model).weight, os.path.join(out, "filters.png")),
    ]
    if len(wrong):
        written.append(viz.plot_misclassified(images[wrong], targets[wrong], pred[wrong],
                                              os.path.join(out, "misclassified.png"), class_names=classes))
    print("wrote " + ", ".join(written + [os.path.join(out, "last.ckpt")]))
    return 0


def _first_conv(model):
    from ..nn import Conv2d
    for m in model.modules():
        if isinstance(m, Conv2d):
            return m
    raise CLIError("the model has no Conv2d layer to show")


def cmd_evaluate(args):
    from ..train import viz
    from ..train.metrics import classification_report, confusion_matrix, roc_auc_ovr, roc_curves_ovr
    from ..train.loop import predict
    state = load_checkpoint_file(args.checkpoint)
    model, config = model_from_checkpoint(state, args.checkpoint)
    key = config.get("dataset", "digits") if args.dataset is None else dataset_key(args.dataset)
    _, _, test_loader, source, classes = build_loaders(key, 64, data_dir=args.data_dir,
                                                    download=not args.no_download, limit_test=args.limit_test)
    from ..nn.fusion import fuse
    net = model if args.no_fuse else fuse(model)    # the same weights, Conv2d -> ReLU -> MaxPool2d fused
    logits, targets = predict(net, test_loader)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    pred = logits.argmax(axis=1)
    print(f"checkpoint: {args.checkpoint} (epoch {state.get('epoch')}) | data: {source}, {len(targets)} test images")
    print(classification_report(pred, targets, num_classes=len(classes), class_names=classes))
    per_class, macro = roc_auc_ovr(probs, targets, len(classes))
    print(f"accuracy {float((pred == targets).mean()):.4f} | ROC-AUC (one-vs-rest, macro) {macro:.4f}")
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out, exist_ok=True)
    images = test_loader.arrays[0]
    wrong = np.flatnonzero(pred != targets)        # all mistakes: the plot shows 25 of them
    written = [viz.plot_confusion_matrix(confusion_matrix(pred, targets, len(classes)), classes,
                                         os.path.join(out, "eval_confusion_matrix.png")),
               viz.plot_roc_curves(roc_curves_ovr(probs, targets, len(classes)),
                                   os.path.join(out, "eval_roc.png"), class_names=classes)]
    if "module" not in state:                 # float layers to show (an int8 model has none)
        written.append(viz.plot_filters(_first_conv(model).weight, os.path.join(out, "eval_filters.png")))
        x0 = next(iter(test_loader))[0][:1]
        written.append(viz.plot_feature_maps(model, x0, os.path.join(out, "eval_feature_maps.png")))
    if len(wrong):
        written.append(viz.plot_misclassified(images[wrong], targets[wrong], pred[wrong],
                                              os.path.join(out, "eval_misclassified.png"),
                                              probs=probs[wrong], class_names=classes))
    print("wrote " + ", ".join(written))
    return 0


MAX_IMAGE_PIXELS = 4096 * 4096


def load_image_28x28(path):
    """A PNG/JPEG as a (28, 28) float array in [0, 1], white digit on black like MNIST."""
    return load_image(path)


#: PIL's modes for 16-bit grey pixels (a 16-bit greyscale PNG opens as one of these)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def load_image(path, channels=1, size=28):
    """A PNG/JPEG as a float array in [0, 1]: ``(size, size)`` grey, white digit on black like MNIST
    (``channels=1``), or ``(3, size, size)`` RGB as it is (``channels=3``, CIFAR-10).

    8-bit images are divided by 255. A **16-bit** greyscale PNG is divided by
    65535 — what torchvision's ``decode_png`` + ``to_dtype(scale=True)`` and
    OpenCV's ``IMREAD_ANYDEPTH`` users expect: the same picture as its 8-bit
    version. (PIL's own ``convert("L")`` would clip every value above 255 to
    white, silently.) 16-bit RGB PNGs PIL already reduces to 8 bits correctly.
    Pixels whose range a file does not say — PIL's 32-bit integer and float
    modes (TIFF) — are refused with the reason.
    """
    if not os.path.isfile(path):
        raise CLIError(f"image not found: {path}")
    try:
        from PIL import Image
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:       # checked before decoding anything
                raise CLIError(f"image {path} is {img.width}x{img.height} pixels; predict takes images "
                               f"of at most {MAX_IMAGE_PIXELS:,} pixels (it scales them to {size}x{size})")
            if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG"):
                # 16-bit grey, 0..65535: scaled to [0, 1] here, then resized as floats (mode "F")
                img = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                a = np.asarray(img, dtype=np.float32)                   # (size, size)
                if channels != 1:
                    a = np.repeat(a[:, :, None], 3, axis=2)              # grey as RGB: (size, size, 3)
            elif img.mode in ("I", "F"):
                raise CLIError(f"image {path} has {'32-bit integer' if img.mode == 'I' else 'floating-point'} "
                               f"pixels (PIL mode {img.mode!r}), whose range predict cannot know; save it as "
                               "an 8- or 16-bit PNG, or a JPEG")
            else:
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                a = np.asarray(img, dtype=np.float32) / 255.0
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(f"cannot read image {path}: {e}") from None
    if channels != 1:
        return a.transpose(2, 0, 1)
    if a.mean() > 0.5:            # dark digit on a light background: invert to MNIST's convention
        a = 1.0 - a
    return a


def cmd_predict(args):
    import minicnn as mc
    state = load_checkpoint_file(args.checkpoint)
    model, config = model_from_checkpoint(state, args.checkpoint)
    channels, size, _ = config.get("input_shape", (1, 28, 28))
    image = load_image(args.image, channels, size)
    mean, std = (np.reshape(np.asarray(v, dtype=np.float32), (-1, 1, 1))
                 for v in config.get("normalization", NORMALIZATION["mnist"]))
    x = mc.tensor(((image.reshape(channels, size, size) - mean) / std)[None])
    with mc.no_grad():
        logits = model(x).numpy()[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    classes = config.get("classes", [str(i) for i in range(len(p))])
    print(f"{args.image}:")
    for rank, c in enumerate(np.argsort(-p)[:3], 1):
        print(f"  {rank}. {classes[c]:>12}  {p[c]:.4f}")
    return 0


def cmd_info(args):
    import numpy
    import minicnn as mc
    from ..backend import AVAILABLE, load_backend
    print(f"minicnn {mc.__version__} | Python {platform.python_version()} | {platform.platform()}")
    print(f"active backend: {mc.get_backend()} (MINICNN_BACKEND={os.environ.get('MINICNN_BACKEND', 'auto (unset)')})")
    print(f"numpy {numpy.__version__}")
    for name in AVAILABLE:
        try:
            load_backend(name)
            status = "available"
        except Exception as e:
            status = f"unavailable: {e}"
        print(f"  backend {name}: {status}")
    try:
        import numba
        print(f"numba {numba.__version__}: {numba.get_num_threads()} threads "
              f"(NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}; cores: {os.cpu_count()})")
    except ImportError:
        print("numba: not installed")
    from ..distributed import data_parallel as distributed
    print(f"MPI: {distributed.mpi_library()} | world size {distributed.get_world_size()}, "
          f"this is rank {distributed.get_rank()}")
    data_dir = os.environ.get("MINICNN_DATA_DIR")
    print(f"MINICNN_DATA_DIR: {data_dir or 'unset'}")
    return 0


# -----------------------------------------------------------------------------
# Argument parsing
# -----------------------------------------------------------------------------
def add_train_arguments(t):
    """The options of `minicnn train` (also accepted by `tune` and `lr-find`)."""
    from ..models import MODELS
    t.add_argument("--dataset", default="digits",
                   help="digits (embedded, no network) | mnist | fashion-mnist | cifar10 (default: digits)")
    t.add_argument("--model", default="reference", choices=sorted(MODELS))
    t.add_argument("--width", type=float, default=1.0, metavar="W",
                   help="width multiplier of reference, reference-bn, mobilenet: channels x W (e.g. 0.25, 0.5, 2)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", default="none", choices=SCHEDULES)
    t.add_argument("--augment", action="store_true", help="random shift / rotation / scale")
    t.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without validation-loss improvement (0: off)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/latest", help="output folder (checkpoints, plots, history)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT")
    t.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/ (IDX files), cifar10/cifar-10-batches-bin/")
    t.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    t.add_argument("--limit-train", type=int, default=None, metavar="N", help="use the first N training images")
    t.add_argument("--limit-test", type=int, default=None, metavar="N", help="use the first N test images")
    t.add_argument("--val-split", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of the training images held out (stratified, seeded) for validation: "
                        "best checkpoint, early stopping and plateau schedules use it; the test set is "
                        "evaluated once, after training (default 0.1; 0 = no validation)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-fuse", action="store_true",
                   help="run every layer as written instead of mc.fuse(model)'s fused "
                        "Conv2d -> ReLU -> MaxPool2d (same numbers, slower; to step through layers)")
    t.add_argument("--nan-policy", default="stop", choices=("stop", "skip-batch", "ignore"),
                   help="a NaN/Inf training loss: stop with a diagnosis (default; exit status 3), "
                        "skip that batch's update, or ignore it")
    t.add_argument("--config", default=None, metavar="FILE.json",
                   help="train options from a JSON file ({\"lr\": 0.003, ...}, or a `minicnn tune` "
                        "best.json); options given on the command line win")
    for plugin in _plugins(TRAIN_PLUGINS):
        plugin.add_train_arguments(t)
    return t


def make_parser():
    p = argparse.ArgumentParser(prog="minicnn", description="minicnn: train and inspect CNNs built from scratch.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (default: the reference CNN on the embedded digits)")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics table and plots for a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default=None, help="default: the dataset it was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--no-download", action="store_true")
    e.add_argument("--limit-test", type=int, default=None, metavar="N")
    e.add_argument("--out", default=None, help="folder for the plots (default: the checkpoint's folder)")
    e.add_argument("--no-fuse", action="store_true", help="run every layer as written (no mc.fuse)")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="top-3 classes for an image")
    pr.add_argument("checkpoint")
    pr.add_argument("image")
    pr.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="backend, versions, threads")
    i.set_defaults(func=cmd_info)
    for command in _plugins(COMMANDS):
        command.add_parser(sub)
    return p


def _failed(status, message):
    """The exit status of a failed command; in a multi-rank MPI job, abort every rank instead
    (the others may be waiting in a collective for this one)."""
    dist = sys.modules.get("minicnn.distributed.data_parallel")
    if dist is not None and dist.get_world_size() > 1:
        dist.abort(message, status)
    return status


def load_config_file(path, parser):
    """Train options from ``--config FILE``: ``{dest: value}``, or a tune best.json's "train_options"."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"--config: file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise CLIError(f"--config {path}: not readable JSON ({e})") from None
    values = doc.get("train_options", doc) if isinstance(doc, dict) else None
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: expected a JSON object of train options")
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise CLIError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    try:                       # {"epochs": 1.5}, {"lr": [1]}: refused here, naming the option
        check(values, options_schema(parser), f"--config {path}")
    except SchemaError as e:
        raise CLIError(str(e)) from None
    return {k: v for k, v in values.items() if k != "config"}


def options_schema(parser):
    """A JSON Schema for a parser's options given as JSON: ``{dest: value}``.

    Derived from the parser itself — ``type=int`` -> an integer, ``float`` -> a
    finite number, a flag -> a boolean, ``choices`` -> one of them, ``nargs`` ->
    a list of them — so a config file is held to what the command line accepts.
    (argparse would take a config's values as they are: defaults are not
    converted unless they are strings, which argparse then parses as it parses the line.)
    """
    properties = {}
    for action in parser._actions:
        if action.dest in ("help", "config") or action.option_strings == []:
            continue
        if action.nargs == 0:                                  # store_true / store_false / count
            item = {"type": "boolean"} if action.const in (True, False) else {"type": "integer"}
        elif action.type is int:
            item = {"type": ["integer", "string"]}
        elif action.type is float:
            item = {"type": ["number", "string"], "finite": True}
        else:
            item = {"type": ["string", "number", "boolean"]}
        if action.choices is not None and action.nargs is None:
            item = {"enum": list(action.choices)}
        if action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 0):
            item = {"type": "array", "items": item}
        properties[action.dest] = {"anyOf": [item, {"type": "null"}]} if action.default is None else item
    return {"type": "object", "properties": properties}


def parse_args(parser, argv=None):
    """Parse; with ``--config FILE``, the file's values become the defaults and the line is parsed again."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        command.set_defaults(**load_config_file(args.config, command))
        args = parser.parse_args(argv)
    return args


def one_line(message):
    """A message on one line: a multi-line one (every mirror's reason) joined with ' | '."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return " | ".join(lines)


def main(argv=None):
    parser = make_parser()
    try:
        args = parse_args(parser, argv)
    except CLIError as e:
        print(f"minicnn: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("minicnn: interrupted", file=sys.stderr)
        return _failed(130, "interrupted")
    except CLIError as e:
        print(f"minicnn: error: {one_line(e)}", file=sys.stderr)
        return _failed(2, one_line(e))
    except (ValueError, FileNotFoundError, OSError, KeyError, TypeError, RuntimeError) as e:
        from ..train.loop import NonFiniteLossError
        if isinstance(e, NonFiniteLossError):
            print(f"minicnn: {e}", file=sys.stderr)    # the whole diagnosis: where, and what to try
            return _failed(3, str(e).strip().splitlines()[0])
        if os.environ.get("MINICNN_DEBUG"):
            raise                                  # the full traceback, for developers
        message = one_line(e) or type(e).__name__
        print(f"minicnn: error: {message}", file=sys.stderr)
        return _failed(2, f"{type(e).__name__}: {message}")


