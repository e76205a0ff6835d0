"""torchvision's per-image transforms: ``ToTensor``, ``Normalize``, ``Compose``, ``Lambda``,
``Pad``, ``RandomCrop``, ``RandomHorizontalFlip``, ``RandomVerticalFlip``.

Two kinds of image, as in torchvision (where the first is a PIL image):

* a NumPy array ``(H, W)`` or ``(H, W, C)`` — what a dataset's ``ds[i]`` gives
  (see :mod:`minicnn.vision.datasets`);
* a minicnn Tensor ``(..., H, W)`` — what :class:`ToTensor` returns.

Each transform returns the kind it was given. The random ones draw from
minicnn's generator (:func:`minicnn.rng.generator`), in torchvision's order
(RandomCrop: the top row, then the left column), so ``mc.manual_seed`` fixes
them. For transforms on a whole batch at once (faster), see
:mod:`minicnn.data.transforms`.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import rng
from ..autograd.tensor import Tensor
from ..backend import to_device
from ..data import transforms as batch_transforms
from ..io import to_numpy

__all__ = ["Compose", "Lambda", "Normalize", "Pad", "RandomCrop", "RandomHorizontalFlip",
           "RandomVerticalFlip", "ToTensor"]

Compose = batch_transforms.Compose


class Lambda:
    """A user function as a transform: ``Lambda(lambda x: x * 2)``."""

    def __init__(self, lambd):
        if not callable(lambd):
            raise TypeError(f"Argument lambd should be callable, got {type(lambd).__name__!r}")
        self.lambd = lambd

    def __call__(self, img):
        return self.lambd(img)

    def __repr__(self):
        return "Lambda()"


def _spatial(img):
    """``(array, axis of H, rebuild)``: the host array of an image and how to give back its kind."""
    if isinstance(img, Tensor):
        array = to_numpy(img)
        if array.ndim < 2:
            raise ValueError(f"expected a Tensor image (..., H, W), got shape {array.shape}")
        return array, array.ndim - 2, lambda a: Tensor(to_device(np.ascontiguousarray(a)), dtype=a.dtype)
    array = np.asarray(img)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an array image (H, W) or (H, W, C), got shape {array.shape}")
    return array, 0, np.ascontiguousarray


class ToTensor:
    """An array image ``(H, W)`` or ``(H, W, C)`` -> a Tensor ``(C, H, W)``.

    uint8 pixels are scaled to float32 in [0, 1] (``x / 255``); other dtypes
    keep their values and dtype (torchvision's rule for NumPy arrays). A PIL
    image works too (it is read with ``np.asarray``).
    """

    def __call__(self, pic):
        if isinstance(pic, Tensor):
            raise TypeError("pic should be a NumPy array or PIL image, got a Tensor (already converted?)")
        array = np.asarray(pic)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise ValueError(f"pic should be 2 or 3 dimensional, got {array.ndim} dimensions")
        array = array.transpose(2, 0, 1)
        array = batch_transforms.to_float(array) if array.dtype == np.uint8 else array
        return Tensor(to_device(np.ascontiguousarray(array)), dtype=array.dtype)

    def __repr__(self):
        return "ToTensor()"


class Normalize:
    """``out[c] = (x[c] - mean[c]) / std[c]`` on a float Tensor ``(..., C, H, W)``."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace
        self._normalize = batch_transforms.Normalize(mean, std)

    def __call__(self, tensor):
        array = to_numpy(tensor) if isinstance(tensor, Tensor) else np.asarray(tensor)
        if array.dtype.kind != "f":
            raise TypeError(f"Input tensor should be a float tensor. Got {array.dtype}.")
        out = self._normalize(array)
        return Tensor(to_device(out), dtype=out.dtype) if isinstance(tensor, Tensor) else out

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


def _padding4(padding):
    """torchvision's padding: int, (left/right, top/bottom) or (left, top, right, bottom)."""
    if isinstance(padding, numbers.Integral):
        return (int(padding),) * 4
    padding = tuple(int(p) for p in padding)
    if len(padding) == 1:
        return padding * 4
    if len(padding) == 2:
        return padding * 2
    if len(padding) == 4:
        return padding
    raise ValueError(f"Padding must be an int or a 1, 2, or 4 element sequence, not {len(padding)}")


_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect", "symmetric": "symmetric"}


def pad(img, padding, fill=0, padding_mode="constant"):
    """Pad the image's borders: ``padding`` as in :func:`_padding4`, ``padding_mode`` one of
    constant (with ``fill``), edge, reflect, symmetric."""
    if padding_mode not in _MODES:
        raise ValueError(f"Padding mode should be either constant, edge, reflect or symmetric, "
                         f"got {padding_mode!r}")
    left, top, right, bottom = _padding4(padding)
    array, h, rebuild = _spatial(img)
    widths = [(0, 0)] * array.ndim
    widths[h], widths[h + 1] = (top, bottom), (left, right)
    extra = {"constant_values": fill} if padding_mode == "constant" else {}
    return rebuild(np.pad(array, widths, mode=_MODES[padding_mode], **extra))


class Pad:
    """Pad every border (see :func:`pad`)."""

    def __init__(self, padding, fill=0, padding_mode="constant"):
        _padding4(padding)
        self.padding, self.fill, self.padding_mode = padding, fill, padding_mode

    def __call__(self, img):
        return pad(img, self.padding, self.fill, self.padding_mode)

    def __repr__(self):
        return f"Pad(padding={self.padding}, fill={self.fill}, padding_mode={self.padding_mode})"


class RandomCrop:
    """Crop a random ``size`` window, after padding the borders by ``padding``.

    torchvision's order: pad by ``padding``; with ``pad_if_needed``, an image
    narrower (shorter) than ``size`` gets the missing width (height) added on
    both sides; draw the top row ``i`` uniformly in ``0..H-h``, then the left
    column ``j`` in ``0..W-w``; crop.
    The CIFAR recipe is ``RandomCrop(32, padding=4)``.
    """

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        self.size = (int(size), int(size)) if isinstance(size, numbers.Integral) else tuple(int(s) for s in size)
        if len(self.size) != 2:
            raise ValueError(f"size should be an int or a (height, width) pair, got {size!r}")
        if padding is not None:
            _padding4(padding)
        self.padding, self.pad_if_needed = padding, pad_if_needed
        self.fill, self.padding_mode = fill, padding_mode

    @staticmethod
    def get_params(img, output_size):
        """``(i, j, h, w)``: a random crop window of ``output_size`` inside ``img``."""
        array, h_axis, _ = _spatial(img)
        height, width = array.shape[h_axis], array.shape[h_axis + 1]
        th, tw = output_size
        if height < th or width < tw:
            raise ValueError(f"Required crop size {(th, tw)} is larger than input image size "
                             f"{(height, width)}")
        if height == th and width == tw:
            return 0, 0, height, width
        g = rng.generator()
        i = int(g.integers(0, height - th + 1))
        j = int(g.integers(0, width - tw + 1))
        return i, j, th, tw

    def __call__(self, img):
        if self.padding is not None:
            img = pad(img, self.padding, self.fill, self.padding_mode)
        array, h_axis, _ = _spatial(img)
        height, width = array.shape[h_axis], array.shape[h_axis + 1]
        if self.pad_if_needed and width < self.size[1]:
            img = pad(img, (self.size[1] - width, 0), self.fill, self.padding_mode)
        if self.pad_if_needed and height < self.size[0]:
            img = pad(img, (0, self.size[0] - height), self.fill, self.padding_mode)
        i, j, h, w = self.get_params(img, self.size)
        array, h_axis, rebuild = _spatial(img)
        window = [slice(None)] * array.ndim
        window[h_axis], window[h_axis + 1] = slice(i, i + h), slice(j, j + w)
        return rebuild(array[tuple(window)])

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class _RandomFlip:
    axis = 1              # 0 = rows (vertical flip), 1 = columns (horizontal flip)

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p should be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, img):
        if rng.generator().random() < self.p:
            array, h_axis, rebuild = _spatial(img)
            return rebuild(np.flip(array, axis=h_axis + self.axis))
        return img

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p})"


class RandomHorizontalFlip(_RandomFlip):
    """Mirror left-right with probability ``p`` (one uniform draw per call: flip when < p)."""

    axis = 1


class RandomVerticalFlip(_RandomFlip):
    """Mirror top-bottom with probability ``p``."""

    axis = 0
