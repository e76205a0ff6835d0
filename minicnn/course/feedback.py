"""Checks that name the mistake: probe inputs chosen so that the usual wrong answers differ.

A check that says "differs by 3.2e-01" tells a student *that* they are wrong; these say *how*.
Each ``check_*`` function below runs the student's function on a few probe inputs, compares
with the right answer and, when they differ, with the answers of the common mistakes (each a
small function here, written the wrong way on purpose). The probes are chosen so that every
mistake gives different numbers:

===========================  ==========================================================================
exercise                     mistakes told apart
===========================  ==========================================================================
softmax (00)                 max-subtraction forgotten (overflow), one maximum for the whole array,
                             the sum without ``keepdims`` (divided along the wrong axis), columns
                             normalised instead of rows
conv2d forward (02)          the kernel flipped (a true convolution), padding on one side only, all the
                             padding on one side, the bias left out, the padding ignored
conv2d input gradient (02)   the kernel not rotated (or rotated twice), flipped along one axis only,
                             its channel axes not swapped, grad_out padded by ``padding`` instead of
                             k - 1 - padding, or on one side only
1x1 convolution (02)         x reshaped without moving the channel axis first (images and channels
                             mixed), the product reshaped without moving its axes back
col2im, conv backward (02)   overlapping windows overwritten or averaged instead of summed, padding
                             cut off one side only, the stride ignored
max pooling backward (03)    the last maximum of a tie instead of the first, every tied maximum,
                             the gradient shared by the window (average pooling's backward), copied to
                             all four, windows read column by column
batch norm, eval (05)        eps outside the square root, the variance used as a standard deviation,
                             the batch's statistics instead of the running ones, gamma and beta swapped
running statistics (05)      biased variance (1/m instead of 1/(m-1)), momentum's two conventions
                             (PyTorch mixes in ``momentum`` of the batch; Keras keeps ``momentum`` of
                             the old value), the per-image variance averaged
Adam (06)                    no bias correction, only one of the two corrected, eps inside the square
                             root, the two betas swapped
===========================  ==========================================================================

Each function returns None when the answer is right, else one message naming the likely mistake
(never the expected numbers: a message that gave them would be the answer). A check cell reads::

    mistake = feedback.check_softmax_rows(softmax_rows)
    assert mistake is None, mistake

The reference answers come from the library, computed *outside* the student's call; during the
student's call the library's own version is :func:`~minicnn.course.forbid.forbidden`.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import functional as F
from .. import nn, optim
from ..autograd.tensor import tensor
from ..kernels import numpy_ref
from .forbid import ANSWERS, ForbiddenCall, forbidden


# -----------------------------------------------------------------------------
# The machinery: run the student's function on the probes, then compare
# -----------------------------------------------------------------------------
class Raised:
    """What a probe gave when the function raised instead of returning: the error, kept to report."""

    def __init__(self, error):
        self.error = error

    def __str__(self):
        return f"{type(self.error).__name__}: {self.error}"


def run_student(fn, probes, library_names, what=None):
    """``fn(*args)`` for every probe (a fresh copy of the arguments each time), with the library's
    answer forbidden. Returns ``(outputs, None)`` — a :class:`Raised` where a probe raised — or
    ``(None, message)`` when the library's answer was called. NotImplementedError (the stub)
    propagates, so an unfinished exercise fails as the stub says."""
    outputs = []
    # np.errstate: an overflow is no error of its own here; the diagnosis names its cause
    with forbidden(library_names, namespaces=[getattr(fn, "__globals__", {})]), np.errstate(all="ignore"):
        for args in probes:
            try:
                outputs.append(fn(*copy.deepcopy(args)))
            except NotImplementedError:
                raise
            except ForbiddenCall as e:
                return None, str(e)
            except Exception as e:                 # the student's error: a mistake may explain it
                outputs.append(Raised(e))
    return outputs, None


def answers_of(fn, probes):
    """What ``fn`` gives on each probe, a :class:`Raised` where it raises."""
    out = []
    for args in probes:
        try:
            out.append(fn(*copy.deepcopy(args)))
        except Exception as e:
            out.append(Raised(e))
    return out


def same(got, want, atol):
    """Whether ``got`` equals ``want`` (arrays, or tuples/lists of arrays), NaNs in the same places;
    two probes that both raised are the same."""
    if isinstance(got, Raised) or isinstance(want, Raised):
        return isinstance(got, Raised) and isinstance(want, Raised)
    if isinstance(want, (tuple, list)):
        return (isinstance(got, (tuple, list)) and len(got) == len(want)
                and all(same(g, w, atol) for g, w in zip(got, want)))
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    want = np.asarray(want, dtype=np.float64)
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=0, atol=atol, equal_nan=True))


def largest_difference(got, want):
    if isinstance(want, (tuple, list)):
        return max(largest_difference(g, w) for g, w in zip(got, want))
    with np.errstate(invalid="ignore"):
        d = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    return float(np.nanmax(d)) if d.size and not np.all(np.isnan(d)) else float("nan")


def shape_of(x):
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(shape_of(v) for v in x) + ")"
    return str(np.shape(x))


def diagnose(fn, what, probes, reference, mistakes, library_names, atol=1e-10, describe=repr):
    """The verdict on ``fn``: None if right on every probe, else a message naming the mistake.

    Args:
        fn: the student's function.
        what: how to name it in a message (``"softmax_rows"``).
        probes: a list of argument tuples.
        reference: the right answer, ``reference(*args)``.
        mistakes: ``[(what the mistake is, its answer as a function of the same arguments)]``.
        library_names: the library functions refused during the student's call.
        describe: how to name a probe in a message (its shapes, never its expected answer).
    """
    got, error = run_student(fn, probes, library_names, what)
    if error:
        return error
    wants = [reference(*copy.deepcopy(args)) for args in probes]
    if all(same(g, w, atol) for g, w in zip(got, wants)):
        return None
    with np.errstate(all="ignore"):                 # a mistake's answer may overflow: that is the point
        for description, wrong in mistakes:
            answers = answers_of(wrong, probes)
            if not all(isinstance(a, Raised) for a in answers) and all(same(g, a, atol) for g, a in zip(got, answers)):
                return f"{what} is not right; it looks like {description}"
    for args, g in zip(probes, got):
        if isinstance(g, Raised):
            return f"{what} raised {g} for {describe(args)}"
    for args, g, w in zip(probes, got, wants):
        if shape_of(g) != shape_of(w) and not isinstance(w, (tuple, list)):
            return f"{what} should return an array of shape {np.shape(w)} for {describe(args)}, got {shape_of(g)}"
    bad = next(i for i, (g, w) in enumerate(zip(got, wants)) if not same(g, w, atol))
    return (f"{what} is not right for {describe(probes[bad])}: off by up to "
            f"{largest_difference(got[bad], wants[bad]):.2e} (none of the usual mistakes matches; "
            "print your intermediate results on a small input)")


def shapes(args):
    return "inputs of shapes " + ", ".join(str(np.shape(a)) for a in args if isinstance(a, np.ndarray))


# -----------------------------------------------------------------------------
# 00 — softmax
# -----------------------------------------------------------------------------
def softmax_reference(z):
    return F.softmax(tensor(z, dtype="float64"), dim=1).numpy()


def softmax_literal(z):
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_global_max(z):
    e = np.exp(z - z.max())
    return e / e.sum(axis=1, keepdims=True)


def softmax_sum_without_keepdims(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1)


def softmax_over_columns(z):
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def check_softmax_rows(softmax_rows):
    """Probes: ordinary logits (square, so that a sum without keepdims still broadcasts), logits of
    +-1000 (overflow), and two rows of very different scale (one maximum for all rows underflows)."""
    rng = np.random.default_rng(0)
    probes = [(rng.standard_normal((5, 5)) * 3,), (rng.standard_normal((6, 6)),), (np.array([[1000.0, 0.0, -1000.0]]),),
              (np.array([[1000.0, 999.0, 998.0], [0.0, -1.0, -2.0], [500.0, 0.0, -500.0]]),)]
    mistakes = [
        ("the maximum is not subtracted from each row first: exp(1000) overflows to inf, and inf / inf is nan",
         softmax_literal),
        ("one maximum for the whole array is subtracted instead of each row's own: a row far below it "
         "underflows to 0 / 0", softmax_global_max),
        ("the row sums lost their axis (sum without keepdims=True), so each column is divided by "
         "another row's sum", softmax_sum_without_keepdims),
        ("the normalisation runs down the columns (axis=0) instead of along each row", softmax_over_columns),
    ]
    return diagnose(softmax_rows, "softmax_rows", probes, softmax_reference, mistakes,
                    ANSWERS["00_tour"][2], atol=1e-12, describe=lambda a: f"logits of shape {a[0].shape}")


# -----------------------------------------------------------------------------
# 02 — convolution: the 1x1 convolution, and col2im (the backward of im2col)
# -----------------------------------------------------------------------------
def conv_reference(x, w):
    return F.conv2d(tensor(x, dtype="float64"), tensor(w, dtype="float64")).numpy()


def conv1x1_channels_not_moved(x, w):
    """x.reshape(C, -1) straight away: the batch and channel axes get mixed."""
    N, C, H, W = x.shape
    return (w.reshape(w.shape[0], C) @ x.reshape(C, -1)).reshape(-1, N, H, W).transpose(1, 0, 2, 3)


def conv1x1_output_not_moved(x, w):
    """The product (C_out, N*H*W) reshaped to (N, C_out, H, W) without moving its axes back."""
    N, C, H, W = x.shape
    return (w.reshape(w.shape[0], C) @ x.transpose(1, 0, 2, 3).reshape(C, -1)).reshape(N, -1, H, W)


def check_conv1x1(conv1x1):
    """Probes: two batches, channel counts that differ (so a reshape that mixes axes shows)."""
    rng = np.random.default_rng(1)
    probes = [(rng.standard_normal((3, 4, 5, 6)), rng.standard_normal((4, 4, 1, 1))),
              (rng.standard_normal((2, 5, 3, 4)), rng.standard_normal((3, 5, 1, 1)))]
    mistakes = [("x is reshaped to (C, N*H*W) without moving the channel axis to the front first, "
                 "which mixes the images and the channels", conv1x1_channels_not_moved),
                ("the product, of shape (C_out, N*H*W), is reshaped to (N, C_out, H, W) without moving "
                 "its axes back (reshape to (C_out, N, H, W), then transpose)", conv1x1_output_not_moved)]
    return diagnose(conv1x1, "conv1x1", probes, conv_reference, mistakes, ANSWERS["02_convolution"][3],
                    describe=lambda a: f"x of shape {a[0].shape} and w of shape {a[1].shape}")


def place_windows(cols, x_shape, kh, kw, stride=1, padding=0, combine="add", crop="both", use_stride=True):
    """col2im written several ways: ``combine`` add (right) / set / mean; ``crop`` both (right) /
    start (the padding cut at the bottom and right only); ``use_stride`` False ignores the stride."""
    N, C, H, W = x_shape
    oh = (H + 2 * padding - kh) // stride + 1
    ow = (W + 2 * padding - kw) // stride + 1
    step = stride if use_stride else 1
    out, count = np.zeros((N, C, H + 2 * padding, W + 2 * padding)), np.zeros((N, C, H + 2 * padding, W + 2 * padding))
    for n in range(N):
        for i in range(oh):
            for j in range(ow):
                window = cols[:, (n * oh + i) * ow + j].reshape(C, kh, kw)
                rows, columns = slice(i * step, i * step + kh), slice(j * step, j * step + kw)
                if combine == "set":
                    out[n, :, rows, columns] = window
                else:
                    out[n, :, rows, columns] += window
                count[n, :, rows, columns] += 1
    if combine == "mean":
        out = out / np.maximum(count, 1)
    start = padding if crop == "both" else 0
    return out[:, :, start: start + H, start: start + W]


def col2im_reference(cols, x_shape, kh, kw, stride, padding):
    return numpy_ref.col2im(cols, x_shape, kh, kw, (stride, stride), (padding, padding), (1, 1))


def check_col2im(col2im_loops):
    """Probes: overlapping windows (kernel 3, stride 1), padding (so a one-sided crop shows), and a
    stride of 2 with overlap (so ignoring the stride shows)."""
    rng = np.random.default_rng(2)
    probes = []
    for (N, C, H, W, k, s, p) in [(1, 1, 4, 4, 3, 1, 0), (2, 3, 7, 6, 3, 2, 1), (2, 2, 5, 5, 3, 1, 1)]:
        oh, ow = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        probes.append((rng.standard_normal((C * k * k, N * oh * ow)), (N, C, H, W), k, k, s, p))
    mistakes = [
        ("overlapping windows overwrite each other (= instead of +=): where windows overlap, every "
         "contribution must be added", lambda *a: place_windows(*a, combine="set")),
        ("overlapping contributions are averaged instead of summed: the gradient of a pixel read by "
         "several windows is the sum of their gradients", lambda *a: place_windows(*a, combine="mean")),
        ("the padding is cut off at the bottom and right only; it was added on all four sides",
         lambda *a: place_windows(*a, crop="start")),
        ("the stride is ignored: window (i, j) starts at row i * stride, column j * stride",
         lambda *a: place_windows(*a, use_stride=False)),
    ]
    return diagnose(col2im_loops, "col2im_loops", probes, col2im_reference, mistakes, ANSWERS["02_convolution"][1],
                    atol=1e-12, describe=lambda a: f"x_shape {a[1]}, kernel {a[2]}, stride {a[4]}, padding {a[5]}")


def correlate(x, w, pad_before, pad_after=None):
    """Valid cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C, k, k) after zero-padding
    (``pad_before`` rows/columns at the top/left, ``pad_after`` at the bottom/right): the reference
    loops the mistakes below are written with."""
    pad_after = pad_before if pad_after is None else pad_after
    xp = np.pad(x, ((0, 0), (0, 0), (pad_before, pad_after), (pad_before, pad_after)))
    k = w.shape[-1]
    oh, ow = xp.shape[2] - k + 1, xp.shape[3] - k + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = np.einsum("nchw,ochw->no", xp[:, :, i:i + k, j:j + k], w)
    return out


def conv_forward_reference(x, w, b, padding):
    return F.conv2d(tensor(x, dtype="float64"), tensor(w, dtype="float64"), tensor(b, dtype="float64"),
                    padding=padding).numpy()


def check_conv2d_direct(conv2d_direct):
    """Probes: a kernel that is not symmetric (so flipping it shows), padding 1 and 2 (so padding on
    one side shows), a non-zero bias, several channels in and out."""
    rng = np.random.default_rng(7)
    probes = [(rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), 1),
              (rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3), 2),
              (rng.standard_normal((1, 1, 4, 4)), rng.standard_normal((2, 1, 2, 2)), rng.standard_normal(2), 0)]
    bias = lambda b: np.asarray(b).reshape(1, -1, 1, 1)
    mistakes = [
        ("the kernel is flipped (rotated by 180°): that is the convolution of signal processing; "
         "conv2d in PyTorch and minicnn is a cross-correlation, window * w without any flip",
         lambda x, w, b, p: correlate(x, w[:, :, ::-1, ::-1], p) + bias(b)),
        ("the padding is on one side only (the top and left); np.pad needs (padding, padding) on each axis",
         lambda x, w, b, p: correlate(x, w, p, 0) + bias(b)),
        ("all the padding went to one side (2 * padding at the top and left, none at the bottom and "
         "right); pad padding rows and columns on every side", lambda x, w, b, p: correlate(x, w, 2 * p, 0) + bias(b)),
        ("the bias is left out: add b[o] to every position of output channel o",
         lambda x, w, b, p: correlate(x, w, p)),
        ("the padding is ignored", lambda x, w, b, p: correlate(x, w, 0) + bias(b)),
    ]
    return diagnose(conv2d_direct, "conv2d_direct", probes, conv_forward_reference, mistakes,
                    ANSWERS["02_convolution"][4], describe=lambda a: f"x of shape {a[0].shape}, w of shape "
                    f"{a[1].shape} and padding {a[3]}")


def conv_input_grad_reference(grad_out, w, padding):
    N, _, oh, ow = grad_out.shape
    k = w.shape[-1]
    x = tensor(np.zeros((N, w.shape[1], oh + k - 1 - 2 * padding, ow + k - 1 - 2 * padding)),
                  requires_grad=True, dtype="float64")
    F.conv2d(x, tensor(w, dtype="float64"), padding=padding).backward(tensor(grad_out, dtype="float64"))
    return x.grad.numpy()


def check_conv2d_input_grad(conv2d_input_grad):
    """Probes: kernels that are symmetric in neither direction (a missing flip, or a flip of one
    axis only, shows), as many channels in as out (so unswapped channel axes still multiply), and
    padding 0 and 1 (the full convolution pads by k - 1 - padding)."""
    rng = np.random.default_rng(8)
    probes = [(rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((3, 3, 3, 3)), 0),
              (rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 3, 3)), 1),
              (rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((2, 4, 2, 2)), 0)]

    def full(g, w, p, flip=(True, True), swap=True, before=None, after=None):
        k = w.shape[-1]
        w = w.transpose(1, 0, 2, 3) if swap else w
        w = w[:, :, ::-1 if flip[0] else 1, ::-1 if flip[1] else 1]
        return correlate(g, w, k - 1 - p if before is None else before, k - 1 - p if after is None else after)

    mistakes = [
        ("the kernel is not rotated by 180° (or rotated twice: once by hand, and again by a routine that "
         "flips, such as a true convolution); the input's gradient correlates with the rotated kernel",
         lambda g, w, p: full(g, w, p, flip=(False, False))),
        ("the kernel is flipped along one axis only; rotate it by 180°: w[..., ::-1, ::-1]",
         lambda g, w, p: full(g, w, p, flip=(True, False))),
        ("the kernel is flipped along one axis only; rotate it by 180°: w[..., ::-1, ::-1]",
         lambda g, w, p: full(g, w, p, flip=(False, True))),
        ("the two channel axes of the kernel are not swapped: the gradient of input channel c sums over "
         "the output channels o of w[o, c], so use w.transpose(1, 0, 2, 3)", lambda g, w, p: full(g, w, p, swap=False)),
        ("grad_out is padded by the forward pass's padding; the full correlation pads it by k - 1 - padding",
         lambda g, w, p: full(g, w, p, before=p, after=p)),
        ("grad_out is padded on one side only (k - 1 - padding at the top and left, none at the bottom "
         "and right)", lambda g, w, p: full(g, w, p, after=0)),
    ]
    return diagnose(conv2d_input_grad, "conv2d_input_grad", probes, conv_input_grad_reference, mistakes,
                    ANSWERS["02_convolution"][5], describe=lambda a: f"grad_out of shape {a[0].shape}, w of "
                    f"shape {a[1].shape} and padding {a[2]}")


# -----------------------------------------------------------------------------
# 03 — max pooling's backward
# -----------------------------------------------------------------------------
def max_pool_backward_reference(x, grad_out):
    xt = tensor(x, requires_grad=True, dtype="float64")
    F.max_pool2d(xt, 2).backward(tensor(grad_out, dtype="float64"))
    return xt.grad.numpy()


def windows_of(x):
    N, C, H, W = x.shape
    return x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)


def from_windows(w, shape):
    N, C, H, W = shape
    return w.reshape(N, C, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H, W)


def pool_backward_with(x, grad_out, pick):
    """Max pooling's backward where ``pick(windows)`` says which inputs (a 0/1 mask over the 4) get the gradient."""
    mask = pick(windows_of(x))
    return from_windows(mask * grad_out[..., None], x.shape)


def first_max(w):
    return np.eye(4)[w.argmax(axis=-1)]


def last_max(w):
    return np.eye(4)[3 - w[..., ::-1].argmax(axis=-1)]


def every_max(w):
    return (w == w.max(axis=-1, keepdims=True)).astype(float)


def first_max_column_by_column(w):
    order = [0, 2, 1, 3]                       # the window read down its columns
    return np.eye(4)[np.array(order)[w[..., order].argmax(axis=-1)]]


def check_max_pool_backward(max_pool_2x2_backward):
    """Probes: distinct values, then windows full of ties (the first maximum row by row; the last;
    every one; column by column all differ there)."""
    rng = np.random.default_rng(3)
    ties = np.array([[[[1, 1, 0, 2], [0, 0, 2, 0], [3, 1, 1, 3], [3, 0, 1, 0]]]], dtype=np.float64)
    probes = [(rng.standard_normal((2, 3, 6, 8)), rng.standard_normal((2, 3, 3, 4))),
              (ties, rng.standard_normal((1, 1, 2, 2)) + 2),
              (rng.integers(0, 3, (2, 2, 4, 6)).astype(np.float64), rng.standard_normal((2, 2, 2, 3)) + 2)]
    mistakes = [
        ("a tie goes to the last maximum; the first one, reading the window row by row, should win "
         "(np.argmax picks the first)", lambda x, g: pool_backward_with(x, g, last_max)),
        ("every tied maximum gets the gradient; only the first one should (the forward pass read one "
         "value only)", lambda x, g: pool_backward_with(x, g, every_max)),
        ("the window is read column by column when it breaks a tie; read it row by row",
         lambda x, g: pool_backward_with(x, g, first_max_column_by_column)),
        ("the gradient is shared equally by the window (that is average pooling's backward); it goes "
         "entirely to the input that won", lambda x, g: pool_backward_with(x, g, lambda w: np.full(w.shape, 0.25))),
        ("the gradient is copied to all four inputs of the window; only the winner gets it",
         lambda x, g: pool_backward_with(x, g, lambda w: np.ones(w.shape))),
    ]
    return diagnose(max_pool_2x2_backward, "max_pool_2x2_backward", probes, max_pool_backward_reference,
                    mistakes, ANSWERS["03_activations_pooling"][2], atol=1e-12, describe=shapes)


# -----------------------------------------------------------------------------
# 05 — batch norm: evaluation mode, running statistics
# -----------------------------------------------------------------------------
def per_channel(v):
    return np.asarray(v).reshape(1, -1, 1, 1)


def bn_eval_reference(x, mean, var, gamma, beta, eps):
    return F.batch_norm(tensor(x, dtype="float64"), tensor(mean, dtype="float64"),
                        tensor(var, dtype="float64"), tensor(gamma, dtype="float64"),
                        tensor(beta, dtype="float64"), training=False, eps=eps).numpy()


def bn_eval_with(x, mean, var, gamma, beta, eps, scale):
    return per_channel(gamma) * (x - per_channel(mean)) / scale(per_channel(var), eps) + per_channel(beta)


def check_batch_norm_eval(batch_norm_eval):
    """Probes: running statistics far from the batch's own, a large eps (0.5, so where it sits
    shows), and gamma != beta."""
    rng = np.random.default_rng(4)
    probes = []
    for eps in (0.5, 1e-5):
        x = rng.normal(size=(4, 3, 5, 5)) * 2 + 1
        probes.append((x, np.array([0.3, -1.0, 2.0]), np.array([0.25, 4.0, 0.5]), np.array([0.5, 1.5, -1.0]),
                       np.array([0.1, 0.0, 2.0]), eps))
    mistakes = [
        ("eps is added to the standard deviation; it belongs under the square root, sqrt(var + eps)",
         lambda *a: bn_eval_with(*a, lambda v, e: np.sqrt(v) + e)),
        ("x is divided by the variance; divide by the standard deviation sqrt(var + eps)",
         lambda *a: bn_eval_with(*a, lambda v, e: v + e)),
        ("eps is left out: divide by sqrt(var + eps)", lambda *a: bn_eval_with(*a, lambda v, e: np.sqrt(v))),
        ("the batch's own mean and variance are used; evaluation mode uses the running statistics",
         lambda x, m, v, g, b, e: bn_eval_with(x, x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), g, b, e,
                                               lambda v, e: np.sqrt(v + e))),
        ("gamma and beta are swapped: y = gamma * x_hat + beta",
         lambda x, m, v, g, b, e: bn_eval_with(x, m, v, b, g, e, lambda v, e: np.sqrt(v + e))),
    ]
    return diagnose(batch_norm_eval, "batch_norm_eval", probes,
                    bn_eval_reference, mistakes, ANSWERS["05_batchnorm_dropout"][1],
                    describe=lambda a: f"x of shape {a[0].shape} and eps = {a[5]}")


def running_stats_reference(batches, momentum):
    layer = nn.BatchNorm2d(batches[0].shape[1], momentum=momentum).double()
    for b in batches:
        layer(tensor(b, dtype="float64"))
    return layer.running_mean.numpy(), layer.running_var.numpy()


def running_stats_with(batches, momentum, variance, keep_new=False):
    C = batches[0].shape[1]
    mean, var = np.zeros(C), np.ones(C)
    for b in batches:
        new_mean, new_var = b.mean(axis=(0, 2, 3)), variance(b)
        if keep_new:                                   # Keras: momentum of the old value is kept
            mean, var = momentum * mean + (1 - momentum) * new_mean, momentum * var + (1 - momentum) * new_var
        else:
            mean, var = (1 - momentum) * mean + momentum * new_mean, (1 - momentum) * var + momentum * new_var
    return mean, var


def unbiased(b):
    m = b.shape[0] * b.shape[2] * b.shape[3]
    return b.var(axis=(0, 2, 3)) * m / (m - 1)


def check_running_stats(running_stats):
    """Probes: small batches (m = 2*2*3 = 12, so 1/m and 1/(m-1) differ by 9%), per-channel offsets,
    momentum 0.1 and 0.3 (0.5 could not tell the two conventions apart)."""
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(2, 3, 2, 3)) * [[[[1.0]], [[3.0]], [[0.5]]]] + [[[[2.0]], [[-1.0]], [[0.0]]]]
               for _ in range(4)]
    probes = [(batches, 0.1), (batches, 0.3)]
    mistakes = [
        ("the biased variance (dividing by m); the running variance uses the unbiased one, dividing by m - 1",
         lambda b, mo: running_stats_with(b, mo, lambda x: x.var(axis=(0, 2, 3)))),
        ("momentum weighs the old value (Keras's convention); in PyTorch and minicnn it weighs the new "
         "batch: new = (1 - momentum) * old + momentum * batch", lambda b, mo: running_stats_with(b, mo, unbiased, True)),
        ("the biased variance (1/m instead of 1/(m - 1)), and momentum weighing the old value instead of the batch",
         lambda b, mo: running_stats_with(b, mo, lambda x: x.var(axis=(0, 2, 3)), True)),
        ("each image's variance is averaged; the variance is over all N*H*W values of a channel at once",
         lambda b, mo: running_stats_with(b, mo, lambda x: (x.var(axis=(2, 3), ddof=1)).mean(axis=0))),
    ]
    return diagnose(running_stats, "running_stats", probes, running_stats_reference, mistakes,
                    ANSWERS["05_batchnorm_dropout"][2], atol=1e-12,
                    describe=lambda a: f"{len(a[0])} batches of shape {a[0][0].shape} and momentum {a[1]}")


# -----------------------------------------------------------------------------
# 06 — an Adam step
# -----------------------------------------------------------------------------
def adam_reference(w0, grads, lr, betas, eps):
    w = nn.Parameter(tensor(np.array(w0, dtype=np.float64), dtype="float64"))
    adam = optim.Adam([w], lr=lr, betas=betas, eps=eps)
    path = []
    for g in grads:
        adam.zero_grad()
        (tensor(g, dtype="float64") * w).sum().backward()     # the gradient of sum(g * w) is g
        adam.step()
        path.append(w.numpy().copy())
    return path


def adam_with(w0, grads, lr, betas, eps, correct_m=True, correct_v=True, eps_inside=False):
    w = np.array(w0, dtype=np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    path = []
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t) if correct_m else m
        v_hat = v / (1 - betas[1] ** t) if correct_v else v
        w = w - lr * m_hat / (np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps)
        path.append(w.copy())
    return path


def check_adam_path(adam_path):
    """Probes: gradients of very different scales and two settings of eps (1e-8, and 1e-3, where
    its place shows), betas far from each other."""
    rng = np.random.default_rng(6)
    grads = [rng.standard_normal(4) * s for s in (1e-3, 1.0, 10.0, 0.1, 3.0)]
    probes = [(np.ones(4), grads, 0.1, (0.8, 0.99), 1e-8), (np.ones(4), grads, 0.05, (0.5, 0.9), 1e-3)]
    mistakes = [
        ("the bias correction is missing: m and v start at 0, so divide them by (1 - beta1**t) and "
         "(1 - beta2**t)", lambda *a: adam_with(*a, correct_m=False, correct_v=False)),
        ("only the second moment is bias-corrected; m needs its correction (1 - beta1**t) too",
         lambda *a: adam_with(*a, correct_m=False)),
        ("only the first moment is bias-corrected; v needs its correction (1 - beta2**t) too",
         lambda *a: adam_with(*a, correct_v=False)),
        ("eps is inside the square root; Adam adds it to sqrt(v_hat)", lambda *a: adam_with(*a, eps_inside=True)),
        ("the two betas are swapped: beta1 averages the gradient, beta2 its square",
         lambda w0, g, lr, b, e: adam_with(w0, g, lr, (b[1], b[0]), e)),
    ]
    return diagnose(adam_path, "adam_path", probes, adam_reference, mistakes,
                    ANSWERS["06_optimizers_schedules"][1], atol=1e-12,
                    describe=lambda a: f"{len(a[1])} steps with lr={a[2]}, betas={a[3]}, eps={a[4]}")
