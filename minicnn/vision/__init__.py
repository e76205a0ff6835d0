"""``torchvision`` under minicnn: the same names for datasets, transforms and ``make_grid``.

A PyTorch program runs after changing ``torchvision`` to ``minicnn.vision``::

    from minicnn.vision import datasets, transforms
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST("data", train=True, download=True, transform=tf)

One difference, on purpose: minicnn does not depend on PIL, so a dataset's
item is ``(image, label)`` with the image a NumPy ``uint8`` array — ``(H, W)``
for MNIST, ``(H, W, 3)`` for CIFAR-10, the layout of ``np.asarray(pil_image)``
— where torchvision gives a PIL image. :class:`transforms.ToTensor` turns it
into a float32 ``(C, H, W)`` Tensor in [0, 1], exactly as torchvision's does
for a PIL image; the random transforms accept either form.

Modules: :mod:`~minicnn.vision.datasets`, :mod:`~minicnn.vision.transforms`,
:mod:`~minicnn.vision.utils`.
"""
from . import datasets, transforms, utils

__all__ = ["datasets", "transforms", "utils"]
