"""What the doctor found: a :class:`Finding` per problem, gathered in a :class:`Report`.

A finding always carries the number that was measured and the threshold it
was compared with, so a student can judge it (and argue with it)::

    1. dead_relu — ReLU layer(s) 2 (100%): that share of their units output 0 for every image of the batch
        measured 1, threshold > 0.75
        why: a unit that outputs 0 for every input passes no gradient back, so its incoming weights never change again
        fix: tutorials/18_debugging_training.ipynb, section 5 (and 03_activations_pooling.ipynb: dead ReLU)
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Finding", "Report"]


@dataclass
class Finding:
    """One problem: ``name`` (a short id such as ``"dead_relu"``), what was seen (``message``),
    the ``measured`` number, the ``threshold`` it crossed (as text: ``"> 0.5"``), ``why`` it
    matters, and the ``tutorial`` section that explains the fix. ``layer`` names the layer or
    parameter when the finding is about one."""
    name: str
    message: str
    measured: float
    threshold: str
    why: str
    tutorial: str
    layer: str | None = None

    def __str__(self):
        measured = f"{self.measured:.4g}" if isinstance(self.measured, float) else str(self.measured)
        return (f"{self.name} — {self.message}\n"
                f"    measured {measured}, threshold {self.threshold}\n"
                f"    why: {self.why}\n"
                f"    fix: {self.tutorial}")


@dataclass
class Report:
    """What :func:`~minicnn.doctor.diagnose` found.

    ``findings`` lists the problems (empty for a healthy run: then ``report.ok``
    is True and, like an empty list, the report is falsy: ``len(report) == 0``); ``measurements`` holds every number the
    doctor measured, problem or not (the input statistics, the losses of the
    probe run, and per layer the activation statistics, gradient norms and
    update-to-weight ratios), and ``checks`` names the checks that ran.
    ``str(report)`` prints the findings and the per-layer table.
    """
    findings: list = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)

    @property
    def ok(self):
        """True when nothing was found."""
        return not self.findings

    def names(self):
        """The names of the findings, in order (``"dead_relu"``, ...), one per finding."""
        return [f.name for f in self.findings]

    def __len__(self):
        return len(self.findings)

    def __iter__(self):
        return iter(self.findings)

    def layer_table(self):
        """The per-layer measurements as text: one row per layer the doctor looked at."""
        rows = self.measurements.get("layers", {})
        if not rows:
            return ""
        head = f"{'layer':<24} {'kind':<10} {'dead/sat.':>9} {'|grad|/|w|':>11} {'update/w':>9}"
        lines = [head, "-" * len(head)]
        for name, row in rows.items():
            def num(key, fmt, width):
                value = row.get(key)
                return (format(value, fmt) if value is not None else "-").rjust(width)
            lines.append(f"{name:<24} {row.get('kind', ''):<10} {num('inactive', '.1%', 9)} "
                         f"{num('grad_ratio', '.2e', 11)} {num('update_ratio', '.1e', 9)}")
        return "\n".join(lines)

    def __str__(self):
        m = self.measurements
        head = "training doctor: "
        head += "no problems found" if self.ok else f"{len(self.findings)} problem(s) found"
        facts = []
        if "input_mean" in m:
            facts.append(f"inputs mean {m['input_mean']:.3g} std {m['input_std']:.3g}")
        if "initial_loss" in m:
            facts.append(f"initial loss {m['initial_loss']:.3f} (ln {m['num_classes']} = "
                         f"{m['expected_initial_loss']:.3f})")
        if "overfit_accuracy" in m:
            facts.append(f"one batch of {m['overfit_batch']} after {m['overfit_steps']} steps: "
                         f"accuracy {m['overfit_accuracy']:.0%}, loss {m['overfit_loss']:.3g}")
        lines = [head]
        if facts:
            lines.append("  " + "; ".join(facts))
        for i, finding in enumerate(self.findings, 1):
            lines.append(f"{i}. " + str(finding))
        table = self.layer_table()
        if table:
            lines += ["", table]
        return "\n".join(lines)

    def __repr__(self):
        return f"Report({len(self.findings)} finding(s): {', '.join(self.names()) or 'none'})"
