"""Classification metrics, written out by hand in plain NumPy.

Every function accepts minicnn Tensors, NumPy (or CuPy) arrays or lists and
works on a host copy. The argument order is ``(pred, target)`` everywhere, as
in PyTorch's loss functions -- note that scikit-learn's order is the reverse,
``(y_true, y_pred)``.

Vocabulary, for one class c of a K-class problem ("positive" means "is c"):

* TP (true positives):  samples of class c predicted as c.
* FP (false positives): samples of another class predicted as c.
* FN (false negatives): samples of class c predicted as another class.
* TN (true negatives):  everything else.

From those counts::

    precision = TP / (TP + FP)     of the samples we called c, how many are c?
    recall    = TP / (TP + FN)     of the samples that are c, how many did we find?
    F1        = 2 * precision * recall / (precision + recall)   (harmonic mean)

A ratio whose denominator is zero (a class never predicted, or never present)
is defined here as 0, which is what scikit-learn returns by default (it also
warns). The ROC curve and its area are in the second half of the file.

    >>> import minicnn.train.metrics as M
    >>> cm = M.confusion_matrix(pred=[0, 1, 1], target=[0, 1, 0], num_classes=2)
    >>> cm.tolist()                     # rows: true class, columns: predicted class
    [[1, 1], [0, 1]]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import to_numpy

__all__ = [
    "accuracy", "top_k_accuracy", "confusion_matrix", "ClassificationScores",
    "precision_recall_f1", "classification_report", "roc_curve", "auc",
    "roc_curves_ovr", "roc_auc_ovr",
]


# ----------------------------------------------------------------------------
# Input checking: every metric goes through these, so errors read the same
# ----------------------------------------------------------------------------
def _labels(x, name: str, num_classes: int | None = None) -> np.ndarray:
    """Check that ``x`` is a 1-D vector of class indices and return it as int64."""
    a = to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of class indices (N,), got shape {a.shape}")
    if a.dtype.kind == "f":
        # float labels are accepted when they are whole numbers (e.g. a float32 Tensor of labels)
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise ValueError(f"{name} must hold whole-number class indices, "
                             f"got the value {a[bad][0].item()!r}")
    elif a.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} has a negative class index ({a.min()}); classes are 0..K-1")
    if num_classes is not None and a.size and a.max() >= num_classes:
        raise ValueError(f"{name} has class index {a.max()} but num_classes={num_classes} "
                         f"(expected indices 0..{num_classes - 1})")
    return a


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _same_length(a, b, name_a: str, name_b: str):
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} must have the same length, "
                         f"got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty: a metric needs at least one sample")


def _predicted_labels(pred, name="pred", num_classes=None) -> np.ndarray:
    """Class indices from either labels (N,) or per-class scores (N, K) (argmax)."""
    a = to_numpy(pred)
    if a.ndim == 2:
        if num_classes is not None and a.shape[1] != num_classes:
            raise ValueError(f"{name} has scores for {a.shape[1]} classes (shape {a.shape}) "
                             f"but num_classes={num_classes}")
        return a.argmax(axis=1).astype(np.int64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be class indices (N,) or scores/logits (N, K), got shape {a.shape}")
    return _labels(a, name, num_classes)


def _scores_2d(scores, name="scores") -> np.ndarray:
    a = to_numpy(scores).astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of per-class scores (N, K), got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


# ----------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------
def accuracy(logits_or_pred, target) -> float:
    """Fraction of samples whose predicted class equals the target class.

    ``logits_or_pred`` is either per-class scores (N, K) -- logits or
    probabilities, the prediction is their argmax -- or predicted class
    indices (N,). ``target`` holds the true class indices (N,).

        accuracy = (number of i with pred[i] == target[i]) / N
    """
    target = _labels(target, "target")
    pred = _predicted_labels(logits_or_pred, "logits_or_pred")
    _same_length(pred, target, "logits_or_pred", "target")
    return float(np.mean(pred == target))


def top_k_accuracy(scores, target, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    ``scores`` is (N, K) logits or probabilities, ``target`` (N,) class indices.
    ``k=1`` is ordinary accuracy. Equal scores are ranked by class index (the
    lower index first), as ``np.argsort(kind="stable")`` on the negated scores.
    """
    scores = _scores_2d(scores)
    n, num_classes = scores.shape
    target = _labels(target, "target", num_classes)
    _same_length(scores, target, "scores", "target")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise ValueError(f"k must be an integer in 1..{num_classes} (the number of classes), got {k!r}")
    top_k = np.argsort(-scores, axis=1, kind="stable")[:, :k]    # (N, k) best classes first
    hit = (top_k == target[:, None]).any(axis=1)                  # (N,) true class in the top k?
    return float(hit.mean())


# ----------------------------------------------------------------------------
# Confusion matrix and the scores computed from it
# ----------------------------------------------------------------------------
def confusion_matrix(pred, target, num_classes: int | None = None) -> np.ndarray:
    """Count matrix ``cm[true, predicted]`` of shape (K, K), dtype int64.

    Rows are true classes and columns predicted classes, as in scikit-learn:
    ``cm[i, j]`` is the number of samples of class i that were predicted as j.
    The diagonal holds the correct predictions; row i sums to the number of
    samples of class i (its *support*), column j to how often j was predicted.

    ``pred`` may be class indices (N,) or scores (N, K) (argmax is taken).
    ``num_classes`` defaults to (largest label seen) + 1, or to K for scores;
    pass it explicitly so a class that happens to be missing still gets a row.
    """
    pred_host = to_numpy(pred)
    if num_classes is None:
        target_arr = _labels(target, "target")
        pred_arr = _predicted_labels(pred_host, "pred")
        _same_length(pred_arr, target_arr, "pred", "target")
        num_classes = int(max(target_arr.max(), pred_arr.max())) + 1
        if pred_host.ndim == 2:                      # scores: one column per class
            num_classes = max(num_classes, pred_host.shape[1])
    num_classes = _check_num_classes(num_classes)
    target_arr = _labels(target, "target", num_classes)
    pred_arr = _predicted_labels(pred_host, "pred", num_classes)
    _same_length(pred_arr, target_arr, "pred", "target")
    # Each (true, predicted) pair gets one cell number, true * K + predicted;
    # counting cell numbers and reshaping gives the matrix in one pass.
    cells = target_arr * num_classes + pred_arr
    counts = np.bincount(cells, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(numerator, denominator) -> np.ndarray:
    """numerator / denominator elementwise, with 0/0 (or x/0) defined as 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


@dataclass(frozen=True)
class ClassificationScores:
    """Per-class precision, recall, F1 and support, with their averages.

    Per-class fields are arrays of shape (K,). ``macro_*`` is the plain mean
    over the K classes (every class counts the same); ``weighted_*`` weights
    each class by its support (its number of true samples). ``macro_f1`` is
    the mean of the per-class F1 scores, *not* the F1 of macro precision and
    macro recall (scikit-learn uses the same definition).
    """
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float


def precision_recall_f1(confusion) -> ClassificationScores:
    """Precision, recall and F1 for every class of a confusion matrix (rows = true).

    For class c, read off the matrix::

        TP = cm[c, c]                  (diagonal)
        FP = cm[:, c].sum() - TP       (column c: predicted as c, but not c)
        FN = cm[c, :].sum() - TP       (row c: truly c, but predicted otherwise)

        precision = TP / (TP + FP)     recall = TP / (TP + FN)
        F1 = 2 * precision * recall / (precision + recall)

    **0/0 is defined as 0**: a class that is never predicted gets precision 0,
    a class with no true samples gets recall 0, and F1 is 0 when precision
    and recall are both 0. Such classes still count in the macro averages
    (they pull them down; that is deliberate -- a missing class is a problem).
    """
    cm = to_numpy(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {cm.shape}")
    if cm.size == 0:
        raise ValueError("confusion is empty (K = 0)")
    if np.any(cm < 0):
        raise ValueError("confusion holds counts and cannot be negative")
    cm = cm.astype(np.float64)
    tp = np.diag(cm)                       # (K,)
    predicted_as = cm.sum(axis=0)          # (K,) column sums = TP + FP
    support = cm.sum(axis=1)               # (K,) row sums    = TP + FN
    precision = _safe_divide(tp, predicted_as)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = support.sum()
    weights = _safe_divide(support, total)
    return ClassificationScores(
        precision=precision, recall=recall, f1=f1, support=support.astype(np.int64),
        accuracy=float(_safe_divide(tp.sum(), total)),
        macro_precision=float(precision.mean()), macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        weighted_precision=float((weights * precision).sum()),
        weighted_recall=float((weights * recall).sum()),
        weighted_f1=float((weights * f1).sum()),
    )


def classification_report(pred, target, num_classes: int | None = None, class_names=None,
                          digits: int = 3) -> str:
    """A text table of per-class precision, recall, F1 and support, then the averages.

    ``pred`` may be class indices (N,) or scores (N, K). ``class_names`` is an
    optional list of K names (default: the class indices). Example, for
    ``pred=[0, 0, 0, 0, 1]``, ``target=[0, 0, 0, 1, 1]``, names cat and dog::

                      precision    recall        f1  support
                 cat      0.750     1.000     0.857        3
                 dog      1.000     0.500     0.667        2

            accuracy                          0.800        5
           macro avg      0.875     0.750     0.762        5
        weighted avg      0.850     0.800     0.781        5

    The accuracy row shows the accuracy in the f1 column, as scikit-learn does.
    """
    cm = confusion_matrix(pred, target, num_classes)
    k = cm.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} names but there are {k} classes")
    s = precision_recall_f1(cm)
    n = int(s.support.sum())
    width = max(12, *(len(name) for name in class_names))
    col = max(10, digits + 5)
    fmt = f"{{:{col}.{digits}f}}"

    def row(label, p, r, f, support):
        cells = [fmt.format(v) if v is not None else " " * col for v in (p, r, f)]
        return f"{label:>{width}} " + "".join(cells) + f"{support:>9}"

    lines = [" " * (width + 1) + "".join(h.rjust(col) for h in ("precision", "recall", "f1"))
             + "support".rjust(9)]
    for c in range(k):
        lines.append(row(class_names[c], s.precision[c], s.recall[c], s.f1[c], int(s.support[c])))
    lines.append("")
    lines.append(row("accuracy", None, None, s.accuracy, n))
    lines.append(row("macro avg", s.macro_precision, s.macro_recall, s.macro_f1, n))
    lines.append(row("weighted avg", s.weighted_precision, s.weighted_recall, s.weighted_f1, n))
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# ROC curve and AUC
# ----------------------------------------------------------------------------
def roc_curve(scores, positives):
    """Receiver operating characteristic of a binary scorer: (fpr, tpr, thresholds).

    ``scores`` (N,) are real numbers, higher meaning "more likely positive";
    ``positives`` (N,) says which samples really are positive (bool or 0/1).
    Calling every sample with ``score >= t`` positive gives, for a threshold t::

        TPR(t) = TP / P   (true-positive rate, recall:   found positives / all positives)
        FPR(t) = FP / N   (false-positive rate: false alarms / all negatives)

    Lowering t from +inf to the smallest score traces the curve from (0, 0) to
    (1, 1). The thresholds returned are ``+inf`` followed by the distinct
    scores in decreasing order; point i is the rate at ``score >= thresholds[i]``.

    Ties: samples with equal scores are on the same side of every threshold,
    so they enter the curve *together* -- one point per distinct score, and
    a diagonal segment when a tie mixes positives and negatives (that is what
    makes a scorer that gives everyone the same score have AUC 0.5).
    """
    s = to_numpy(scores)
    y = to_numpy(positives)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and positives must be 1-D (N,), got shapes {s.shape} and {y.shape}")
    _same_length(s, y, "scores", "positives")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contains NaN")
    if y.dtype.kind != "b":
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"positives must be bool or 0/1, got values {np.unique(y)[:5].tolist()}")
        y = y == 1
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_curve needs at least one positive and one negative sample, "
                         f"got {n_pos} positives and {n_neg} negatives")

    order = np.argsort(-s, kind="stable")      # highest score first
    s, y = s[order], y[order]
    tp = np.cumsum(y)                          # positives among the first i+1 samples
    fp = np.cumsum(~y)                         # negatives among the first i+1 samples
    # Keep only the last sample of each run of equal scores: a threshold can
    # not separate equal scores, so the curve moves past the whole tie at once.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp, fp, thresholds = tp[last_of_run], fp[last_of_run], s[last_of_run]
    # Start at (0, 0): with threshold +inf nothing is called positive.
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, thresholds]
    return fpr, tpr, thresholds


def auc(x, y) -> float:
    """Area under the curve through the points (x[i], y[i]), by the trapezoid rule.

        area = sum over i of (x[i+1] - x[i]) * (y[i] + y[i+1]) / 2

    ``x`` must be monotonic (increasing or decreasing; a decreasing x gives
    the same, positive, area). For an ROC curve, ``auc(fpr, tpr)`` is the
    probability that a random positive is scored above a random negative
    (ties counting one half): 1 is perfect, 0.5 is chance, 0 is exactly reversed.
    """
    x = to_numpy(x).astype(np.float64)
    y = to_numpy(y).astype(np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-D, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"auc needs at least 2 points, got {len(x)}")
    dx = np.diff(x)
    if np.all(dx <= 0):
        x, y, dx = x[::-1], y[::-1], -dx[::-1]
    elif not np.all(dx >= 0):
        raise ValueError("x must be monotonic (sorted increasing or decreasing)")
    return float(np.sum(dx * (y[:-1] + y[1:]) / 2))


def roc_curves_ovr(probs, target, num_classes: int | None = None) -> dict:
    """One-vs-rest ROC curves: {class c: (fpr, tpr, thresholds)}.

    For class c the scores are ``probs[:, c]`` and the positives are the
    samples with ``target == c``; every other class is "rest". ``probs`` is
    (N, K) class probabilities (softmax outputs); logits also work but rank
    samples differently than probabilities, so use probabilities to match
    other libraries. A class with no samples (or only samples) in ``target``
    has no ROC curve and is left out of the dict.
    """
    probs = _scores_2d(probs, "probs")
    k = probs.shape[1]
    if num_classes is not None and _check_num_classes(num_classes) != k:
        raise ValueError(f"probs has {k} columns (shape {probs.shape}) but num_classes={num_classes}")
    target = _labels(target, "target", k)
    _same_length(probs, target, "probs", "target")
    curves = {}
    for c in range(k):
        is_c = target == c
        if 0 < is_c.sum() < len(is_c):
            curves[c] = roc_curve(probs[:, c], is_c)
    return curves


def roc_auc_ovr(probs, target, num_classes: int | None = None):
    """One-vs-rest ROC AUC: (per-class AUC array (K,), macro average).

    Class c's AUC is that of the binary problem "c versus every other class"
    scored by ``probs[:, c]`` (see :func:`roc_curves_ovr`). A class absent from
    ``target`` has no negatives-vs-positives split; its entry is NaN and the
    macro average is the mean over the classes that do have an AUC.
    """
    probs_arr = _scores_2d(probs, "probs")
    curves = roc_curves_ovr(probs_arr, target, num_classes)
    per_class = np.full(probs_arr.shape[1], np.nan)
    for c, (fpr, tpr, _) in curves.items():
        per_class[c] = auc(fpr, tpr)
    if not curves:
        raise ValueError("roc_auc_ovr: no class has both positive and negative samples in target "
                         "(target needs at least two different classes)")
    return per_class, float(np.nanmean(per_class))
