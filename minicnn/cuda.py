"""``mc.cuda``: PyTorch's ``torch.cuda.is_available()`` and ``device_count()``.

True only when CuPy imports and a GPU answers; asking does not switch
minicnn's backend (``MINICNN_BACKEND=cupy`` does; see ``minicnn/device.py``).
"""
from .device import probe_cuda


def is_available() -> bool:
    return device_count() > 0


def device_count() -> int:
    return probe_cuda()[1]
