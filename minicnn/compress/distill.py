"""Knowledge distillation as a training step for ``train.fit`` (Hinton, Vinyals & Dean 2015).

A trained *teacher* labels every training batch with its softened
probabilities softmax(z_teacher / T); the *student* is trained on

    loss = F.distillation_loss(student(x), teacher(x), y, temperature=T, alpha=alpha)

The teacher runs in eval mode (dropout off, BatchNorm on its running
statistics) under ``no_grad``: it is a fixed function, nothing flows into it
and nothing of it is stored for backward.

    step = DistillationStep(teacher, temperature=4.0, alpha=0.9)
    fit(student, optimizer, loader, epochs, train_step=step)

The loop (validation, checkpoints, resume, early stopping) is ``fit``'s own;
only what one step computes changes. Validation and test accuracy are the
student's plain accuracy on hard labels.
"""
from __future__ import annotations

from .. import functional as F
from ..autograd.tensor import no_grad

__all__ = ["DistillationStep"]


class DistillationStep:
    """``train_step(model, optimizer, x, y, loss_fn) -> (loss, logits)`` with a teacher.

    ``loss_fn`` (fit's hard-label loss) is not used: the hard-label term is
    the cross-entropy inside :func:`minicnn.functional.distillation_loss`.
    """

    def __init__(self, teacher, temperature=4.0, alpha=0.9):
        if not temperature > 0:
            raise ValueError(f"DistillationStep: temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillationStep: alpha must be in [0, 1], got {alpha}")
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)

    def teacher_logits(self, x):
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with no_grad():
                return self.teacher(x)
        finally:
            self.teacher.train(was_training)

    def __call__(self, model, optimizer, x, y, loss_fn):
        t = self.teacher_logits(x)
        out = model(x)
        loss = F.distillation_loss(out, t, y, temperature=self.temperature, alpha=self.alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, out
