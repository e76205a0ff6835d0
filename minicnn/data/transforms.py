"""Transforms: conversion, normalisation and data augmentation, a whole batch at a time.

Every transform is a callable taking a float array of shape ``(B, C, H, W)``
(a batch) or ``(C, H, W)`` (one image) and returning one of the same shape.
They run on the host in NumPy, before the batch is moved to the device, and
they work on the whole batch at once — no Python loop over images — so that
augmentation costs little next to the network. Give them to the
:class:`~minicnn.data.DataLoader` (``transform=``) to apply per batch, or to a
dataset (``transform=``) to apply per image.

Augmentation draws its random numbers from :func:`minicnn.rng.generator`, so
``mc.manual_seed`` makes it repeatable.

Typical use::

    from minicnn.data import transforms as T
    train_tf = T.Compose([T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                          T.Normalize(0.1307, 0.3081)])

Augment *before* normalising: the geometric transforms fill uncovered pixels
with ``fill`` (0 = MNIST's black background), which is only background on the
un-normalised [0, 1] scale.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import rng as _rng


def to_float(images) -> np.ndarray:
    """uint8 pixels 0..255 -> float32 in [0, 1] (``x / 255``); floats are cast to float32.

    The one conversion used everywhere (datasets, DataLoader), so that a batch
    and the same images fetched one by one hold identical numbers.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if images.dtype.kind == "f":
        return images.astype(np.float32, copy=False)
    raise TypeError(f"images: expected uint8 (0..255) or floating-point pixels, got {images.dtype}")


def _check_float_image(x, who):
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{who}: expected an image (C, H, W) or a batch (B, C, H, W), "
                         f"got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{who}: expected floating-point pixels, got {x.dtype}; "
                        "convert with ToFloat() first")
    return x


class Compose:
    """Apply transforms one after another: ``Compose([f, g])(x) == g(f(x))``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {t!r}")

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class ToFloat:
    """uint8 0..255 -> float32 in [0, 1]; float input is cast to float32 unchanged."""

    def __call__(self, x):
        return to_float(x)

    def __repr__(self):
        return "ToFloat()"


class Normalize:
    """Per-channel standardisation: ``y[c] = (x[c] - mean[c]) / std[c]``.

    ``mean`` and ``std`` are numbers (same for every channel) or one value per
    channel. For MNIST the usual values are mean 0.1307, std 0.3081 (the pixel
    statistics of the training set on the [0, 1] scale), giving inputs of mean
    0 and variance 1 — which is what the default weight initialisations assume.
    """

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError("Normalize: mean and std must be numbers or 1-D sequences "
                             f"(one value per channel), got shapes {self.mean.shape} and {self.std.shape}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")

    def __call__(self, x):
        x = _check_float_image(x, "Normalize")
        channels = x.shape[-3]
        for what, v in (("mean", self.mean), ("std", self.std)):
            if v.size not in (1, channels):
                raise ValueError(f"Normalize: {what} has {v.size} values but the images have "
                                 f"{channels} channels (shape {x.shape})")
        mean = self.mean.astype(x.dtype).reshape(-1, 1, 1)   # (C, 1, 1) broadcasts over H, W
        std = self.std.astype(x.dtype).reshape(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


# ----------------------------------------------------------------------------
# Geometric augmentation
# ----------------------------------------------------------------------------
def affine(x, angle=0.0, translate=(0.0, 0.0), scale=1.0, fill=0.0) -> np.ndarray:
    """Rotate, scale and shift each image of a batch, with bilinear interpolation.

    Args:
        x: float array ``(B, C, H, W)`` or one image ``(C, H, W)``.
        angle: degrees, counter-clockwise as displayed; a number or one per image ``(B,)``.
        translate: ``(dx, dy)`` in pixels (x to the right, y *down*, as the
            array is displayed); one pair or one per image ``(B, 2)``.
        scale: zoom factor (> 1 enlarges); a number or one per image ``(B,)``.
        fill: value of the pixels that come from outside the input.

    The math. Put pixel coordinates ``p = (x, y)`` (column, row) relative to
    the image centre ``c = ((W-1)/2, (H-1)/2)``. The transform moves an input
    point ``p`` to

        ``p_out = c + s * R(θ) (p - c) + t``,  ``R(θ) = [[cos θ, sin θ], [-sin θ, cos θ]]``

    (this ``R`` turns counter-clockwise on screen because y points down).
    Pushing each input pixel forward would leave holes in the output, so we
    go backwards instead: for every *output* pixel we ask where it came from,

        ``p_in = c + R(-θ) (p_out - c - t) / s``,  ``R(-θ) = R(θ)^-1 = [[cos θ, -sin θ], [sin θ, cos θ]]``

    and sample the input there. ``p_in`` falls between pixels, so we blend the
    four neighbours ``(x0, y0) = floor(p_in)`` ... ``(x0+1, y0+1)`` with the
    bilinear weights ``(1-a)(1-b), a(1-b), (1-a)b, ab`` where
    ``a = x - x0``, ``b = y - y0``; neighbours outside the image count as
    ``fill``. With ``θ = 0, s = 1`` and a whole-pixel ``t`` every ``p_in`` is
    an exact pixel centre, so the result is an exact copy (no blur).

    The work is four gathers over the whole batch at once — no loop over images.
    """
    x = _check_float_image(x, "affine")
    single = x.ndim == 3
    if single:
        x = x[None]
    B, C, H, W = x.shape
    theta = np.deg2rad(np.broadcast_to(np.asarray(angle, dtype=np.float64), (B,)))
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (B,))
    t = np.broadcast_to(np.asarray(translate, dtype=np.float64), (B, 2))
    if np.any(s <= 0):
        raise ValueError(f"affine: scale must be positive, got {np.asarray(scale).tolist()}")

    cos = np.cos(theta)[:, None, None]                       # (B, 1, 1)
    sin = np.sin(theta)[:, None, None]
    s = s[:, None, None]
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)       # (H, W) each
    u = cols[None] - cx - t[:, 0, None, None]                # p_out - c - t, x part: (B, H, W)
    v = rows[None] - cy - t[:, 1, None, None]                #                y part
    xs = cx + (cos * u - sin * v) / s                        # p_in: (B, H, W)
    ys = cy + (sin * u + cos * v) / s

    x0 = np.floor(xs).astype(np.intp)
    y0 = np.floor(ys).astype(np.intp)
    a = (xs - x0).astype(x.dtype)[:, None]                   # (B, 1, H, W)
    b = (ys - y0).astype(x.dtype)[:, None]
    flat = x.reshape(B, C, H * W)
    fill = x.dtype.type(fill)
    out = np.zeros_like(x)
    for yy, xx, w in ((y0, x0, (1 - a) * (1 - b)), (y0, x0 + 1, a * (1 - b)),
                      (y0 + 1, x0, (1 - a) * b), (y0 + 1, x0 + 1, a * b)):
        inside = (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)          # (B, H, W)
        index = np.where(inside, yy * W + xx, 0).reshape(B, 1, H * W)  # flat pixel index
        values = np.take_along_axis(flat, np.broadcast_to(index, (B, C, H * W)), axis=2)
        values = np.where(inside[:, None], values.reshape(B, C, H, W), fill)
        out += w * values
    return out[0] if single else out


def _pair(value, name):
    if isinstance(value, numbers.Real):
        return (-float(value), float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: expected (min, max) with min <= max, got {value!r}")
    return lo, hi


class RandomAffine:
    """Random rotation, shift and zoom, drawn independently for each image.

    Args:
        degrees: angle range: ``d`` means uniform in ``[-d, d]``; or ``(min, max)``.
        translate: ``(a, b)``: horizontal shift uniform in ``[-a*W, a*W]``,
            vertical in ``[-b*H, b*H]``, rounded to whole pixels; ``None`` = no shift.
        scale: ``(min, max)`` zoom range, uniform; ``None`` = no zoom.
        fill: value for pixels that come from outside the image.

    Same meaning as ``torchvision.transforms.RandomAffine`` (no shear). The
    geometry is in :func:`affine`.
    """

    def __init__(self, degrees=0.0, translate=None, scale=None, fill=0.0):
        self.degrees = _pair(degrees, "RandomAffine degrees")
        if translate is not None:
            translate = tuple(float(v) for v in translate)
            if len(translate) != 2 or not all(0 <= v <= 1 for v in translate):
                raise ValueError("RandomAffine translate: expected (a, b) fractions in [0, 1], "
                                 f"got {translate!r}")
        self.translate = translate
        if scale is not None:
            scale = _pair(scale, "RandomAffine scale")
            if scale[0] <= 0:
                raise ValueError(f"RandomAffine scale: expected positive factors, got {scale!r}")
        self.scale = scale
        self.fill = float(fill)

    def sample(self, batch, height, width):
        """Draw ``(angles (B,), shifts (B, 2), scales (B,))`` from the framework's generator."""
        g = _rng.generator()
        angles = g.uniform(*self.degrees, size=batch)
        shifts = np.zeros((batch, 2))
        if self.translate is not None:
            max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
            shifts = np.round(g.uniform(-1.0, 1.0, size=(batch, 2)) * [max_dx, max_dy])
        scales = np.ones(batch) if self.scale is None else g.uniform(*self.scale, size=batch)
        return angles, shifts, scales

    def __call__(self, x):
        x = _check_float_image(x, type(self).__name__)
        batch = 1 if x.ndim == 3 else x.shape[0]
        angles, shifts, scales = self.sample(batch, x.shape[-2], x.shape[-1])
        if x.ndim == 3:
            angles, shifts, scales = angles[0], shifts[0], scales[0]
        return affine(x, angles, shifts, scales, fill=self.fill)

    def __repr__(self):
        return (f"{type(self).__name__}(degrees={self.degrees}, translate={self.translate}, "
                f"scale={self.scale}, fill={self.fill})")


class RandomShift(RandomAffine):
    """Shift each image by a whole number of pixels, uniform in ``-max_px .. max_px``
    along each axis independently. Whole-pixel shifts are exact copies (no blur)."""

    def __init__(self, max_px: int, fill=0.0):
        if not isinstance(max_px, numbers.Integral) or max_px < 0:
            raise ValueError(f"RandomShift: max_px must be a non-negative int, got {max_px!r}")
        super().__init__(fill=fill)
        self.max_px = int(max_px)

    def sample(self, batch, height, width):
        shifts = _rng.generator().integers(-self.max_px, self.max_px + 1, size=(batch, 2))
        return np.zeros(batch), shifts.astype(np.float64), np.ones(batch)

    def __repr__(self):
        return f"RandomShift(max_px={self.max_px}, fill={self.fill})"


class RandomRotation(RandomAffine):
    """Rotate each image about its centre by an angle uniform in ``[-d, d]`` degrees
    (or ``(min, max)``); counter-clockwise is positive."""

    def __init__(self, degrees, fill=0.0):
        super().__init__(degrees=degrees, fill=fill)

    def __repr__(self):
        return f"RandomRotation(degrees={self.degrees}, fill={self.fill})"


class RandomScale(RandomAffine):
    """Zoom each image about its centre by a factor uniform in ``[min_scale, max_scale]``."""

    def __init__(self, min_scale, max_scale, fill=0.0):
        super().__init__(scale=(min_scale, max_scale), fill=fill)

    def __repr__(self):
        return f"RandomScale(min_scale={self.scale[0]}, max_scale={self.scale[1]}, fill={self.fill})"
