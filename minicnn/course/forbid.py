"""Keep the library's answer out of a student's answer: while a check runs, the function the
exercise asks for refuses to be called from the student's code.

An exercise such as "write max pooling's backward" is pointless if the answer may be
``F.max_pool2d(...).backward()``. :func:`forbidden` is a context manager that, while it is
active, replaces every binding of the named library functions — the attribute in its module
(``minicnn.functional.max_pool2d``), every other module that imported it, and the notebook's
own namespace (``from minicnn.functional import max_pool2d as mp``) — with a *guard*. The
guard raises :class:`ForbiddenCall`, naming the function, instead of computing anything.
On leaving the block every binding gets its original back::

    with forbidden(["minicnn.functional.max_pool2d"], namespaces=[student_fn.__globals__]):
        got = student_fn(x, grad)           # calling F.max_pool2d in there raises ForbiddenCall

Two modes:

* ``only_from=None`` (what a check cell in a notebook uses, through
  :mod:`minicnn.course.feedback`): every call inside the block is refused, so the block
  holds the student's call and nothing else; the check computes its reference outside it.
* ``only_from="<student"`` (what ``minicnn course grade`` uses): the grader compiles the
  student's cells under a file name starting with ``<student``, and the guard refuses a call
  only when such code is on the call stack. The check itself may then call the library
  function for its reference while the block is active.

This is a classroom guard, not a sandbox: a determined student can always find another
route (the kernel table, a copy of the source). It stops the honest shortcut and says why.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import sys

# What each exercise asks the student to write, as the library names it: calling one of these
# from the student's code while the exercise is graded is refused. Keyed by notebook (file name
# without .ipynb) and exercise number. A name whose module is not installed (scipy, torch) is skipped.
ANSWERS = {
    "00_tour": {
        1: ["minicnn.optim.SGD.step", "minicnn.optim.Adam.step"],
        2: ["minicnn.functional.softmax", "minicnn.functional.log_softmax", "minicnn.nn.Softmax.forward",
            "scipy.special.softmax", "scipy.special.log_softmax"],
    },
    "01_autograd": {
        3: ["minicnn.functional.linear", "minicnn.nn.Linear.forward"],
    },
    "02_convolution": {
        1: ["minicnn.kernels.numpy_ref.col2im", "minicnn.functional.conv2d"],
        2: ["minicnn.kernels.numpy_ref.im2col", "minicnn.functional.unfold", "minicnn.functional.conv2d"],
        3: ["minicnn.functional.conv2d", "minicnn.kernels.numpy_ref.im2col", "minicnn.nn.Conv2d.forward"],
        4: ["minicnn.functional.conv2d", "minicnn.functional.conv2d_simple", "minicnn.nn.Conv2d.forward",
            "scipy.signal.correlate", "scipy.signal.correlate2d", "scipy.signal.convolve", "scipy.signal.convolve2d"],
        5: ["minicnn.functional.conv2d", "minicnn.functional.conv2d_simple", "minicnn.kernels.numpy_ref.col2im",
            "scipy.signal.correlate", "scipy.signal.correlate2d", "scipy.signal.convolve", "scipy.signal.convolve2d"],
    },
    "03_activations_pooling": {
        1: ["minicnn.functional.silu"],
        2: ["minicnn.functional.max_pool2d", "minicnn.kernels.numpy_ref.max_pool2d_backward",
            "minicnn.kernels.numpy_ref.max_pool2d_forward", "minicnn.nn.MaxPool2d.forward"],
    },
    "04_initialization": {
        1: ["minicnn.nn.init.kaiming_normal_", "minicnn.nn.init.kaiming_uniform_"],
    },
    "05_batchnorm_dropout": {
        1: ["minicnn.functional.batch_norm", "minicnn.nn.BatchNorm2d.forward"],
        2: ["minicnn.functional.batch_norm", "minicnn.nn.BatchNorm2d.forward"],
    },
    "06_optimizers_schedules": {
        1: ["minicnn.optim.Adam.step", "minicnn.optim.AdamW.step", "minicnn.kernels.numpy_ref.adam_step_"],
        2: ["minicnn.optim.SGD.step"],
    },
    "07_regularization": {
        1: ["minicnn.optim.SGD.step", "minicnn.optim.AdamW.step"],
    },
    "08_mnist_case_study": {
        1: ["minicnn.train.metrics.confusion_matrix"],
        2: ["minicnn.train.metrics.precision_recall_f1", "minicnn.train.metrics.confusion_matrix"],
        3: ["minicnn.train.metrics.top_k_accuracy"],
    },
    "09_backends_speed": {
        1: ["minicnn.kernels.numpy_ref.im2col"],
    },
    "12_pruning_distillation": {
        1: ["minicnn.nn.utils.prune.ln_structured"],
        2: ["minicnn.functional.distillation_loss"],
    },
    "13_quantization_deployment": {
        1: ["minicnn.functional.fake_quantize_per_tensor_affine", "minicnn.functional.fake_quantize_per_channel_affine"],
        2: ["minicnn.quant.quantize_multiplier"],
    },
    "14_adversarial_examples": {
        1: ["minicnn.attacks.fgsm"],
        2: ["minicnn.attacks.pgd"],
    },
    "15_interpretability": {
        1: ["minicnn.explain.integrated_gradients"],
        2: ["minicnn.explain.grad_cam"],
    },
    "16_hyperparameter_tuning": {
        1: ["minicnn.tune.lr_find"],
    },
}


INHERITED = object()          # marks a method the class did not define itself (see forbidden)


class ForbiddenCall(RuntimeError):
    """The student's code called the library function that the exercise asks them to write."""


def resolve(dotted):
    """``"minicnn.nn.BatchNorm2d.forward"`` -> ``(owner, "forward", the function)``; None when
    its module is not installed or the name does not exist."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:-1]:
                owner = getattr(owner, name)
            return owner, parts[-1], inspect.getattr_static(owner, parts[-1])
        except AttributeError:
            return None
    return None


def student_code_on_stack(prefix) -> bool:
    """Whether a frame of the current call stack runs code compiled from a file named ``prefix...``."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_filename.startswith(prefix):
            return True
        frame = frame.f_back
    return False


def guard(dotted, original, only_from):
    """A stand-in for ``original`` that refuses to run (from the student's code, with ``only_from``)."""
    @functools.wraps(original)
    def refuse(*args, **kwargs):
        if only_from is None or student_code_on_stack(only_from):
            raise ForbiddenCall(f"{dotted} is what this exercise asks you to write: compute it yourself "
                                "instead of calling the library")
        return original(*args, **kwargs)
    return refuse


@contextlib.contextmanager
def forbidden(names, namespaces=(), only_from=None):
    """Within the block, calling any function of ``names`` (dotted paths) raises :class:`ForbiddenCall`.

    Args:
        names: dotted paths such as ``"minicnn.functional.softmax"`` or ``"minicnn.optim.Adam.step"``.
        namespaces: extra dicts to patch, such as the notebook's globals (``fn.__globals__``).
        only_from: None to refuse every call; a file-name prefix (``"<student"``) to refuse only
            calls with the student's code on the call stack.
    """
    replaced = []                                     # (where, name, original): how to put it back

    def put(where, name, value):
        """Bind ``name`` in ``where`` (a dict, or a module or class) to ``value``, remembering the old one."""
        if isinstance(where, dict):
            replaced.append((where, name, where[name]))
            where[name] = value
        else:                                         # an inherited method is put back by deleting ours
            replaced.append((where, name, vars(where)[name] if name in vars(where) else INHERITED))
            setattr(where, name, value)

    try:
        for dotted in names:
            found = resolve(dotted)
            if found is None or not callable(found[2]):
                continue
            owner, attr, original = found
            stand_in = guard(dotted, original, only_from)
            put(owner, attr, stand_in)
            # every other name bound to the same function: `from minicnn.functional import softmax`
            modules = [vars(m) for m in list(sys.modules.values()) if hasattr(m, "__dict__")]
            for space in modules + list(namespaces):
                for name, value in list(space.items()):
                    if value is original:
                        with contextlib.suppress(TypeError):        # a read-only mapping
                            put(space, name, stand_in)
        yield
    finally:
        for where, name, original in reversed(replaced):
            if isinstance(where, dict):
                where[name] = original
            elif original is INHERITED:
                delattr(where, name)
            else:
                setattr(where, name, original)
