"""The kernel contract: every kernel a backend may provide, declared once.

A backend's kernel module (``numpy_ref``, ``numba_cpu``, ``cupy_gpu``,
``simulated_device``) is a set of functions with the names and parameters
below. There are two kinds:

* **required** — every backend provides it; the layers call it
  unconditionally (``current.kernels.im2col(...)``).
* **optional** — a *fast path*: a backend may provide it because it can do
  the same work faster than the layers' own composition of required kernels
  and array operations. A backend that lacks it gets the declared
  ``default``: either a function that works on any array module (``matmul``:
  ``a @ b``), or ``None``, which says "not provided: the caller composes it"
  — and the caller asks ``current.kernels.provides(name)`` before using it.

``numpy_ref`` implements every kernel here, required and optional: for the
optional ones its version *is* the simple composition, the specification each
fast path is tested against (tests/test_kernel_contract.py).

:func:`kernel_table` turns a module into the table the layers read as
``current.kernels``; :func:`missing_kernels` is the completeness check
``minicnn.backend.set_backend`` runs once per switch. Like the rest of
``kernels/`` this module knows nothing of tensors: arrays in, arrays out.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass


def _matmul_default(a, b):
    """``a @ b``: the array module's own product (NumPy's, CuPy's)."""
    return a @ b


@dataclass(frozen=True)
class Kernel:
    """One declared kernel: what it is called, what it takes, what it means."""

    name: str
    parameters: tuple      # parameter names, in order (a backend may add more, with defaults)
    returns: str
    meaning: str
    required: bool = True
    default: object = None  # optional kernels only: what a backend without it gets

    @property
    def signature(self):
        return f"{self.name}({', '.join(self.parameters)}) -> {self.returns}"


def _required(name, parameters, returns, meaning):
    return Kernel(name, tuple(parameters.split(", ")), returns, meaning)


def _optional(name, parameters, returns, meaning, default=None):
    return Kernel(name, tuple(parameters.split(", ")), returns, meaning, required=False, default=default)


#: Every kernel, in the order numpy_ref defines them. ``stride``, ``padding``
#: and ``dilation`` are (vertical, horizontal) pairs of ints; sizes are ints.
KERNELS = (
    # -- convolution as a matrix product ----------------------------------------------------
    _required("im2col", "x, kh, kw, stride, padding, dilation", "cols (C*kh*kw, N*oh*ow)",
              "cols[(c, i, j), (n, oy, ox)] = x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]"),
    _required("col2im", "cols, x_shape, kh, kw, stride, padding, dilation", "dx (N, C, H, W)",
              "the adjoint of im2col: every column entry added back to the pixel it was read from"),
    _required("depthwise_conv2d_forward", "x, w, stride, padding, dilation", "y (N, C, oh, ow)",
              "y[n, c, oy, ox] = sum_ij w[c, 0, i, j] * x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw] "
              "(groups = C, one filter per channel; no im2col)"),
    _required("depthwise_conv2d_backward", "gy, x, w, stride, padding, dilation, need_dx",
              "(dx or None, dw)", "the gradients of depthwise_conv2d_forward"),
    # -- pooling ------------------------------------------------------------------------------
    _required("max_pool2d_forward", "x, kh, kw, stride, padding", "(y, argmax) (N, C, oh, ow)",
              "y = max of each window (padding is -inf); argmax = winning tap i*kw + j, the first on ties"),
    _required("max_pool2d_backward", "gy, argmax, x_shape, kh, kw, stride, padding", "dx (N, C, H, W)",
              "each gy to its window's winning input; overlapping windows add up"),
    _required("bias_relu_max_pool2d_forward", "y, bias, kh, kw, stride", "(out, argmax) (N, C, oh, ow)",
              "out = max_pool2d(relu(y + bias)) of a conv output y (C, N, H, W); argmax -1 where relu clipped"),
    _required("bias_relu_max_pool2d_backward", "gout, argmax, y_shape, kh, kw, stride", "dy (C, N, H, W)",
              "each gout to its window's winner, nothing where argmax == -1"),
    _required("avg_pool2d_forward", "x, kh, kw, stride, padding, count_include_pad", "y (N, C, oh, ow)",
              "y = mean of each window (the zero padding counts if count_include_pad)"),
    _required("avg_pool2d_backward", "gy, x_shape, kh, kw, stride, padding, count_include_pad",
              "dx (N, C, H, W)", "each input of a window receives gy / (window size); overlaps add up"),
    # -- odds and ends ------------------------------------------------------------------------
    _required("scatter_add", "dst, index, values", "None",
              "dst[index] += values in place, an index given twice adding twice (indexing's backward)"),
    _required("erf", "x", "y", "the error function, elementwise (the exact GELU)"),
    _required("qgemm_u8s8", "w_q, cols, x_zero_point", "acc (M, L) int32",
              "acc = w_q (M, K) int8 @ (cols (K, L) uint8 - x_zero_point), exactly (int8 inference)"),
    # -- optional fast paths --------------------------------------------------------------------
    _optional("matmul", "a, b", "a @ b",
              "the layers' matrix products (2-D, or stacks of 2-D)", default=_matmul_default),
    _optional("adam_step_", "w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, betas, eps, "
              "weight_decay, decoupled, step", "True, or False if it declined",
              "one Adam/AdamW update of w in place (optim.Adam.update_param's arithmetic); "
              "without it Adam composes the update from array operations"),
    _optional("conv2d_bias_relu_max_pool2d_forward", "x, w, bias, stride, padding, dilation, "
              "pool_kh, pool_kw, pool_stride", "(out, argmax) (N, Cout, ph, pw)",
              "the whole layer max_pool2d(relu(conv2d(x, w) + bias)), no groups; without it "
              "ConvReLUMaxPool2dFn composes im2col -> matmul -> bias_relu_max_pool2d_forward"),
    _optional("conv2d_forward", "x, w, bias, stride, padding, dilation", "y (N, Cout, oh, ow)",
              "conv2d(x, w) + bias, no groups, as Conv2dFn computes it; without it ChunkedConv2dFn "
              "composes im2col -> matmul over the whole batch"),
    _optional("conv2d_backward", "gy, x, w, stride, padding, dilation, need_dx", "(dx or None, dw, db)",
              "the gradients of conv2d_forward (it keeps x, not the columns)"),
    _optional("batch_norm_train_forward", "x, weight, bias, eps",
              "(y, xhat, mean, var, inv_std): y like x, the rest (C,) but xhat",
              "training-mode batch norm over every axis but 1 of x (N, C) or (N, C, H, W): "
              "mean, biased var, xhat = (x - mean) * inv_std, y = weight * xhat + bias (None: 1, 0); "
              "without it BatchNormFn composes array operations"),
    _optional("batch_norm_train_backward", "gy, xhat, inv_std, weight, need_dx",
              "(dx or None, dweight, dbias)",
              "the gradients of batch_norm_train_forward: dbias = sum(gy), dweight = sum(gy * xhat), "
              "dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)) with g = gy * weight"),
    _optional("batch_norm_eval_forward", "x, weight, bias, running_mean, running_var, eps, need_xhat",
              "(y, xhat or None, inv_std)",
              "evaluation-mode batch norm with the running statistics: inv_std = 1/sqrt(running_var + eps), "
              "xhat = (x - running_mean) * inv_std, y = weight * xhat + bias; without it BatchNormFn "
              "composes array operations"),
    _optional("relu_forward", "x, need_mask", "(y, passes or None)",
              "y = max(x, 0) (NaN stays NaN), passes = not (x <= 0); without it ReLUFn composes "
              "array operations"),
    _optional("relu_backward", "gy, passes", "dx", "dx = gy * passes"),
    _optional("conv2d_bias_relu_max_pool2d_backward", "gout, argmax, x, w, stride, padding, dilation, "
              "pool_kh, pool_kw, pool_stride, need_dx", "(dx or None, dw, db)",
              "the gradients of the whole layer, given the forward's argmax"),
)

BY_NAME = {k.name: k for k in KERNELS}
REQUIRED = tuple(k.name for k in KERNELS if k.required)
OPTIONAL = tuple(k.name for k in KERNELS if not k.required)


# -----------------------------------------------------------------------------
# Checking a kernel module against the declaration
# -----------------------------------------------------------------------------
def parameters_of(function):
    """The parameter names of ``function``, and which of them have defaults.

    ``inspect.signature`` follows ``functools.wraps`` to the wrapped function,
    so the simulator's wrappers report numpy_ref's parameters.
    """
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params], {p.name for p in params if p.default is not p.empty}


def signature_problem(kernel, names, with_default):
    """``None`` if a function with parameters ``names`` fits ``kernel``'s declaration,
    else one line saying what differs. The declared names must come first, in order;
    a backend may add parameters of its own after them, each with a default."""
    declared = list(kernel.parameters)
    if names[:len(declared)] != declared:
        return f"{kernel.name}: expected parameters ({', '.join(declared)}), got ({', '.join(names)})"
    extra = [n for n in names[len(declared):] if n not in with_default]
    if extra:
        return f"{kernel.name}: extra parameters {extra} need defaults (callers pass only the declared ones)"
    return None


def missing_kernels(module):
    """``(missing, mismatched)``: the required kernels ``module`` lacks, and one line per
    kernel it has (required or optional) whose parameters differ from the declaration."""
    missing, mismatched = [], []
    for kernel in KERNELS:
        function = getattr(module, kernel.name, None)
        if function is None:
            if kernel.required:
                missing.append(kernel.name)
            continue
        problem = signature_problem(kernel, *parameters_of(function))
        if problem:
            mismatched.append(problem)
    return missing, mismatched


# -----------------------------------------------------------------------------
# The table the layers call: current.kernels
# -----------------------------------------------------------------------------
class KernelTable:
    """One backend's kernels, every declared name present: ``table.im2col(...)``.

    Built by :func:`kernel_table`. An optional kernel the backend does not
    provide holds its declared default (a generic function, or ``None``);
    :meth:`provides` says which ones the backend's own module supplied.
    """

    def __init__(self, module, fast_paths=True):
        self.NAME = module.NAME                 # "numpy", "numba", "cupy", "simulator"
        self.__name__ = module.__name__         # where the kernels come from
        self.module = module
        provided = set()
        for kernel in KERNELS:
            function = getattr(module, kernel.name, None)   # the one place a kernel is looked up
            if function is not None and (kernel.required or fast_paths):
                provided.add(kernel.name)
            else:
                function = kernel.default
            setattr(self, kernel.name, function)
        self.provided = frozenset(provided)

    def provides(self, name):
        """Whether this backend's module supplies kernel ``name`` (always, for a required one)."""
        if name not in BY_NAME:
            raise KeyError(f"no kernel named {name!r} is declared in kernels/contract.py; "
                           f"declared: {', '.join(BY_NAME)}")
        return name in self.provided

    def __repr__(self):
        return f"<kernels of backend {self.NAME!r} from {self.__name__}>"


def kernel_table(module, fast_paths=True):
    """The :class:`KernelTable` of ``module``. ``fast_paths=False`` leaves every optional
    kernel to its default even where the module has one (the numpy backend: numpy_ref's
    optional kernels are the specification of what the callers compose anyway)."""
    return KernelTable(module, fast_paths)
