"""The autograd engine, what a student reads first (in this order).

* ``tensor.py``    — :class:`Tensor`, :class:`Function`, ``no_grad``: operations record the graph as they run;
* ``engine.py``    — backward: :func:`topological_order`, then :func:`backpropagate` (the chain rule);
  :func:`grad` (gradients returned, and gradients of gradients with ``create_graph=True``);
* ``observer.py``  — one hook that sees every operation run (``observe``): the two tools below use it;
* ``gradcheck.py`` — :func:`gradcheck`: analytic gradients against central differences;
* ``anomaly.py``   — :func:`detect_anomaly`: the first Function that made a NaN or an Inf;
* ``graph.py``     — :func:`draw_graph`: the recorded graph, drawn (SVG in Jupyter, ``.svg`` / ``.png`` files);
* ``trace.py``     — :func:`trace_backward`: backward, one Function at a time.
"""
from .anomaly import AnomalyError, detect_anomaly
from .engine import backpropagate, grad, topological_order
from .gradcheck import GradcheckError
from .graph import Graph, ModuleRecord, draw_graph, record_modules
from .observer import OperationObserver, observe
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad
from .trace import BackwardStep, trace_backward

# (mc.tensor and mc.gradcheck are the functions; minicnn.autograd.tensor / .gradcheck the modules)
__all__ = ["Tensor", "Function", "no_grad", "enable_grad", "is_grad_enabled",
           "topological_order", "backpropagate", "grad", "OperationObserver", "observe",
           "GradcheckError", "detect_anomaly", "AnomalyError",
           "draw_graph", "record_modules", "Graph", "ModuleRecord", "trace_backward", "BackwardStep"]
