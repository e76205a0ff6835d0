"""The autograd engine, what a student reads first.

* ``tensor.py``    — :class:`Tensor`, :class:`Function`, ``no_grad``: the graph is recorded as operations run;
* ``gradcheck.py`` — :func:`gradcheck`: analytic gradients against central differences;
* ``anomaly.py``   — :func:`detect_anomaly`: the first Function that made a NaN or an Inf.
"""
from .anomaly import AnomalyError, detect_anomaly
from .gradcheck import GradcheckError, gradcheck
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled",
           "gradcheck", "GradcheckError", "detect_anomaly", "AnomalyError"]
