"""Adversarial examples: FGSM, PGD, robust accuracy, and adversarial training.

**The scale of ε.** Every ε here is an L∞ radius in **pixel units**: images in
[0, 1], and ε = 0.1 lets each pixel move by a tenth of the black-to-white
range. That only holds when the model takes pixel units — so put the
normalisation *inside* the model (``nn.Normalize``, ``models.with_normalize``)
before attacking it. A model fed normalised images (x − 0.1307) / 0.3081
would see "ε = 0.1" as 0.1 · 0.3081 ≈ 0.03 of the pixel range: the most common
mistake made with attack libraries.

* :func:`fgsm` — the fast gradient sign method (Goodfellow et al., 2015):
  ``x_adv = clamp(x + ε · sign(∇x L(f(x), y)))``; targeted: ``x − ε · sign(∇x L(f(x), t))``.
* :func:`pgd` — projected gradient descent in the L∞ ball (Madry et al., 2018):
  start at a uniform random point of the ball, then ``steps`` times
  ``x ← clamp(proj_ball(x + α · sign(∇x L)))``; with ``restarts`` keep, per
  example, the iterate of the highest loss.
* :func:`robust_accuracy` — accuracy as a function of ε, with a sanity check
  against gradient masking: a strong attack must not do worse than FGSM or
  than random noise of the same size.
* :class:`AdversarialTraining` — a ``train_step`` for ``train.fit``: attack the
  batch, then take the optimizer step on the adversarial images (Madry's
  min-max training; ``attack="fgsm"`` with a random start is the "fast"
  variant of Wong et al., 2020).

Attacks run the model in eval mode (dropout off, batch-norm running
statistics: a fixed function to attack) and leave its train/eval mode, its
parameters' ``requires_grad`` flags and their ``.grad`` exactly as they found
them. They return a new Tensor and never change ``x``.

L is the cross-entropy (mean over the batch; the sign of the gradient is the
same for the sum).
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import functional as F
from ..nn.utils.freeze import frozen
from ..backend import current, to_device, to_host
from ..autograd.tensor import Tensor, no_grad

__all__ = ["fgsm", "pgd", "random_noise", "robust_accuracy", "RobustAccuracy", "AdversarialTraining",
           "input_gradient"]


# -----------------------------------------------------------------------------
# Helpers
# -----------------------------------------------------------------------------
def _check_eps(eps, who):
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not np.isfinite(eps):
        raise TypeError(f"{who}: eps must be a finite number (an L-inf radius in pixel units), got {eps!r}")
    if eps < 0:
        raise ValueError(f"{who}: eps must be >= 0 (an L-inf radius in pixel units [0, 1]), got {eps}")
    return float(eps)


def _as_tensor(x, who):
    t = x if isinstance(x, Tensor) else Tensor(x)
    if t.dtype.kind != "f":
        raise TypeError(f"{who}: expected floating-point images, got dtype {t.dtype}")
    return t


def _labels(y, n, num_classes, who, name="y"):
    y = y if isinstance(y, Tensor) else Tensor(np.asarray(to_host(y)).astype(np.int64).reshape(-1))
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{who}: expected {n} class indices for {n} images, got {name} of shape {y.shape}")
    host = to_host(y.array)
    if n and (host.min() < 0 or host.max() >= num_classes):
        raise ValueError(f"{who}: {name} must be class indices in [0, {num_classes - 1}], got values "
                         f"from {int(host.min())} to {int(host.max())}")
    return y


def _clamp(a, clamp):
    if clamp is None:
        return a
    lo, hi = clamp
    return current.xp.clip(a, lo, hi)


def input_gradient(model, x, y, loss_fn=F.cross_entropy):
    """``(∇x loss_fn(model(x), y), logits)`` as backend arrays; ``x`` an array. Model state untouched
    only inside :func:`frozen` (the attacks call it there)."""
    xt = Tensor(x, requires_grad=True, dtype=x.dtype)
    out = model(xt)
    loss = loss_fn(out, y)
    if not loss.requires_grad:
        raise RuntimeError("the model's output does not depend differentiably on its input: no input "
                           "gradient to attack with (non-differentiable preprocessing inside the model?)")
    loss.backward()
    g = xt.grad.array if xt.grad is not None else current.xp.zeros_like(x)
    return g, out.array


def _num_classes(model, x, who="attack"):
    if x.ndim != 4:
        raise ValueError(f"{who}: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    try:
        with no_grad():
            out = model(Tensor(x[:1], dtype=x.dtype))
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{who}: the model cannot take images of shape {tuple(x.shape)} "
                         f"({str(e).splitlines()[0]})") from e
    return out.shape[1]


def _per_example_loss(logits, y):
    """Cross-entropy of each row, computed where the data lives: (N,) array."""
    xp = current.xp
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    return -xp.take_along_axis(log_p, y.array.reshape(-1, 1), axis=1)[:, 0]


def _uniform(shape, low, high, dtype, rng):
    return to_device(rng.uniform(low, high, size=shape).astype(dtype))


# -----------------------------------------------------------------------------
# Attacks
# -----------------------------------------------------------------------------
def fgsm(model, x, y, eps, clamp=(0.0, 1.0), targeted=False):
    """Fast gradient sign method: one step of size ``eps`` along the sign of the input gradient.

    Untargeted: ``x + eps · sign(∇x L(f(x), y))`` (uphill: away from the true
    class ``y``). ``targeted=True``: ``y`` is the *target* class and the step
    goes downhill, ``x − eps · sign(∇x L(f(x), y))``. Then clamped to
    ``clamp`` (``None``: no clamp). ``eps`` is in pixel units (see the module
    docstring); ``x`` (N, C, H, W).
    """
    eps = _check_eps(eps, "fgsm")
    x = _as_tensor(x, "fgsm")
    with frozen(model):
        y = _labels(y, x.shape[0], _num_classes(model, x.array, "fgsm"), "fgsm",
                    "the target class" if targeted else "y")
        g, _ = input_gradient(model, x.array, y)
        step = -eps if targeted else eps
        adv = _clamp(x.array + step * current.xp.sign(g), clamp)
    return Tensor(adv.astype(x.dtype), dtype=x.dtype)


def pgd(model, x, y, eps, alpha=None, steps=10, random_start=True, restarts=1, clamp=(0.0, 1.0),
        seed=None, targeted=False):
    """L∞ projected gradient descent (Madry et al., 2018); returns the adversarial images.

    Each restart starts at ``x + U(−eps, eps)`` (``random_start``, then clamped)
    or at ``x`` itself, and repeats ``steps`` times::

        x ← clamp( clip(x + α · sign(∇x L(f(x), y)),  x0 − eps, x0 + eps) )

    (the clip is the projection onto the ε-ball around the clean image x0).
    With ``restarts > 1`` each example keeps the restart whose final image has
    the highest loss (for ``targeted``: the lowest loss of the target class),
    so more restarts never make an example less adversarial. ``alpha``
    defaults to ``2.5 · eps / steps`` (Madry's choice: enough to cross the
    ball and come back). The random starts come from ``np.random.default_rng(seed)``
    (``seed=None``: from the framework's generator, which ``mc.manual_seed`` fixes);
    with ``random_start=False`` the attack is deterministic (and restarts
    repeat the same path). ``eps`` and ``alpha`` are in pixel units.
    """
    eps = _check_eps(eps, "pgd")
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"pgd: steps must be an int >= 0, got {steps!r}")
    if not isinstance(restarts, numbers.Integral) or isinstance(restarts, bool) or restarts < 1:
        raise ValueError(f"pgd: restarts must be an int >= 1, got {restarts!r}")
    if alpha is None:
        alpha = 2.5 * eps / max(steps, 1)
    alpha = _check_eps(alpha, "pgd (alpha)")
    x = _as_tensor(x, "pgd")
    from .. import rng as _rng
    gen = np.random.default_rng(seed) if seed is not None else _rng.generator()
    xp = current.xp
    x0 = x.array
    lo, hi = x0 - eps, x0 + eps
    sign = -1.0 if targeted else 1.0
    best, best_loss = None, None
    with frozen(model):
        y = _labels(y, x.shape[0], _num_classes(model, x0, "pgd"), "pgd", "the target class" if targeted else "y")
        for _ in range(int(restarts)):
            adv = x0.copy()
            if random_start and eps > 0:
                adv = _clamp(adv + _uniform(x0.shape, -eps, eps, x0.dtype, gen), clamp)
            for _ in range(int(steps)):
                g, _ = input_gradient(model, adv, y)
                adv = xp.minimum(xp.maximum(adv + (sign * alpha) * xp.sign(g), lo), hi)
                adv = _clamp(adv, clamp).astype(x0.dtype)
            if restarts == 1:
                best = adv
                break
            with no_grad():
                loss = sign * _per_example_loss(model(Tensor(adv, dtype=adv.dtype)).array, y)
            if best is None:
                best, best_loss = adv, loss
            else:
                better = loss > best_loss
                best = xp.where(better.reshape(-1, 1, 1, 1), adv, best)
                best_loss = xp.where(better, loss, best_loss)
    return Tensor(best.astype(x.dtype), dtype=x.dtype)


def random_noise(model, x, y, eps, clamp=(0.0, 1.0), seed=None):
    """Random ±eps per pixel (a random corner of the L∞ ball), clamped: the baseline every attack must beat.

    ``model`` and ``y`` are unused (same signature as the attacks).
    """
    eps = _check_eps(eps, "random_noise")
    x = _as_tensor(x, "random_noise")
    from .. import rng as _rng
    gen = np.random.default_rng(seed) if seed is not None else _rng.generator()
    signs = to_device(gen.choice(np.array([-1.0, 1.0], dtype=x.dtype), size=x.shape))
    return Tensor(_clamp(x.array + eps * signs, clamp).astype(x.dtype), dtype=x.dtype)


_ATTACKS = {"fgsm": fgsm, "pgd": pgd, "noise": random_noise}


def _resolve_attack(attack, kwargs):
    if isinstance(attack, str):
        if attack not in _ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; expected one of {', '.join(_ATTACKS)} or a callable")
        fn = _ATTACKS[attack]
        return attack, (lambda model, x, y, eps: fn(model, x, y, eps, **kwargs))
    if not callable(attack):
        raise TypeError(f"attack must be a name ({', '.join(_ATTACKS)}) or a callable "
                        f"attack(model, x, y, eps) -> x_adv, got {attack!r}")
    return getattr(attack, "__name__", "attack"), (lambda model, x, y, eps: attack(model, x, y, eps, **kwargs))


# -----------------------------------------------------------------------------
# Robust accuracy
# -----------------------------------------------------------------------------
class RobustAccuracy:
    """The result of :func:`robust_accuracy`.

    ``eps`` (list), ``accuracy`` (the attack's accuracy at each ε), ``clean``
    (accuracy without attack), ``fgsm`` / ``noise`` (the sanity baselines at
    each ε, or None when not computed), ``count`` (images), ``warnings``
    (gradient-masking warnings, as text), ``name`` (the attack).
    """

    def __init__(self, name, eps, accuracy, clean, fgsm=None, noise=None, count=0, warnings=()):
        self.name, self.eps, self.accuracy, self.clean = name, list(eps), list(accuracy), clean
        self.fgsm, self.noise, self.count, self.warnings = fgsm, noise, count, list(warnings)

    def as_dict(self):
        return {"attack": self.name, "eps": self.eps, "accuracy": self.accuracy, "clean": self.clean,
                "fgsm": self.fgsm, "noise": self.noise, "count": self.count, "warnings": self.warnings}

    def __repr__(self):
        return f"RobustAccuracy({self.name}, clean={self.clean:.4f}, " + ", ".join(
            f"eps {e:g}: {a:.4f}" for e, a in zip(self.eps, self.accuracy)) + ")"

    def plot(self, path, title=None):
        """The accuracy-vs-ε curve (with the sanity baselines) as a PNG; returns the path."""
        from ..train.viz import plot_robust_accuracy
        return plot_robust_accuracy(self, path, title=title)


def robust_accuracy(model, loader, attack="pgd", eps_list=(0.05, 0.1, 0.2, 0.3), sanity_check=True,
                    tolerance=0.01, max_batches=None, **attack_kwargs) -> RobustAccuracy:
    """Accuracy of ``model`` on ``loader`` under ``attack`` at every ε of ``eps_list``.

    ``loader`` yields ``(x, y)`` with ``x`` in the model's input units — pixel
    units [0, 1] when the model carries its ``nn.Normalize``. ``attack`` is
    ``"fgsm"``, ``"pgd"``, ``"noise"`` or a callable ``attack(model, x, y, eps, **attack_kwargs)``.

    With ``sanity_check`` (the default), FGSM and random ±ε noise are run at
    the same ε. A working iterative attack is at least as strong as both; if
    its accuracy is higher than either by more than ``tolerance``, a
    ``UserWarning`` says so: the gradients are probably masked (saturated
    softmax, non-differentiable preprocessing, too small a step), and the
    robust accuracy reported is an overestimate.
    """
    name, run = _resolve_attack(attack, attack_kwargs)
    eps_list = [_check_eps(e, "robust_accuracy") for e in eps_list]
    if not eps_list:
        raise ValueError("robust_accuracy: eps_list is empty")
    check = sanity_check and name not in ("fgsm", "noise")
    correct = np.zeros(len(eps_list), dtype=np.int64)
    correct_fgsm = np.zeros(len(eps_list), dtype=np.int64)
    correct_noise = np.zeros(len(eps_list), dtype=np.int64)
    clean, count = 0, 0
    was_training = model.training
    model.eval()

    def n_right(xa, y):
        with no_grad():
            return int((model(xa).array.argmax(axis=1) == y.array).sum())

    try:
        for b, (x, y) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            x = _as_tensor(x, "robust_accuracy")
            y = y if isinstance(y, Tensor) else Tensor(np.asarray(y, dtype=np.int64))
            clean += n_right(x, y)
            count += len(y)
            for i, eps in enumerate(eps_list):
                correct[i] += n_right(run(model, x, y, eps), y)
                if check:
                    correct_fgsm[i] += n_right(fgsm(model, x, y, eps), y)
                    correct_noise[i] += n_right(random_noise(model, x, y, eps), y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("robust_accuracy: the loader produced no samples")
    acc = (correct / count).tolist()
    result = RobustAccuracy(name, eps_list, acc, clean / count, count=count)
    if check:
        result.fgsm = (correct_fgsm / count).tolist()
        result.noise = (correct_noise / count).tolist()
        for eps, a, af, an in zip(eps_list, acc, result.fgsm, result.noise):
            for base, ab in (("FGSM", af), ("random noise", an)):
                if a > ab + tolerance:
                    msg = (f"possible gradient masking: {name} accuracy {a:.4f} at eps={eps:g} is higher "
                           f"than under {base} of the same size ({ab:.4f}); the attack is not working "
                           "and the robust accuracy is overestimated")
                    result.warnings.append(msg)
                    warnings.warn(msg, UserWarning, stacklevel=2)
    return result


# -----------------------------------------------------------------------------
# Adversarial training
# -----------------------------------------------------------------------------
class AdversarialTraining:
    """A ``train_step`` for ``train.fit``: attack the batch, then train on the adversarial images.

    Madry et al. (2018): ``min_θ E[ max_{‖δ‖∞ ≤ ε} L(f_θ(x + δ), y) ]`` — the
    inner max is approximated by PGD (``attack="pgd"``, ``steps`` steps of
    size ``alpha``, random start), the outer min by the optimizer's step on
    the loss at the attack's images. ``attack="fgsm"`` is the "fast"
    variant (Wong, Rice & Kolter, 2020): one signed step of size ``alpha``
    (default 1.25 ε) from a uniform random start in the ε-ball, then
    projected — about as cheap as two ordinary steps.

    ``normalization=(mean, std)`` says the loader hands out normalised
    batches ``(x − mean) / std`` (as ``minicnn train`` does): the step maps
    them back to pixel units, attacks ``Normalize → model`` there, so ``eps``
    is in pixel units; the model itself (and so its checkpoints) stays as it
    was. Without it the batches must already be the model's pixel-unit input.

    ``mix`` is the fraction of the loss from the clean batch (0: adversarial
    only, Madry's recipe; 0.5: the "TRADES-free" half-and-half average).
    """

    def __init__(self, eps, attack="pgd", steps=7, alpha=None, normalization=None, mix=0.0,
                 clamp=(0.0, 1.0)):
        self.eps = _check_eps(eps, "AdversarialTraining")
        if attack not in ("pgd", "fgsm"):
            raise ValueError(f"AdversarialTraining: attack must be 'pgd' or 'fgsm', got {attack!r}")
        if attack == "pgd" and (not isinstance(steps, numbers.Integral) or steps < 1):
            raise ValueError(f"AdversarialTraining: steps must be an int >= 1, got {steps!r}")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"AdversarialTraining: mix must be in [0, 1], got {mix}")
        self.attack, self.steps, self.mix, self.clamp = attack, int(steps), float(mix), clamp
        if alpha is None:
            alpha = 2.5 * self.eps / self.steps if attack == "pgd" else 1.25 * self.eps
        self.alpha = _check_eps(alpha, "AdversarialTraining (alpha)")
        self.normalization = normalization
        self._wrapped = {}

    def _pixel_model(self, model):
        if self.normalization is None:
            return model
        key = id(model)
        if key not in self._wrapped:
            from ..models import with_normalize
            self._wrapped[key] = with_normalize(model, *self.normalization)
        return self._wrapped[key]

    def _to_pixels(self, x):
        if self.normalization is None:
            return x
        mean, std = self.normalization
        c = x.shape[1]
        m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (c,)).reshape(1, c, 1, 1)
        s = np.broadcast_to(np.asarray(std, dtype=np.float64), (c,)).reshape(1, c, 1, 1)
        pixels = x.array * to_device(s.astype(x.dtype)) + to_device(m.astype(x.dtype))
        return Tensor(_clamp(pixels, self.clamp), dtype=x.dtype)

    def __call__(self, model, optimizer, x, y, loss_fn):
        net = self._pixel_model(model)
        net.train(model.training)
        xp_ = self._to_pixels(x)
        if self.attack == "pgd":
            adv = pgd(net, xp_, y, self.eps, alpha=self.alpha, steps=self.steps, random_start=True,
                      clamp=self.clamp)
        else:
            adv = pgd(net, xp_, y, self.eps, alpha=self.alpha, steps=1, random_start=True, clamp=self.clamp)
        out = net(adv)                      # model is back in train mode here (the attack restored it)
        loss = loss_fn(out, y)
        if self.mix > 0:
            loss = loss * (1.0 - self.mix) + loss_fn(net(xp_), y) * self.mix
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, out

    def __repr__(self):
        return (f"AdversarialTraining(attack={self.attack!r}, eps={self.eps:g}, steps={self.steps}, "
                f"alpha={self.alpha:g}, mix={self.mix:g})")
