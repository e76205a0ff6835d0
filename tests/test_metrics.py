"""Metrics: small cases worked out by hand, a brute-force oracle for ROC AUC,
and (where installed) scikit-learn as a second opinion."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.train.metrics as M

pytestmark = pytest.mark.tutorial08        # what tutorials/08_*.ipynb teaches (tests/README.md)

# ----------------------------------------------------------------------------
# The 3-class example, worked out by hand
#
#   target = 0 0 0 0 | 1 1 1 | 2 2 2
#   pred   = 0 0 1 2 | 1 1 0 | 2 2 1
#
# confusion (rows = true, columns = predicted):
#            pred 0  pred 1  pred 2    row sum (support)
#   true 0      2       1       1          4
#   true 1      1       2       0          3
#   true 2      0       1       2          3
#   col sum     3       4       3         10
#
#   class 0: TP=2 FP=3-2=1 FN=4-2=2  P=2/3  R=2/4=1/2  F1=2*(2/3)(1/2)/(2/3+1/2)=4/7
#   class 1: TP=2 FP=4-2=2 FN=3-2=1  P=2/4=1/2  R=2/3  F1=4/7
#   class 2: TP=2 FP=3-2=1 FN=3-2=1  P=2/3  R=2/3  F1=2/3
#   accuracy = 6/10;  macro P = (2/3+1/2+2/3)/3 = 11/18;  macro R = 11/18
#   macro F1 = (4/7+4/7+2/3)/3 = 38/63
#   weighted P = (4*2/3 + 3*1/2 + 3*2/3)/10 = 37/60;  weighted R = accuracy = 0.6
# ----------------------------------------------------------------------------
TARGET = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
CM = [[2, 1, 1],
      [1, 2, 0],
      [0, 1, 2]]


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix(PRED, TARGET, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)
    # rows sum to the support of each true class, the total is N
    np.testing.assert_array_equal(cm.sum(axis=1), [4, 3, 3])
    assert cm.sum() == len(TARGET)


def test_confusion_matrix_from_logits_tensors_and_inferred_size():
    logits = np.eye(3)[PRED] * 5.0 - 1.0           # argmax = PRED
    cm = M.confusion_matrix(mc.tensor(logits), mc.tensor(np.array(TARGET)))
    np.testing.assert_array_equal(cm, CM)
    # an explicit num_classes keeps rows for classes that never occur
    cm5 = M.confusion_matrix(PRED, TARGET, num_classes=5)
    assert cm5.shape == (5, 5)
    np.testing.assert_array_equal(cm5[:3, :3], CM)
    assert cm5[3:].sum() == 0 and cm5[:, 3:].sum() == 0


def test_precision_recall_f1_by_hand():
    s = M.precision_recall_f1(np.array(CM))
    np.testing.assert_allclose(s.precision, [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(s.recall, [1 / 2, 2 / 3, 2 / 3])
    np.testing.assert_allclose(s.f1, [4 / 7, 4 / 7, 2 / 3])
    np.testing.assert_array_equal(s.support, [4, 3, 3])
    assert s.accuracy == pytest.approx(0.6)
    assert s.macro_precision == pytest.approx(11 / 18)
    assert s.macro_recall == pytest.approx(11 / 18)
    assert s.macro_f1 == pytest.approx(38 / 63)
    assert s.weighted_precision == pytest.approx(37 / 60)
    assert s.weighted_recall == pytest.approx(0.6)
    assert s.weighted_f1 == pytest.approx((4 * 4 / 7 + 3 * 4 / 7 + 3 * 2 / 3) / 10)


def test_precision_recall_f1_zero_division_is_zero():
    # class 1 is never predicted (precision 0/0), class 2 never occurs and is
    # never predicted (precision 0/0, recall 0/0, F1 0/0): all defined as 0.
    cm = np.array([[2, 0, 0],
                   [1, 0, 0],
                   [0, 0, 0]])
    with np.errstate(all="raise"):                 # no division warnings either
        s = M.precision_recall_f1(cm)
    np.testing.assert_allclose(s.precision, [2 / 3, 0, 0])
    np.testing.assert_allclose(s.recall, [1, 0, 0])
    np.testing.assert_allclose(s.f1, [0.8, 0, 0])
    assert s.macro_f1 == pytest.approx(0.8 / 3)
    assert np.isfinite([s.macro_precision, s.macro_recall, s.weighted_f1]).all()


def test_precision_recall_f1_rejects_bad_matrices():
    with pytest.raises(ValueError, match=r"square \(K, K\).*\(2, 3\)"):
        M.precision_recall_f1(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        M.precision_recall_f1(np.array([[1, -1], [0, 1]]))


def test_accuracy_from_labels_logits_and_tensors():
    assert M.accuracy(PRED, TARGET) == pytest.approx(0.6)
    logits = np.eye(3)[PRED] + 0.1
    assert M.accuracy(logits, TARGET) == pytest.approx(0.6)
    assert M.accuracy(mc.tensor(logits), mc.tensor(np.array(TARGET))) == pytest.approx(0.6)
    # whole-number float labels are fine
    assert M.accuracy(np.array(PRED, dtype=np.float32), TARGET) == pytest.approx(0.6)


def test_top_k_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.3, 0.1],     # ranking 1, 2, 0|3 ; target 2 -> rank 2
                       [0.7, 0.1, 0.15, 0.05],   # ranking 0, 2, 1, 3 ; target 3 -> rank 4
                       [0.2, 0.2, 0.5, 0.1]])    # ranking 2, 0, 1, 3 ; target 2 -> rank 1
    target = [2, 3, 2]
    assert M.top_k_accuracy(scores, target, k=1) == pytest.approx(1 / 3)
    assert M.top_k_accuracy(scores, target, k=2) == pytest.approx(2 / 3)
    assert M.top_k_accuracy(scores, target, k=3) == pytest.approx(2 / 3)
    assert M.top_k_accuracy(scores, target, k=4) == pytest.approx(1.0)
    assert M.top_k_accuracy(scores, target, k=1) == M.accuracy(scores, target)
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.4.*got 5"):
        M.top_k_accuracy(scores, target, k=5)


@pytest.mark.parametrize("call, message", [
    (lambda: M.accuracy([0, 1, 2], [0, 1]), r"same length, got 3 and 2"),
    (lambda: M.accuracy([], []), r"empty"),
    (lambda: M.accuracy([0, 1], [[0], [1]]), r"target must be a 1-D.*\(2, 1\)"),
    (lambda: M.accuracy(np.zeros((2, 2, 2)), [0, 1]), r"\(N,\) or scores/logits \(N, K\).*\(2, 2, 2\)"),
    (lambda: M.accuracy([0.5, 1.0], [0, 1]), r"whole-number class indices, got the value 0\.5"),
    (lambda: M.confusion_matrix([0, 3], [0, 1], num_classes=3),
     r"pred has class index 3 but num_classes=3 \(expected indices 0\.\.2\)"),
    (lambda: M.confusion_matrix([0, 1], [0, -1], num_classes=3), r"target has a negative class index"),
    (lambda: M.confusion_matrix(np.zeros((2, 4)), [0, 1], num_classes=3),
     r"scores for 4 classes.*num_classes=3"),
    (lambda: M.confusion_matrix([0, 1], [0, 1], num_classes=0), r"positive integer"),
    (lambda: M.top_k_accuracy(np.zeros((2, 3)), [0, 3], k=1), r"class index 3 but num_classes=3"),
    (lambda: M.top_k_accuracy([0.1, 0.2], [0, 1], k=1), r"scores must be a 2-D array.*\(2,\)"),
    (lambda: M.classification_report(PRED, TARGET, class_names=["a", "b"]), r"2 names but there are 3"),
])
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_classification_report_text():
    text = M.classification_report(PRED, TARGET, class_names=["cat", "dog", "bird"])
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1", "support"]
    assert lines[1].split() == ["cat", "0.667", "0.500", "0.571", "4"]
    assert lines[2].split() == ["dog", "0.500", "0.667", "0.571", "3"]
    assert lines[3].split() == ["bird", "0.667", "0.667", "0.667", "3"]
    assert "accuracy" in text and "macro avg" in text and "weighted avg" in text
    macro = next(line for line in lines if line.strip().startswith("macro avg")).split()
    assert macro[2:] == ["0.611", "0.611", "0.603", "10"]          # 11/18, 11/18, 38/63
    accuracy = next(line for line in lines if line.strip().startswith("accuracy")).split()
    assert accuracy[1:] == ["0.600", "10"]
    # numbers line up in columns: every table row has the same width
    rows = [line for line in lines if line.strip()]
    assert len({len(line) for line in rows}) == 1
    # default names are the class indices; digits= sets the precision
    assert M.classification_report(PRED, TARGET, digits=2).splitlines()[1].split()[:2] == ["0", "0.67"]


# ----------------------------------------------------------------------------
# ROC and AUC
# ----------------------------------------------------------------------------
def pairwise_auc(scores, positives):
    """Brute-force oracle: P(score of a positive > score of a negative), ties count 1/2."""
    scores, positives = np.asarray(scores, float), np.asarray(positives, bool)
    pos, neg = scores[positives], scores[~positives]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_roc_curve_by_hand():
    # the classic 4-sample example: thresholds at each distinct score
    fpr, tpr, thr = M.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    assert M.auc(fpr, tpr) == pytest.approx(0.75)


def test_auc_perfect_reversed_and_all_tied():
    y = [1, 1, 0, 0]
    fpr, tpr, _ = M.roc_curve([0.9, 0.8, 0.3, 0.1], y)
    assert M.auc(fpr, tpr) == pytest.approx(1.0)
    fpr, tpr, _ = M.roc_curve([0.1, 0.3, 0.8, 0.9], y)
    assert M.auc(fpr, tpr) == pytest.approx(0.0)
    # one score for everyone: a single threshold step, the diagonal, AUC 0.5
    fpr, tpr, thr = M.roc_curve([0.5, 0.5, 0.5, 0.5], y)
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(tpr, [0, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.5])
    assert M.auc(fpr, tpr) == pytest.approx(0.5)


def test_roc_ties_enter_together():
    # 0.9 is positive; the tie at 0.5 holds 2 positives and 2 negatives.
    # Points: (0, 0), (0, 1/3), (1, 1); area = (1/3 + 1)/2 = 2/3 (pairs: 4 of 6).
    fpr, tpr, thr = M.roc_curve([0.5, 0.5, 0.9, 0.5, 0.5], [True, False, True, False, True])
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5])
    assert M.auc(fpr, tpr) == pytest.approx(2 / 3)
    # the order of the tied samples must not matter
    fpr2, tpr2, _ = M.roc_curve([0.5, 0.5, 0.5, 0.5, 0.9], [False, False, True, True, True])
    np.testing.assert_allclose(fpr2, fpr)
    np.testing.assert_allclose(tpr2, tpr)


def test_auc_matches_pairwise_oracle_with_many_ties(rng):
    for _ in range(20):
        n = int(rng.integers(5, 60))
        scores = rng.integers(0, 6, n) / 5.0                 # few distinct values: many ties
        positives = rng.random(n) < 0.4
        positives[:2] = [True, False]                        # at least one of each
        fpr, tpr, thr = M.roc_curve(scores, positives)
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        assert len(thr) == len(np.unique(scores)) + 1       # one point per distinct score
        assert M.auc(fpr, tpr) == pytest.approx(pairwise_auc(scores, positives))


def test_auc_trapezoid_and_errors():
    assert M.auc([0, 1], [0, 1]) == pytest.approx(0.5)
    assert M.auc([0, 0.5, 1], [0, 1, 1]) == pytest.approx(0.75)
    assert M.auc([1, 0.5, 0], [1, 1, 0]) == pytest.approx(0.75)      # decreasing x
    assert M.auc([0, 2], [3, 3]) == pytest.approx(6.0)              # not only [0, 1]
    with pytest.raises(ValueError, match="monotonic"):
        M.auc([0, 1, 0.5], [0, 1, 1])
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        M.auc([0, 0.5, 1], [0, 1])
    with pytest.raises(ValueError, match="at least 2 points"):
        M.auc([0], [0])


@pytest.mark.parametrize("scores, positives, message", [
    ([0.1, 0.2], [1, 1], r"at least one positive and one negative.*2 positives and 0 negatives"),
    ([0.1, 0.2], [1, 2], r"bool or 0/1"),
    ([0.1, np.nan], [0, 1], r"NaN"),
    ([0.1, 0.2, 0.3], [0, 1], r"same length, got 3 and 2"),
    ([[0.1, 0.2]], [[0, 1]], r"1-D"),
])
def test_roc_curve_errors(scores, positives, message):
    with pytest.raises(ValueError, match=message):
        M.roc_curve(scores, positives)


def test_roc_auc_ovr_by_hand_and_oracle(rng):
    # perfect probabilities: every one-vs-rest AUC is 1
    target = np.array([0, 1, 2, 0, 1, 2])
    per_class, macro = M.roc_auc_ovr(np.eye(3)[target] * 0.8 + 0.1, target)
    np.testing.assert_allclose(per_class, [1, 1, 1])
    assert macro == pytest.approx(1.0)
    # class 0 ranked perfectly, class 1 exactly reversed, class 2 all tied
    # (scores need not sum to 1 for the AUC; only their order within a column matters)
    probs = np.array([[0.4, 0.5, 0.1],      # true 0
                      [0.5, 0.4, 0.1],      # true 0
                      [0.2, 0.3, 0.1],      # true 2
                      [0.1, 0.0, 0.1]])     # true 1
    per_class, macro = M.roc_auc_ovr(probs, [0, 0, 2, 1])
    np.testing.assert_allclose(per_class, [1.0, 0.0, 0.5])
    assert macro == pytest.approx(0.5)
    # random case against the pairwise oracle
    probs = rng.dirichlet(np.ones(4), 50)
    target = rng.integers(0, 4, 50)
    per_class, macro = M.roc_auc_ovr(mc.tensor(probs, dtype="float64"), target)
    expected = [pairwise_auc(probs[:, c], target == c) for c in range(4)]
    np.testing.assert_allclose(per_class, expected)
    assert macro == pytest.approx(np.mean(expected))


def test_roc_auc_ovr_absent_class_is_nan():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    per_class, macro = M.roc_auc_ovr(probs, [0, 1, 0])      # class 2 never occurs
    assert np.isnan(per_class[2])
    assert macro == pytest.approx(np.mean(per_class[:2]))
    assert set(M.roc_curves_ovr(probs, [0, 1, 0])) == {0, 1}
    with pytest.raises(ValueError, match="at least two different classes"):
        M.roc_auc_ovr(probs, [0, 0, 0])
    with pytest.raises(ValueError, match=r"3 columns.*num_classes=4"):
        M.roc_auc_ovr(probs, [0, 1, 0], num_classes=4)


# ----------------------------------------------------------------------------
# A second opinion from scikit-learn, where it is installed
# (note its argument order: (y_true, y_pred))
# ----------------------------------------------------------------------------
def test_against_sklearn(rng):
    skm = pytest.importorskip("sklearn.metrics")
    k, n = 5, 200
    target = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[target]
    pred = logits.argmax(axis=1)
    labels = list(range(k))

    np.testing.assert_array_equal(M.confusion_matrix(pred, target, k),
                                  skm.confusion_matrix(target, pred, labels=labels))
    p, r, f, support = skm.precision_recall_fscore_support(target, pred, labels=labels,
                                                           zero_division=0)
    s = M.precision_recall_f1(M.confusion_matrix(pred, target, k))
    np.testing.assert_allclose(s.precision, p)
    np.testing.assert_allclose(s.recall, r)
    np.testing.assert_allclose(s.f1, f)
    np.testing.assert_array_equal(s.support, support)
    assert s.macro_f1 == pytest.approx(skm.f1_score(target, pred, average="macro"))
    assert s.weighted_f1 == pytest.approx(skm.f1_score(target, pred, average="weighted"))
    assert M.accuracy(logits, target) == pytest.approx(skm.accuracy_score(target, pred))
    for top in (1, 2, 3):
        assert M.top_k_accuracy(logits, target, k=top) == pytest.approx(
            skm.top_k_accuracy_score(target, logits, k=top, labels=labels))

    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rounded = np.round(probs, 1)                            # ties on purpose
    for c in range(k):
        fpr, tpr, thr = M.roc_curve(rounded[:, c], target == c)
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(target == c, rounded[:, c], drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
        np.testing.assert_allclose(thr[1:], sk_thr[1:])     # thr[0]: inf here, max+1 in old sklearn
        assert M.auc(fpr, tpr) == pytest.approx(skm.roc_auc_score(target == c, rounded[:, c]))
    _, macro = M.roc_auc_ovr(probs, target)
    assert macro == pytest.approx(skm.roc_auc_score(target, probs, multi_class="ovr", average="macro"))


def test_metrics_and_viz_are_reachable_as_attributes():
    import minicnn
    import minicnn.train.viz
    assert minicnn.train.metrics.accuracy is M.accuracy
    assert minicnn.train.viz.plot_history is minicnn.train.viz.plot_history
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        minicnn.nonexistent
