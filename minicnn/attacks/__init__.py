"""Adversarial examples and robustness (tutorial 14).

* ``fgsm_pgd.py``          — the library: :func:`fgsm`, :func:`pgd`, :func:`robust_accuracy`,
  :class:`AdversarialTraining` (a training step for ``fit``);
* ``cli.py``               — ``minicnn attack``;
* ``adversarial_cli.py``   — ``minicnn train --adversarial pgd|fgsm``.
"""
from .fgsm_pgd import (AdversarialTraining, RobustAccuracy, fgsm, input_gradient, pgd, random_noise,
                       robust_accuracy)

__all__ = ["fgsm", "pgd", "random_noise", "robust_accuracy", "RobustAccuracy", "AdversarialTraining",
           "input_gradient"]
