"""2-D convolution through im2col, with stride, padding, dilation and groups.

Read :func:`conv2d_simple` first: ten lines, no groups, autograd does the
backward. :class:`Conv2dFn` below is the real one, with its own backward; the
tests prove the two equal.
"""
from __future__ import annotations

import numbers

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import check_4d, check_window_fits, conv_output_shape, matmul, pair, shape_str


class Conv2dFn(Function):
    """y = conv2d(x, w) + b, computed as a matrix product over im2col columns.

    Shapes: x (N, C, H, W), w (Cout, C/G, kh, kw), b (Cout,), y (N, Cout, oh, ow),
    with G groups: input channels and filters split into G independent halves,
    thirds, ... (G = C is a depthwise convolution).

    Forward, per group g (K = C/G*kh*kw, L = N*oh*ow)::

        cols = im2col(x)                       # (G, K, L)
        Y_g  = W_g @ cols_g                    # (Cout/G, K) @ (K, L) -> (Cout/G, L)

    Backward (matrix calculus of Y = W @ cols)::

        dW_g    = dY_g @ cols_g^T              # (Cout/G, L) @ (L, K), computed as (cols_g @ dY_g^T)^T
        dcols_g = W_g^T @ dY_g                 # (K, Cout/G) @ (Cout/G, L)
        dx      = col2im(dcols)                # scatter-add back onto the image
        db      = dY summed over N, oh, ow
    """

    def forward(self, x, w, b, stride, padding, dilation, groups):
        y, cols, w_g = conv2d_product(x, w, stride, padding, dilation, groups)   # (Cout, N, oh, ow)
        if b is not None:
            y += b.reshape(-1, 1, 1, 1)
        self.save_for_backward(cols, w_g)
        self.x_shape, self.w_shape = x.shape, w.shape
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        return current.xp.ascontiguousarray(y.transpose(1, 0, 2, 3))    # (N, Cout, oh, ow)

    def backward(self, gy):
        cols, w_g = self.saved_tensors
        # (N, Cout, oh, ow) -> (Cout, N, oh, ow): the layout of the matrix product's output
        return conv2d_product_backward(gy.transpose(1, 0, 2, 3), cols, w_g, self.x_shape, self.w_shape,
                                       self.stride, self.padding, self.dilation, self.needs_input_grad)

    def backward_graph(self, gy):
        """dx, dw, db as Functions of Tensors (``create_graph=True``): see the three below."""
        x, w, b = self.inputs
        options = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        dx = (ConvTranspose2dFn.apply(gy, w, x_shape=self.x_shape, **options)
              if self.needs_input_grad[0] else None)
        dw = (Conv2dWeightGradFn.apply(x, gy, w_shape=self.w_shape, **options)
              if self.needs_input_grad[1] else None)
        db = gy.sum(axis=(0, 2, 3)) if self.needs_input_grad[2] else None
        return dx, dw, db


# The matrix-product core of a convolution, shared by Conv2dFn above and the fused
# ConvReLUMaxPool2dFn (functional/fused.py), which differ only in what happens to y
# between the product and the next layer. Plain functions on backend arrays.
def conv2d_product(x, w, stride, padding, dilation, groups):
    """im2col and the matrix product, no bias: returns ``(y, cols, w_g)``.

    y (Cout, N, oh, ow) channel first, the product's own layout; cols (G, K, L)
    and w_g (G, Cout/G, K) are what :func:`conv2d_product_backward` needs.
    """
    N, C, H, W = x.shape
    Cout, Cg, kh, kw = w.shape
    G = groups
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    cols = current.kernels.im2col(x, kh, kw, stride, padding, dilation)   # (C*kh*kw, N*oh*ow)
    cols = cols.reshape(G, Cg * kh * kw, N * oh * ow)                    # (G, K, L)
    w_g = w.reshape(G, Cout // G, Cg * kh * kw)                          # (G, Cout/G, K)
    y = matmul(w_g, cols).reshape(Cout, N, oh, ow)                       # (Cout, N, oh, ow)
    return y, cols, w_g


def conv2d_product_backward(gy_cn, cols, w_g, x_shape, w_shape, stride, padding, dilation,
                            needs_input_grad):
    """``(dx, dw, db)`` from dY in channel-first order, gy_cn (Cout, N, oh, ow).

    ``needs_input_grad`` is the Function's (x, w[, b]) flags; a gradient nobody
    needs is returned as None and never computed.
    """
    G = cols.shape[0]
    Cout = w_shape[0]
    gy_g = gy_cn.reshape(G, Cout // G, -1)                               # (G, Cout/G, L)
    dx = dw = db = None
    if needs_input_grad[0]:
        dx = conv2d_input_grad(gy_g, w_g, x_shape, w_shape, stride, padding, dilation)
    if needs_input_grad[1]:
        dw = conv2d_weight_grad(gy_g, cols, w_shape)
    if len(needs_input_grad) > 2 and needs_input_grad[2]:
        # db = dY summed over N, oh, ow, written as dY (Cout, L) @ ones (L, 1): the same
        # sum, and BLAS's matrix-vector product is 5x faster than ndarray.sum here
        ones = current.xp.ones((gy_g.shape[-1], 1), dtype=gy_g.dtype)
        db = matmul(gy_g, current.xp.broadcast_to(ones, (G,) + ones.shape)).reshape(Cout)
    return dx, dw, db


def conv2d_input_grad(gy_g, w_g, x_shape, w_shape, stride, padding, dilation):
    """dx = col2im(W_g^T @ dY_g): the gradient of a convolution w.r.t. its input.

    gy_g (G, Cout/G, L), w_g (G, Cout/G, K) -> dx of ``x_shape``. As a
    function of dY this is the *transposed convolution* of dY with W.
    """
    G = w_g.shape[0]
    _, Cg, kh, kw = w_shape
    dcols = matmul(w_g.transpose(0, 2, 1), gy_g)                         # (G, K, L)
    return current.kernels.col2im(dcols.reshape(G * Cg * kh * kw, -1), x_shape,
                                  kh, kw, stride, padding, dilation)


def conv2d_weight_grad(gy_g, cols, w_shape):
    """dW = dY_g @ cols_g^T: the gradient of a convolution w.r.t. its weight.

    gy_g (G, Cout/G, L), cols (G, K, L) -> dw of ``w_shape``: a convolution of
    the input with the output gradient.
    """
    # dW = dY @ cols^T, computed as (cols @ dY^T)^T: the same product, and
    # OpenBLAS runs it 15-40 % faster in this orientation (long inner dimension L)
    dw_t = matmul(cols, gy_g.transpose(0, 2, 1))                         # (G, K, Cout/G)
    return dw_t.transpose(0, 2, 1).reshape(w_shape)                      # (G, Cout/G, K)


# -- gradients of gradients (create_graph=True) ------------------------------------
# A convolution y = conv(x, w) is bilinear: linear in x for a fixed w, and in w
# for a fixed x. Its two gradients are bilinear too, and their gradients are again
# one of the three maps below, so the three Functions differentiate each other:
#
#   Conv2dFn            y  = conv(x, w)
#   ConvTranspose2dFn   dx = convT(gy, w)     d/d gy <h, dx> = conv(h, w),    d/dw = wgrad(h, gy)
#   Conv2dWeightGradFn  dw = wgrad(x, gy)     d/dx  <k, dw> = convT(gy, k),   d/d gy = conv(x, k)
def _groups_view(gy, groups):
    """(N, Cout, oh, ow) -> (G, Cout/G, N*oh*ow), the matrix product's layout."""
    return gy.transpose(1, 0, 2, 3).reshape(groups, gy.shape[1] // groups, -1)


class ConvTranspose2dFn(Function):
    """dx = convT(gy, w): a convolution's input gradient, as a Function of (gy, w).

    gy (N, Cout, oh, ow), w (Cout, C/G, kh, kw) -> (N, C, H, W) = ``x_shape``:
    ``col2im(W_g^T @ gy_g)``, the *transposed convolution*. Linear in gy and in w:

        d gy = conv2d(h, w)          (h: the gradient arriving, x's shape)
        d w  = wgrad(h, gy)          (the weight gradient of conv(h, .) at gy)
    """

    def forward(self, gy, w, x_shape, stride, padding, dilation, groups):
        self.x_shape, self.w_shape = x_shape, w.shape
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.save_for_backward(gy, w)
        w_g = w.reshape(groups, w.shape[0] // groups, -1)
        return conv2d_input_grad(_groups_view(gy, groups), w_g, x_shape, w.shape, stride, padding, dilation)

    def backward(self, h):
        gy, w = self.saved_tensors
        y, cols, _ = conv2d_product(h, w, self.stride, self.padding, self.dilation, self.groups)
        dgy = current.xp.ascontiguousarray(y.transpose(1, 0, 2, 3)) if self.needs_input_grad[0] else None
        dw = conv2d_weight_grad(_groups_view(gy, self.groups), cols, w.shape) if self.needs_input_grad[1] else None
        return dgy, dw

    def backward_graph(self, h):
        gy, w = self.inputs
        options = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        dgy = Conv2dFn.apply(h, w, None, **options) if self.needs_input_grad[0] else None
        dw = Conv2dWeightGradFn.apply(h, gy, w_shape=self.w_shape, **options) if self.needs_input_grad[1] else None
        return dgy, dw


class Conv2dWeightGradFn(Function):
    """dw = wgrad(x, gy): a convolution's weight gradient, as a Function of (x, gy).

    x (N, C, H, W), gy (N, Cout, oh, ow) -> (Cout, C/G, kh, kw) = ``w_shape``:
    ``gy_g @ im2col(x)_g^T``. Linear in x and in gy:

        d x  = convT(gy, k)          (k: the gradient arriving, w's shape)
        d gy = conv2d(x, k)
    """

    def forward(self, x, gy, w_shape, stride, padding, dilation, groups):
        self.x_shape, self.w_shape = x.shape, w_shape
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        Cout, Cg, kh, kw = w_shape
        cols = current.kernels.im2col(x, kh, kw, stride, padding, dilation).reshape(groups, Cg * kh * kw, -1)
        self.save_for_backward(gy, cols)
        return conv2d_weight_grad(_groups_view(gy, groups), cols, w_shape)

    def backward(self, k):
        gy, cols = self.saved_tensors
        G, (N, Cout, oh, ow) = self.groups, gy.shape
        k_g = k.reshape(G, Cout // G, -1)                                # (G, Cout/G, K)
        dx = (conv2d_input_grad(_groups_view(gy, G), k_g, self.x_shape, self.w_shape, self.stride,
                                self.padding, self.dilation) if self.needs_input_grad[0] else None)
        dgy = None
        if self.needs_input_grad[1]:
            y = matmul(k_g, cols).reshape(Cout, N, oh, ow)                # conv(x, k), channel first
            dgy = current.xp.ascontiguousarray(y.transpose(1, 0, 2, 3))
        return dx, dgy

    def backward_graph(self, k):
        x, gy = self.inputs
        options = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        dx = (ConvTranspose2dFn.apply(gy, k, x_shape=self.x_shape, **options)
              if self.needs_input_grad[0] else None)
        dgy = Conv2dFn.apply(x, k, None, **options) if self.needs_input_grad[1] else None
        return dx, dgy


def conv2d(x: Tensor, weight: Tensor, bias: Tensor = None, stride=1, padding=0,
           dilation=1, groups=1) -> Tensor:
    """2-D convolution (PyTorch's ``F.conv2d``; really cross-correlation, as everywhere).

    x: (N, C, H, W); weight: (Cout, C/groups, kh, kw); bias: (Cout,) or None.
    """
    stride, padding, dilation = check_conv2d_args("conv2d", x, weight, bias, stride, padding,
                                                  dilation, groups)
    return Conv2dFn.apply(x, weight, bias, stride=stride, padding=padding,
                        dilation=dilation, groups=groups)


def check_conv2d_args(op, x, weight, bias, stride, padding, dilation, groups):
    """Check a convolution's arguments; return (stride, padding, dilation) as pairs."""
    stride = pair(stride, f"{op}: stride", 1)
    padding = pair(padding, f"{op}: padding", 0)
    dilation = pair(dilation, f"{op}: dilation", 1)
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    check_4d(op, x)
    if weight.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D weight (Cout, Cin/groups, kh, kw), "
                         f"got shape {shape_str(weight.shape)}")
    N, C, H, W = x.shape
    Cout, Cg, kh, kw = weight.shape
    if C % groups or Cout % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels ({C}) "
                         f"and the output channels ({Cout})")
    if Cg * groups != C:
        raise ValueError(f"{op}: the input has {C} channels but the weight of shape "
                         f"{shape_str(weight.shape)} with groups={groups} expects "
                         f"{Cg * groups} (= {Cg} per group x {groups})")
    if bias is not None and tuple(bias.shape) != (Cout,):
        raise ValueError(f"{op}: expected a bias of shape ({Cout},), got {shape_str(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{op}: input is {x.dtype} but {name} is {t.dtype}; use one dtype")
    check_window_fits(op, (H, W), (kh, kw), padding, dilation)
    return stride, padding, dilation


def conv2d_simple(x: Tensor, weight: Tensor, bias: Tensor = None, stride=1, padding=0) -> Tensor:
    """The idea in ten lines: im2col, one matrix product, reshape (no groups, no dilation).

    Only the im2col step is a kernel call; the rest is ordinary tensor algebra,
    so autograd derives the backward by itself. Slower, but proves the point.
    """
    from .unfold import unfold
    N, C, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding)
    cols = unfold(x, (kh, kw), stride=stride, padding=padding)      # (C*kh*kw, N*oh*ow)
    y = weight.reshape(Cout, -1) @ cols                             # (Cout, N*oh*ow)
    if bias is not None:
        y = y + bias.reshape(Cout, 1)
    return y.reshape(Cout, N, oh, ow).permute(1, 0, 2, 3)
