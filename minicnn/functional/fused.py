"""Fused layers: Conv2d -> ReLU -> MaxPool2d as one Function, the same numbers in fewer passes.

Read :class:`~minicnn.functional.conv.Conv2dFn`, ``relu`` and ``max_pool2d``
first: this module computes exactly what the three compute one after the
other, and ``tests/test_fused.py`` proves it (equal outputs, equal
gradients, on every backend). What fusing changes is how often the largest
array in the network — the convolution's output — travels through memory.

Unfused, in the reference CNN's first block at batch 64 (y: 64x32x26x26
floats, 5.5 MB)::

    forward                                   backward
    y  = W @ cols            (Cout, N, oh, ow) dpool = route gy to each argmax  write 5.5 MB
    y += b                   read+write y      dr    = dpool * (r > 0)          read 2x, write
    yt = y in (N, C, oh, ow) read y, write     dY    = dr in (Cout, N, ...)     read, write
    r  = relu(yt)            read, write       dW    = dY @ cols^T ...
    p  = max_pool(r)         read r, write p/4

Fused (this module), with the kernels ``bias_relu_max_pool2d_forward`` /
``_backward`` (numpy_ref has the readable versions)::

    y   = W @ cols                         (Cout, N, oh, ow), channel first
    p   = relu(max over window(y + b))     one read of y; p written in (N, C, ph, pw)
    ...
    dY  = gy routed to each window's winner, 0 where relu clipped  one write, channel first
    dW  = dY @ cols^T,  dcols = W^T @ dY,  db = dY summed          (Conv2dFn's backward)

Why the numbers are the same: relu is monotone, so relu(max(a, b)) ==
max(relu(a), relu(b)) exactly, and the gradient reaches the same input: the
window's first maximum when it is positive, nothing when relu clipped it
(where the unfused pool's winner would be multiplied by relu's derivative 0).

Nothing calls it behind your back: ``mc.fuse(model)`` (``minicnn/nn/fusion.py``)
returns a model whose Conv2d -> ReLU -> MaxPool2d runs are
``nn.ConvReLUMaxPool2d`` modules, which call :func:`conv2d_relu_max_pool2d`;
``train.fit`` applies it unless ``fuse=False``. You can also call it directly.
"""
from __future__ import annotations

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .conv import check_conv2d_args, conv2d_product, conv2d_product_backward
from .helpers import check_window_fits, conv_output_shape, pair, shape_str


class ConvReLUMaxPool2dFn(Function):
    """p = max_pool2d(relu(conv2d(x, w) + b)), windows ``pool_size`` every ``pool_stride``.

    Shapes: x (N, C, H, W), w (Cout, C/G, kh, kw), b (Cout,) or None,
    y (Cout, N, oh, ow) inside, p (N, Cout, ph, pw) out.

    Forward: the convolution's im2col + matrix product (``conv2d_product``, the
    one Conv2dFn uses), then one fused kernel for bias, pooling and relu (it
    keeps ``argmax``: the winning tap per window, -1 where relu clipped it).

    Backward: the fused kernel's adjoint turns gp into dY (Cout, N, oh, ow),
    and ``conv2d_product_backward`` (Conv2dFn's too) takes it from there (dW,
    dx via col2im, db).

    The numba backend does all of this in one kernel per direction,
    ``conv2d_bias_relu_max_pool2d_forward`` / ``_backward``: the same steps a few
    images at a time, so that each chunk's columns and conv output stay in the
    core's cache; it keeps x instead of the columns and recomputes a chunk's
    columns in the backward (no groups; with groups, the steps above).
    ``tests/test_fused.py`` proves it equal to the steps above.
    """

    def forward(self, x, w, b, stride, padding, dilation, groups, pool_size, pool_stride):
        self.pool = (*pool_size, pool_stride)
        self.conv = (stride, padding, dilation)
        whole_layer = current.kernels.conv2d_bias_relu_max_pool2d_forward  # None: not provided (kernels/contract.py)
        self.whole_layer = whole_layer is not None and groups == 1
        if self.whole_layer:
            # numba: the same numbers, a few images at a time, in cache (kernels/numba_cpu.py);
            # the backward recomputes each chunk's columns from x instead of keeping them
            p, argmax = whole_layer(x, w, b, *self.conv, *self.pool)
            self.save_for_backward(x, w, argmax)
            return p                                                      # (N, Cout, ph, pw)
        y, cols, w_g = conv2d_product(x, w, stride, padding, dilation, groups)   # (Cout, N, oh, ow)
        self.x_shape, self.w_shape, self.y_shape = x.shape, w.shape, y.shape
        p, argmax = current.kernels.bias_relu_max_pool2d_forward(y, b, *self.pool)
        self.save_for_backward(cols, w_g, argmax)
        return p                                                          # (N, Cout, ph, pw)

    def backward(self, gp):
        needs = self.needs_input_grad
        if self.whole_layer:
            x, w, argmax = self.saved_tensors
            dx, dw, db = current.kernels.conv2d_bias_relu_max_pool2d_backward(
                gp, argmax, x, w, *self.conv, *self.pool, need_dx=needs[0])
            return dx, (dw if needs[1] else None), (db if len(needs) > 2 and needs[2] else None)
        cols, w_g, argmax = self.saved_tensors                           # argmax (N, Cout, ph, pw)
        dy = current.kernels.bias_relu_max_pool2d_backward(gp, argmax, self.y_shape,
                                                           *self.pool)    # (Cout, N, oh, ow)
        return conv2d_product_backward(dy, cols, w_g, self.x_shape, self.w_shape, *self.conv, needs)


def conv2d_relu_max_pool2d(x: Tensor, weight: Tensor, bias: Tensor = None, stride=1, padding=0,
                           dilation=1, groups=1, pool_kernel_size=2, pool_stride=None) -> Tensor:
    """``max_pool2d(relu(conv2d(x, weight, bias, ...)), pool_kernel_size, pool_stride)`` in one Function.

    The convolution takes every option of :func:`conv2d`; the pooling has no
    padding (``pool_stride`` defaults to the window size, as in max_pool2d).
    """
    op = "conv2d_relu_max_pool2d"
    stride, padding, dilation = check_conv2d_args(op, x, weight, bias, stride, padding,
                                                  dilation, groups)
    k = pair(pool_kernel_size, f"{op}: pool_kernel_size", 1)
    s = k if pool_stride is None else pair(pool_stride, f"{op}: pool_stride", 1)
    oh, ow = conv_output_shape(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    try:
        check_window_fits(op, (oh, ow), k, (0, 0), (1, 1))
    except ValueError as e:
        raise ValueError(f"{e} (the convolution's output is {shape_str((oh, ow))})") from None
    return ConvReLUMaxPool2dFn.apply(x, weight, bias, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups, pool_size=k, pool_stride=s)


class ChunkedConv2dFn(Function):
    """y = conv2d(x, w) + b (no groups), computed a few images at a time where the backend can.

    The numbers of :class:`~minicnn.functional.conv.Conv2dFn` (read it first). The
    difference is where the arrays live: Conv2dFn makes the whole batch's columns
    (C*kh*kw, N*oh*ow) — 9x the input for a 3x3 conv, tens of MB at batch 64 —
    keeps them for the backward, and makes as large a column gradient there.
    numba's ``conv2d_forward`` / ``conv2d_backward`` kernels take a chunk of images
    at a time (the chunk's columns fit a core's cache), keep x instead of the
    columns, and recompute a chunk's columns in the backward. Elsewhere this
    Function composes exactly what Conv2dFn does (``conv2d_product``).
    """

    def forward(self, x, w, b, stride, padding, dilation):
        self.conv = (stride, padding, dilation)
        whole_layer = current.kernels.conv2d_forward          # None: not provided (kernels/contract.py)
        self.whole_layer = whole_layer is not None
        if self.whole_layer:
            self.save_for_backward(x, w)
            return whole_layer(x, w, b, stride, padding, dilation)        # (N, Cout, oh, ow)
        y, cols, w_g = conv2d_product(x, w, stride, padding, dilation, 1)   # (Cout, N, oh, ow)
        if b is not None:
            y += b.reshape(-1, 1, 1, 1)
        self.save_for_backward(cols, w_g)
        self.x_shape, self.w_shape = x.shape, w.shape
        return current.xp.ascontiguousarray(y.transpose(1, 0, 2, 3))

    def backward(self, gy):
        needs = self.needs_input_grad
        if self.whole_layer:
            x, w = self.saved_tensors
            dx, dw, db = current.kernels.conv2d_backward(gy, x, w, *self.conv, need_dx=needs[0])
            return dx, (dw if needs[1] else None), (db if len(needs) > 2 and needs[2] else None)
        cols, w_g = self.saved_tensors
        return conv2d_product_backward(gy.transpose(1, 0, 2, 3), cols, w_g, self.x_shape, self.w_shape,
                                       *self.conv, needs)


def chunked_conv2d(x: Tensor, weight: Tensor, bias: Tensor = None, stride=1, padding=0,
                   dilation=1) -> Tensor:
    """``conv2d(x, weight, bias, stride, padding, dilation)`` (no groups), a chunk of images at a
    time where the backend has the kernels: the same numbers, less memory traffic."""
    stride, padding, dilation = check_conv2d_args("chunked_conv2d", x, weight, bias, stride, padding,
                                                  dilation, 1)
    return ChunkedConv2dFn.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
