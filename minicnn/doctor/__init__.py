"""The training doctor (tutorial 18): run a few steps with hooks and name what is wrong.

    from minicnn import doctor
    report = doctor.diagnose(model, train_loader, optimizer=optimizer)
    print(report)             # each finding: the number measured, the threshold, why, where the fix is
    report.ok                 # True when nothing was found

* ``checks.py``   — the checks and their thresholds (:func:`diagnose`, ``THRESHOLDS``);
* ``report.py``   — :class:`Finding` and :class:`Report`;
* ``cli.py``      — ``minicnn doctor`` and ``minicnn train --doctor``.
"""
from .checks import THRESHOLDS, diagnose
from .report import Finding, Report

__all__ = ["diagnose", "THRESHOLDS", "Finding", "Report"]
