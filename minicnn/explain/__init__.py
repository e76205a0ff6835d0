"""Interpretability (tutorial 15): which pixels made the network decide.

* ``attributions.py`` — :func:`saliency`, :func:`smoothgrad`, :func:`integrated_gradients`,
  :func:`grad_cam`, :func:`occlusion`;
* ``cli.py``          — ``minicnn explain``.
"""
from .attributions import (grad_cam, integrated_gradients, last_conv_layer, occlusion, rank_correlation,
                           saliency, smoothgrad, upsample)

__all__ = ["saliency", "smoothgrad", "integrated_gradients", "grad_cam", "upsample", "occlusion",
           "last_conv_layer", "rank_correlation"]
