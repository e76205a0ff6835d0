"""Quantization: observers, fake quantization, post-training (PTQ) and quantization-aware
training (QAT), an int8 integer path, FP16 weights and a quantized checkpoint format.

The names are ``torch.ao.quantization``'s::

    from minicnn import quant
    prepared = quant.prepare(model, observer="minmax", per_channel=True)   # fold BN, add observers
    quant.calibrate(prepared, train_loader, max_images=1000)
    qmodel = quant.convert(prepared)           # int8 weights, uint8 activations, int32 accumulators
    qmodel(x)                                  # float logits from the integer path

    qat = quant.prepare_qat(model)             # fake quantization in the training forward
    fit(qat, optimizer, loader, epochs, callbacks=[quant.QATSchedule(1, 2)])
    qmodel = quant.convert(qat)

Read in this order: ``functional/quant.py`` (fake quantization), ``observers.py``
(scale and zero point), ``fuse.py`` (BN folding), ``prepare.py`` (PTQ/QAT),
``quantized.py`` (the integer path), ``checkpoint.py`` (files on disk, FP16).
"""
from .checkpoint import (is_quantized_checkpoint, load_quantized, save_fp16, save_quantized,
                         half_weights)
from .fuse import ConvReLU2d, LinearReLU, QuantError, fold_bn, fuse
from .observers import (MinMaxObserver, MovingAverageMinMaxObserver, ObserverError,
                        PerChannelMinMaxObserver, PercentileObserver, calculate_qparams)
from .prepare import (FakeQuantize, QATSchedule, QuantLayer, QuantPrepared, QuantStub, calibrate,
                      freeze_bn_stats, freeze_observers, prepare, prepare_qat)
from .quantized import (QuantizedLayer, QuantizedModel, QuantizeInput, convert, quantize_multiplier,
                        requantize, rounding_shift)

__all__ = [
    "MinMaxObserver", "MovingAverageMinMaxObserver", "PerChannelMinMaxObserver", "PercentileObserver",
    "ObserverError", "calculate_qparams", "ConvReLU2d", "LinearReLU", "QuantError", "fold_bn", "fuse",
    "FakeQuantize", "QATSchedule", "QuantLayer", "QuantPrepared", "QuantStub", "calibrate",
    "freeze_bn_stats", "freeze_observers", "prepare", "prepare_qat", "QuantizedLayer", "QuantizedModel",
    "QuantizeInput", "convert", "quantize_multiplier", "requantize", "rounding_shift",
    "save_quantized", "load_quantized", "is_quantized_checkpoint", "save_fp16", "half_weights",
]
