"""Train / validation / test: carving a validation set out of the training images.

Three sets, three jobs:

* **training** images move the weights;
* **validation** images choose between runs — the best epoch to keep, when to
  stop early, when a plateau schedule lowers the learning rate, which
  hyper-parameters win;
* **test** images are looked at **once**, at the end, to report how well the
  chosen model does on data nothing was chosen on.

Choosing on the test set makes its accuracy an optimistic, biased estimate:
the model (or epoch, or learning rate) that happened to fit those particular
10,000 images best gets picked. So the validation set comes out of the
training set, and the test set stays untouched until the report.

The split is *stratified*: each class contributes the same fraction, so a
small validation set still has every digit in the right proportion. It is
*seeded*: the same seed gives the same split, run after run.
"""
from __future__ import annotations

import numpy as np

__all__ = ["stratified_split"]


def stratified_split(labels, fraction, seed=0):
    """``(train_indices, val_indices)``: ``fraction`` of each class held out for validation.

    ``fraction`` is in [0, 1); per class, ``round(fraction * count)`` images go
    to validation (at least one when the fraction is positive and the class
    has two or more images). Both index arrays are sorted.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"stratified_split: expected 1-D labels, got shape {labels.shape}")
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction < 1.0):
        raise ValueError(f"stratified_split: fraction must be in [0, 1), got {fraction!r}")
    rs = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if fraction > 0 and k == 0 and len(idx) >= 2:
            k = 1
        val.append(rs.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx
