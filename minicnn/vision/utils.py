"""torchvision's ``make_grid``: a batch of images tiled into one picture."""
from __future__ import annotations

import math

import numpy as np

from ..autograd.tensor import Tensor
from ..backend import to_device
from ..io import to_numpy

__all__ = ["make_grid"]


def make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None, scale_each=False,
              pad_value=0.0):
    """Tile images ``(B, C, H, W)`` (or a list of ``(C, H, W)``) into one ``(C', H', W')`` Tensor.

    torchvision's formula: 1-channel images become 3 channels (repeated);
    ``xmaps = min(nrow, B)`` images per row, ``ymaps = ceil(B / xmaps)`` rows;
    the grid is ``(C, ymaps*(H+padding)+padding, xmaps*(W+padding)+padding)``
    filled with ``pad_value``, image ``k`` copied at row ``k // xmaps``,
    column ``k % xmaps``, top-left corner ``(y*(H+padding)+padding,
    x*(W+padding)+padding)``. ``normalize`` first maps ``value_range`` (default:
    the min and max, of each image with ``scale_each``) to [0, 1], clamping.
    A single image comes back as it is (after the channel and normalize steps).
    """
    if isinstance(tensor, (list, tuple)):
        array = np.stack([to_numpy(t) if isinstance(t, Tensor) else np.asarray(t) for t in tensor])
    else:
        array = to_numpy(tensor) if isinstance(tensor, Tensor) else np.asarray(tensor)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        if array.shape[0] == 1:
            array = np.concatenate([array] * 3, axis=0)
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"make_grid: expected images (B, C, H, W), got shape {array.shape}")
    if array.shape[1] == 1:
        array = np.concatenate([array] * 3, axis=1)
    if normalize:
        if value_range is not None and not isinstance(value_range, tuple):
            raise TypeError("value_range has to be a tuple (min, max) if specified. min and max are numbers")
        array = array.astype(np.result_type(array.dtype, np.float32), copy=True)

        def norm(img):
            low, high = value_range if value_range is not None else (float(img.min()), float(img.max()))
            np.clip(img, low, high, out=img)
            img -= low
            img /= max(high - low, 1e-5)

        for img in (array if scale_each else [array]):
            norm(img)
    if array.shape[0] == 1:
        out = array[0]
    else:
        nmaps = array.shape[0]
        xmaps = min(nrow, nmaps)
        ymaps = int(math.ceil(float(nmaps) / xmaps))
        height, width = array.shape[2] + padding, array.shape[3] + padding
        out = np.full((array.shape[1], height * ymaps + padding, width * xmaps + padding), pad_value,
                      dtype=array.dtype)
        for k in range(nmaps):
            y, x = divmod(k, xmaps)
            out[:, y * height + padding:(y + 1) * height, x * width + padding:(x + 1) * width] = array[k]
    out = np.ascontiguousarray(out)
    return Tensor(to_device(out), dtype=out.dtype)
