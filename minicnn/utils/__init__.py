"""``torch.utils`` under minicnn: :mod:`minicnn.utils.data` (``torch.utils.data``'s names)."""
from . import data

__all__ = ["data"]
