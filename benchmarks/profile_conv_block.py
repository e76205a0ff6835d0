"""Where the time of numba's whole-layer kernel goes: its pieces timed one by one.

    python benchmarks/profile_conv_block.py                # the reference CNN's two blocks, batch 128
    python benchmarks/profile_conv_block.py --batch 64

``kernels/numba_cpu.py`` runs a Conv2d -> ReLU -> MaxPool2d block as one
parallel loop over chunks of images (``conv2d_bias_relu_max_pool2d_forward`` /
``_backward``); inside a compiled loop nothing can be timed from Python. This
script calls the same building blocks the kernel calls (``_im2col_row``,
``np.dot``, ``_pool_one``, ``_unpool_one``, ``_col2im_channel``) one piece at a
time, chunk after chunk **on one thread**, with the kernel's own chunking and
one set of working arrays that stays in cache (as the kernel's do), and
reports milliseconds per batch for each piece (best of ``--repeats``), the
GEMMs' GFLOP/s, and the whole kernel on one thread and on all of Numba's
threads for comparison. The pieces' sum on one thread is the work; the
kernel's time on two threads shows how much of it the second core takes over.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("MINICNN_BACKEND", "numba")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)

    import numba
    from numba import njit

    from minicnn.kernels import numba_cpu as K

    @njit
    def im2col_piece(x, cols, n0, kh, kw):
        images = x[n0:n0 + cols.shape[1]]
        for row in range(cols.shape[0]):
            K._im2col_row(images, cols[row], row, kh, kw, 1, 1, 1, 1)

    @njit
    def product_piece(a, b, out):                  # out = a @ b, all (rows, L) 2-D views
        np.dot(a, b, out)

    @njit
    def pool_piece(y, b, out, argmax, n0, minus_infinity):
        for co in range(y.shape[0]):
            for n in range(y.shape[1]):
                K._pool_one(y[co, n], b[co], out[n0 + n, co], argmax[n0 + n, co], 2, 2, 2, 2,
                            minus_infinity)

    @njit
    def unpool_piece(gout, argmax, dy, n0):
        for co in range(dy.shape[0]):
            for n in range(dy.shape[1]):
                K._unpool_one(gout[n0 + n, co], argmax[n0 + n, co], dy[co, n], 2, 2, 2, 2)

    @njit
    def col2im_piece(dcols, dx, n0, kh, kw):
        images = dx[n0:n0 + dcols.shape[1]]
        images[:] = 0
        for c in range(images.shape[1]):
            K._col2im_channel(dcols, images, c, kh, kw, 1, 1, 1, 1)

    def best(fn, repeats):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) * 1e3

    rng = np.random.default_rng(0)
    N = args.batch
    print(f"numba's whole-layer kernel, piece by piece; batch {N}, float32, "
          f"{numba.get_num_threads()} Numba threads; ms per batch, best of {args.repeats}")
    for name, C, H, Cout in (("conv1 (1 -> 32, 28x28)", 1, 28, 32), ("conv2 (32 -> 64, 13x13)", 32, 13, 64)):
        kh = kw = 3
        oh = ow = H - 2
        Kd = C * kh * kw
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((Cout, C, kh, kw)) / np.sqrt(Kd)).astype(np.float32)
        b = rng.standard_normal(Cout).astype(np.float32)
        w2 = w.reshape(Cout, Kd)
        p, argmax = K.conv2d_bias_relu_max_pool2d_forward(x, w, b, 1, 0, 1, 2, 2, 2)
        gout = rng.standard_normal(p.shape).astype(np.float32)
        need_dx = C > 1                             # the first layer's input needs no gradient
        pieces = {}
        for direction, floats_per_image in (("forward", (Kd + Cout) * oh * ow),
                                            ("backward", (2 * Kd + Cout) * oh * ow)):
            chunks = K.chunk_count(N, floats_per_image, 4)
            bounds = [(k * N // chunks, (k + 1) * N // chunks) for k in range(chunks)]
            # one set of working arrays, reused by every chunk as the kernel's thread reuses
            # its cache: each piece then finds them in L2, as it does inside the kernel
            largest = max(n1 - n0 for n0, n1 in bounds)
            flat = [np.empty(rows * largest * oh * ow, np.float32) for rows in (Kd, Cout, Kd)]
            dw = np.empty((Cout, Kd), np.float32)
            work = []
            for n0, n1 in bounds:
                m, L = n1 - n0, (n1 - n0) * oh * ow
                cols, y, dcols = (f[:rows * L].reshape(rows, m, oh, ow) for f, rows in zip(flat, (Kd, Cout, Kd)))
                im2col_piece(x, cols, n0, kh, kw)
                work.append((n0, m, L, cols, y, dcols, dw))
            dx = np.empty_like(x)
            with K._OneBlasThread():
                if direction == "forward":
                    pieces["im2col"] = best(lambda: [im2col_piece(x, c, n0, kh, kw) for n0, _, _, c, *_ in work], args.repeats)
                    pieces["GEMM  y = W cols"] = best(lambda: [product_piece(w2, c.reshape(Kd, L), y.reshape(Cout, L))
                                                               for _, _, L, c, y, *_ in work], args.repeats)
                    pieces["bias + max pool + relu"] = best(lambda: [pool_piece(y, b, p, argmax, n0, np.float32(-np.inf))
                                                                     for n0, _, _, _, y, *_ in work], args.repeats)
                else:
                    pieces["unpool (dY)"] = best(lambda: [unpool_piece(gout, argmax, y, n0) for n0, _, _, _, y, *_ in work],
                                                 args.repeats)
                    pieces["im2col again"] = best(lambda: [im2col_piece(x, c, n0, kh, kw) for n0, _, _, c, *_ in work],
                                                  args.repeats)
                    pieces["GEMM  dW = dY cols^T"] = best(lambda: [product_piece(y.reshape(Cout, L), c.reshape(Kd, L).T, dw)
                                                                   for _, _, L, c, y, _, dw in work], args.repeats)
                    if need_dx:
                        pieces["GEMM  dcols = W^T dY"] = best(lambda: [product_piece(w2.T, y.reshape(Cout, L), d.reshape(Kd, L))
                                                                       for _, _, L, _, y, d, _ in work], args.repeats)
                        pieces["col2im"] = best(lambda: [col2im_piece(d, dx, n0, kh, kw) for n0, _, _, _, _, d, _ in work],
                                                args.repeats)
        flops = 2 * Cout * Kd * N * oh * ow                 # one product
        print(f"\n{name}:")
        for piece, ms in pieces.items():
            rate = f"  {flops / ms / 1e6:6.1f} GFLOP/s" if piece.startswith("GEMM") else ""
            print(f"  {piece:<26}{ms:8.2f} ms (one thread){rate}")
        print(f"  {'sum of the pieces':<26}{sum(pieces.values()):8.2f} ms (one thread)")
        for threads in (1, numba.get_num_threads()):
            before = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                fwd = best(lambda: K.conv2d_bias_relu_max_pool2d_forward(x, w, b, 1, 0, 1, 2, 2, 2), args.repeats)
                bwd = best(lambda: K.conv2d_bias_relu_max_pool2d_backward(gout, argmax, x, w, 1, 0, 1, 2, 2, 2,
                                                                          need_dx=need_dx), args.repeats)
            finally:
                numba.set_num_threads(before)
            print(f"  whole kernel, {threads} thread(s): forward {fwd:.2f} ms, backward {bwd:.2f} ms, "
                  f"together {fwd + bwd:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
