"""``minicnn export CKPT model.onnx``: write a checkpoint (float, FP16 or int8) as ONNX.

The file is checked with ``onnx.checker``, then run by onnxruntime on random
inputs and compared with minicnn (printed: the largest relative difference).
"""
from __future__ import annotations

import numpy as np


def add_parser(subparsers):
    e = subparsers.add_parser("export", help="export a checkpoint to ONNX (needs minicnn[export])")
    e.add_argument("checkpoint")
    e.add_argument("output", help="the .onnx file to write")
    e.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    e.set_defaults(func=cmd_export)


def cmd_export(args):
    import minicnn as mc
    from . import onnx as mo
    from ..cli.commands import CLIError, load_checkpoint_file, model_from_checkpoint
    state = load_checkpoint_file(args.checkpoint)
    model, config = model_from_checkpoint(state)
    shape = (1, 1, 28, 28)
    try:
        path = mo.export(model, shape, args.output)
    except mo.ExportError as err:
        raise CLIError(str(err)) from None
    print(f"wrote {path} ({config.get('model_name', type(model).__name__)}, input (N, 1, 28, 28) normalized "
          f"with mean/std {config.get('normalization')}, output: logits)")
    if not args.no_check:
        x = np.random.default_rng(0).standard_normal((8,) + shape[1:]).astype(np.float32)
        with mc.no_grad():
            ref = model(mc.tensor(x)).numpy()
        got = mo.run_onnxruntime(path, x)
        rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
        print(f"onnxruntime vs minicnn on 8 random inputs: largest difference {rel:.2e} of the largest logit")
    return 0
