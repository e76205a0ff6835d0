"""`minicnn explain CKPT IMAGE.png --method saliency|smoothgrad|ig|grad-cam|occlusion|all`.

Why the checkpoint's model predicts what it predicts for one image: the
attribution map(s) overlaid on the image, written (atomically) to a PNG.
The image is read in pixel units [0, 1] and the model is run as
``Normalize -> model``, so the baselines (black image for integrated gradients
and occlusion) are what they say. The target class defaults to the prediction.
"""
from __future__ import annotations

import os

METHODS = ("saliency", "smoothgrad", "ig", "grad-cam", "occlusion")


def add_parser(subparsers):
    e = subparsers.add_parser("explain", help="attribution maps for one image (saliency, IG, Grad-CAM, ...)")
    e.add_argument("checkpoint")
    e.add_argument("image")
    e.add_argument("--method", choices=METHODS + ("all",), default="all")
    e.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    e.add_argument("--layer", default=None, help="Grad-CAM layer name (default: the last conv layer)")
    e.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (default 50)")
    e.add_argument("--samples", type=int, default=25, help="SmoothGrad samples (default 25)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="PNG to write (default: IMAGE_explain.png beside the image)")
    e.set_defaults(func=cmd_explain)


def cmd_explain(args):
    import numpy as np

    import minicnn as mc
    from ..cli import commands as cli
    from . import attributions as explain
    from ..train import viz
    from ..attacks.cli import pixel_model
    state = cli.load_checkpoint_file(args.checkpoint)
    net, config = pixel_model(state)
    image = cli.load_image_28x28(args.image)
    x = mc.tensor(image[None, None])
    with mc.no_grad():
        logits = net(x).numpy()[0]
    classes = config.get("classes", [str(i) for i in range(len(logits))])
    pred = int(logits.argmax())
    target = pred if args.target is None else args.target
    if not 0 <= target < len(logits):
        raise cli.CLIError(f"--target must be a class in [0, {len(logits) - 1}], got {target}")
    layer = args.layer
    if layer is not None and layer not in dict(net.named_modules()):
        # names inside the checkpoint's model are shown to the user without the "1." of the wrapper
        layer = f"1.{layer}" if f"1.{layer}" in dict(net.named_modules()) else layer
    methods = METHODS if args.method == "all" else (args.method,)
    maps = {}
    for m in methods:
        if m == "saliency":
            maps["saliency"] = explain.saliency(net, x, target)
        elif m == "smoothgrad":
            maps["SmoothGrad"] = explain.smoothgrad(net, x, target, samples=args.samples, seed=args.seed)
        elif m == "ig":
            att, gap = explain.integrated_gradients(net, x, target, steps=args.steps)
            maps["integrated gradients"] = att
            print(f"integrated gradients: completeness gap {gap[0]:+.4g} "
                  f"(sum of attributions minus the logit difference to a black image, {args.steps} steps)")
        elif m == "grad-cam":
            name, _ = explain.find_layer(net, layer)
            maps[f"Grad-CAM ({name})"] = explain.grad_cam(net, x, target, layer=layer)
        elif m == "occlusion":
            maps["occlusion"] = explain.occlusion(net, x, target)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    out = args.out or os.path.splitext(args.image)[0] + "_explain.png"
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    title = f"predicted {classes[pred]} ({p[pred]:.2f}); explaining class {classes[target]}"
    path = viz.plot_attributions(x.numpy()[0], {k: v.numpy()[0] for k, v in maps.items()}, out, title=title)
    print(f"{args.image}: {title}")
    print(f"wrote {path}")
    return 0
