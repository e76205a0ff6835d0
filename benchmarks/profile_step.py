"""Where does the time of one training step go? A per-phase profile.

    python benchmarks/profile_step.py                      # active backend (MINICNN_BACKEND)
    python benchmarks/profile_step.py --backend numpy --batch 128 --steps 20
    python benchmarks/profile_step.py --inference          # a forward pass in eval mode instead

It trains the reference CNN (see ``bench_model.py``) for a few steps and times,
*exclusively* (a phase's time excludes the phases nested inside it):

* every kernel call (im2col, col2im, pooling; on numba, the whole conv -> ReLU ->
  pool block, whose im2col, GEMM and pooling happen inside one kernel) —
  ``kernel:<name>``;
* every Function's forward and backward — ``<Function>.forward`` /
  ``.backward`` (for Conv2d and Linear this self-time is mostly the matrix
  products, plus the layout copies and bias; the GEMMs are also timed alone
  with the same shapes, so you can see how much of it BLAS takes);
* the SGD update;
* everything else — the autograd engine (graph sort, gradient bookkeeping),
  Module calls, argument checks: "Python & autograd overhead".

Instrumentation adds a few microseconds per timed call (~50 calls a step).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model  # noqa: E402

KERNELS = ("im2col", "col2im", "max_pool2d_forward", "max_pool2d_backward",
           "avg_pool2d_forward", "avg_pool2d_backward",
           "bias_relu_max_pool2d_forward", "bias_relu_max_pool2d_backward",
           "conv2d_bias_relu_max_pool2d_forward", "conv2d_bias_relu_max_pool2d_backward")


class ExclusiveTimer:
    """Nested timers: each label gets its wall time minus that of timers opened inside it."""

    def __init__(self):
        self.total = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)
        self.stack = []            # [label, start, time spent in children]

    def wrap(self, label, fn):
        def timed(*args, **kwargs):
            self.stack.append([label, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                lab, start, children = self.stack.pop()
                elapsed = time.perf_counter() - start
                self.total[lab] += elapsed - children
                self.calls[lab] += 1
                if self.stack:
                    self.stack[-1][2] += elapsed
        timed.__wrapped__ = fn
        return timed


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def instrument(timer):
    """Patch kernels and Function methods with timers; return an undo function."""
    import minicnn as mc
    from minicnn.backend import current
    undo = []
    for name in KERNELS:
        fn = getattr(current.kernels, name, None)
        if fn is None:
            continue
        setattr(current.kernels, name, timer.wrap(f"kernel:{name}", fn))
        undo.append((current.kernels, name, fn))
    for cls in set(_all_subclasses(mc.Function)):
        for method in ("forward", "backward"):
            fn = cls.__dict__.get(method)
            if fn is not None:
                setattr(cls, method, timer.wrap(f"{cls.__name__}.{method}", fn))
                undo.append((cls, method, fn))

    def restore():
        for owner, name, fn in undo:
            setattr(owner, name, fn)
    return restore


def gemm_alone(batch, repeats, inference=False):
    """Seconds per step spent in the conv/linear matrix products, timed alone.

    The same products, shapes and dtype as Conv2d / Linear forward and backward
    of the reference CNN (float32, C-contiguous operands as those functions make them).
    """
    rng = np.random.default_rng(0)
    f32 = np.float32

    def r(*shape):
        return rng.standard_normal(shape).astype(f32)
    L1, L2 = batch * 26 * 26, batch * 11 * 11
    products = [
        # conv1: W (32, 9) @ cols (9, L1); backward dW = gy @ cols^T (dx of the input is not needed)
        (r(1, 32, 9), r(1, 9, L1)), (r(1, 32, L1), r(1, 9, L1).transpose(0, 2, 1)),
        # conv2: forward, dcols = W^T @ gy, dW = gy @ cols^T
        (r(1, 64, 288), r(1, 288, L2)), (r(1, 64, 288).transpose(0, 2, 1), r(1, 64, L2)),
        (r(1, 64, L2), r(1, 288, L2).transpose(0, 2, 1)),
        # fc1: x @ W^T, dx = gy @ W, dW = gy^T @ x
        (r(batch, 1600), r(128, 1600).T), (r(batch, 128), r(128, 1600)), (r(batch, 128).T, r(batch, 1600)),
        # fc2
        (r(batch, 128), r(10, 128).T), (r(batch, 10), r(10, 128)), (r(batch, 10).T, r(batch, 128)),
    ]
    if inference:               # only the forward products: conv1, conv2, fc1, fc2
        products = [products[0], products[2], products[5], products[8]]
    for a, b in products:       # warm-up
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for a, b in products:
            a @ b
        best = min(best, time.perf_counter() - t)
    return best


def profile(backend, batch, steps, inference=False, warmup=3, optimizer="adam", fuse=True):
    import minicnn as mc
    import minicnn.functional as F
    mc.set_backend(backend)
    mc.manual_seed(0)
    model = bench_model.minicnn_model(fuse=fuse)
    params = list(model.parameters())
    xs, ys = bench_model.random_batch(batch)
    x, y = mc.tensor(xs), mc.tensor(ys)
    opt = mc.optim.Adam(params, lr=1e-3)    # what bench_protocol.py and `minicnn train` use

    def step():
        if inference:
            with mc.no_grad():
                model(x)
        elif optimizer == "adam":
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            bench_model.minicnn_train_step(model, params, x, y)
    model.train(not inference)
    for _ in range(warmup):                  # JIT compile, allocator warm-up
        step()

    timer = ExclusiveTimer()
    restore = instrument(timer)
    opt.step = timer.wrap("optimizer step (Adam)", opt.step)
    step_times = []
    try:
        for _ in range(steps):
            t = time.perf_counter()
            step()
            step_times.append(time.perf_counter() - t)
    finally:
        restore()
    return timer, step_times


def _category(label):
    if label.startswith("kernel:conv2d_bias_relu_max_pool2d"):
        return "conv blocks, whole (numba: im2col+GEMM+pool per chunk)"
    if label.startswith("kernel:"):
        return {"im2col": "im2col", "col2im": "col2im"}.get(label[7:], "pooling kernels")
    if label.startswith(("Conv2dFn.", "LinearFn.", "ConvReLUMaxPool2dFn.")):
        return "conv/linear: GEMM + layout + bias"
    if label.startswith("optimizer"):
        return "optimizer step (Adam)"
    return "elementwise & loss Functions"


def report(backend, batch, timer, step_times, gemm_seconds, what="training step"):
    steps = len(step_times)
    step = float(np.mean(step_times))
    print(f"{what}: backend={backend}  batch={batch}  steps={steps}  "
          f"step: mean {step * 1e3:.1f} ms, min {min(step_times) * 1e3:.1f} ms  "
          f"({batch / step:.0f} images/s)")
    print()
    print(f"{'phase (exclusive)':<56}{'ms/step':>9}{'share':>8}{'calls/step':>12}")
    rows = sorted(timer.total.items(), key=lambda kv: -kv[1])
    timed = 0.0
    for label, seconds in rows:
        per_step = seconds / steps
        timed += per_step
        print(f"{label:<56}{per_step * 1e3:>9.2f}{per_step / step:>8.1%}{timer.calls[label] / steps:>12.0f}")
    rest = step - timed
    print(f"{'Python & autograd overhead (rest)':<56}{rest * 1e3:>9.2f}{rest / step:>8.1%}")
    print()
    cats = collections.defaultdict(float)
    for label, seconds in rows:
        cats[_category(label)] += seconds / steps
    cats["Python & autograd overhead (rest)"] = rest
    print(f"{'category':<56}{'ms/step':>9}{'share':>8}")
    for name, per_step in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"{name:<56}{per_step * 1e3:>9.2f}{per_step / step:>8.1%}")
    print(f"{'  the GEMMs alone (replayed with @)':<56}{gemm_seconds * 1e3:>9.2f}{gemm_seconds / step:>8.1%}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default=os.environ.get("MINICNN_BACKEND", "auto"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inference", action="store_true",
                    help="profile a forward pass in eval mode under no_grad instead")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                    help="adam (lr 1e-3, as bench_protocol.py) or the older plain SGD update")
    ap.add_argument("--no-fuse", action="store_true",
                    help="run Conv2d, ReLU and MaxPool2d one by one (the model without mc.fuse)")
    args = ap.parse_args(argv)
    # choose the backend before minicnn is imported, so that only its kernel
    # module loads (the numba module tunes the process when it is imported)
    os.environ["MINICNN_BACKEND"] = args.backend
    import minicnn as mc
    backend = mc.get_backend()
    timer, step_times = profile(backend, args.batch, args.steps, args.inference,
                                optimizer=args.optimizer, fuse=not args.no_fuse)
    report(backend, args.batch, timer, step_times,
           gemm_alone(args.batch, repeats=5, inference=args.inference),
           "inference" if args.inference else "training step")


if __name__ == "__main__":
    main()
