"""What the functional layer checks and computes in more than one place, written once.

* :func:`pair` — ``3`` or ``(3, 2)`` for a kernel size, stride, padding or
  dilation, and :func:`conv_output_shape` — the output size of a sliding
  window (convolution and pooling alike): both ``kernels/geometry.py``'s,
  the one place the window geometry is written;
* :func:`check_4d` and :func:`check_window_fits` — the input checks of every
  windowed operation (conv2d, unfold, the poolings, the fused layer);
* :func:`stable_sigmoid` and :func:`stable_softplus` — array math that never
  overflows, shared by the activations and the losses;
* :func:`matmul` — the layers' matrix products (the numba backend runs them on
  its own threads).

Checks live here and in the functional wrappers only: they run once, on the
user's arguments, before any Function or kernel sees them. The kernels
(``minicnn/kernels``) check only what their loops need (dtype, rank, layout).
"""
from __future__ import annotations

from ..backend import current
from ..kernels.geometry import conv_output_shape, pair
from ..autograd.tensor import shape_str

__all__ = ["pair", "conv_output_shape", "check_4d", "check_window_fits", "shape_str",
           "stable_sigmoid", "stable_softplus", "matmul"]


def check_4d(op, x):
    """Windowed operations take a batch of images: (N, C, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D input (N, C, H, W), got shape {shape_str(x.shape)}")


def check_window_fits(op, hw, k, padding, dilation):
    """The (dilated) window must fit inside the padded input along both axes."""
    for axis, n, kk, p, d in zip(("height", "width"), hw, k, padding, dilation):
        span = d * (kk - 1) + 1
        if span > n + 2 * p:
            raise ValueError(f"{op}: the kernel spans {span} pixels along the {axis} "
                             f"(kernel {kk}, dilation {d}) but the padded input has only "
                             f"{n + 2 * p} ({n} + 2*{p} padding)")


def stable_sigmoid(x):
    """``1 / (1 + e^-x)`` on an array, stable: ``e^-|x|`` never overflows."""
    xp = current.xp
    z = xp.exp(-xp.abs(x))                       # in (0, 1]
    return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))


def stable_softplus(x):
    """ln(1 + e^x) on an array, stable (logaddexp)."""
    return current.xp.logaddexp(0, x)


def matmul(a, b):
    """``a @ b`` for the backend's arrays, by its ``matmul`` kernel.

    An optional kernel (kernels/contract.py): the numba backend has its own — the
    same BLAS product, called from Numba's threads (see kernels/numba_cpu.py for
    why); the others get the contract's default, ``a @ b``.
    """
    return current.kernels.matmul(a, b)
