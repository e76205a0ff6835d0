"""``mc.accelerator``: PyTorch's ``torch.accelerator`` (the GPU, if one answers)."""
from .cuda import device_count, is_available
from .device import device


def current_accelerator():
    """``device(type='cuda')`` when a CUDA GPU is usable, else None (as PyTorch without one)."""
    return device("cuda") if is_available() else None


__all__ = ["current_accelerator", "device_count", "is_available"]
