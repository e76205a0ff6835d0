"""Checking what a file says before anything is built from it: checkpoint metadata and configs.

A checkpoint's metadata (epoch, batch, sample order, history, the model's
configuration) and a ``--config`` file come from outside the program: a file
edited by hand, written by another version, or corrupted. Each is checked
against a declarative JSON Schema (the ``jsonschema`` library) — types and
ranges — and then against what it will be used with (the run's data, the
tensors present in the file), *before* anything is allocated or trained. A
width of 5000 is refused with one sentence naming the field, not by NumPy's
"Unable to allocate 1.68 TiB" half a minute later.

Every error names the file (or option), the field, what was expected and the
value given, e.g. ``runs/a/last.ckpt: field 'epoch': -3 is less than the minimum of 0``.
"""
from __future__ import annotations

import math

import jsonschema
import numpy as np


class SchemaError(ValueError):
    """A file or an option whose content does not match what minicnn expects."""


def _finite(validator, wanted, instance, schema):
    """The ``"finite": true`` keyword: NaN and ±Inf are numbers to JSON Schema, not to us."""
    if wanted and isinstance(instance, float) and not math.isfinite(instance):
        yield jsonschema.ValidationError(f"{instance!r} is not a finite number")


def _is_integer(checker, instance):             # 3, np.int64(3); not True, not 3.0 (range(3.0) fails)
    return isinstance(instance, (int, np.integer)) and not isinstance(instance, bool)


def _is_number(checker, instance):
    return isinstance(instance, (int, float, np.integer, np.floating)) and not isinstance(instance, bool)


def _is_array(checker, instance):              # checkpoints keep tuples as tuples
    return isinstance(instance, (list, tuple))


# Draft 2020-12 with Python's (and NumPy's) numbers and tuples, plus the "finite" keyword.
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"finite": _finite},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number, "array": _is_array}))

INTEGER = {"type": "integer"}
NUMBER = {"type": "number", "finite": True}

# The training position and history stored in every checkpoint fit() writes.
RESUME_SCHEMA = {
    "type": "object",
    "required": ["epoch"],
    "properties": {
        "epoch": {**INTEGER, "minimum": 0},                   # epochs completed
        "batch": {**INTEGER, "minimum": 0},                   # batches done in the current epoch
        "sample": {**INTEGER, "minimum": 0},                  # samples done in the current epoch
        "batch_size": {**INTEGER, "minimum": 1},              # the batch size that wrote it
        "history": {"type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": ["number", "null"]}}},
        # (loss_sum, correct, seen, seconds) of the epoch so far
        "partial": {"anyOf": [{"type": "null"},
                              {"type": "array", "minItems": 4, "maxItems": 4,
                               "items": {**NUMBER, "minimum": 0}}]},
    },
}

# A checkpoint's "config" (written by `minicnn train`): what evaluate / predict rebuild.
MAX_CLASSES = 100_000
CONFIG_SCHEMA = {
    "type": "object",
    "required": ["model_name"],
    "properties": {
        "model_name": {"type": "string"},
        "num_classes": {**INTEGER, "minimum": 1, "maximum": MAX_CLASSES},
        "classes": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_CLASSES},
        "dataset": {"type": "string"},
        "input_shape": {"type": "array", "minItems": 3, "maxItems": 3,
                        "items": {**INTEGER, "minimum": 1, "maximum": 4096}},
        "normalization": {"type": "array", "minItems": 2, "maxItems": 2},
        "model_kwargs": {"type": "object", "properties": {
            "width": {**NUMBER, "exclusiveMinimum": 0, "maximum": 64},
            "in_channels": {**INTEGER, "minimum": 1, "maximum": 64},
            "input_size": {**INTEGER, "minimum": 1, "maximum": 4096},
            "kernel_size": {**INTEGER, "minimum": 1, "maximum": 31},
            "dropout": {**NUMBER, "minimum": 0, "maximum": 1},
        }},
        "args": {"type": "object"},
    },
}


def _field(error):
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def check(instance, schema, where):
    """Raise :class:`SchemaError` ``"<where>: field '<f>': <what is wrong>"`` unless ``instance`` fits."""
    error = jsonschema.exceptions.best_match(Validator(schema).iter_errors(instance))
    if error is not None:
        raise SchemaError(f"{where}: field {_field(error)!r}: {error.message}")


# -----------------------------------------------------------------------------
# Checkpoint metadata against the run it resumes
# -----------------------------------------------------------------------------
def check_resume(state, where, epochs, epoch_size=None, dataset_size=None, batch_size=None):
    """Check a checkpoint's training position before ``fit`` loads anything from it.

    ``epoch_size``: samples per epoch of this run's loader (None: unknown);
    ``dataset_size``: indices in the sample order must be below it;
    ``batch_size``: this run's, to convert an old checkpoint's batch position.
    Returns the position in the epoch, in samples.
    """
    check({k: state[k] for k in RESUME_SCHEMA["properties"].keys() | {"epoch"} if k in state},
          RESUME_SCHEMA, where)
    epoch = state["epoch"]
    if epoch > epochs:
        raise SchemaError(f"{where}: field 'epoch': the checkpoint has already trained {epoch} epochs, "
                          f"more than the {epochs} asked for (epochs / --epochs)")
    history = state.get("history")
    if history is not None:
        lengths = {k: len(v) for k, v in history.items()}
        if any(n != epoch for n in lengths.values()):
            raise SchemaError(f"{where}: field 'history': expected {epoch} entries per list (one per "
                              f"epoch completed), got {lengths}")
    order = state.get("order")
    if order is None:
        return 0
    if not isinstance(order, np.ndarray) or order.ndim != 1 or order.dtype.kind not in "iu":
        raise SchemaError(f"{where}: field 'order': expected a 1-D integer array (the epoch's sample "
                          f"order), got {type(order).__name__} {getattr(order, 'shape', '')}")
    if epoch_size is not None and len(order) != epoch_size:
        raise SchemaError(f"{where}: field 'order': the checkpoint's epoch has {len(order)} samples, "
                          f"this run's training set {epoch_size}: the training data is not the same "
                          "(another --limit-train, --val-split or --dataset?)")
    if len(order) and (order.min() < 0 or (dataset_size is not None and order.max() >= dataset_size)):
        raise SchemaError(f"{where}: field 'order': sample indices must be in [0, {dataset_size}), "
                          f"got values from {order.min()} to {order.max()}")
    saved_batch_size = state.get("batch_size", batch_size)
    if "sample" in state:
        sample = state["sample"]
    elif saved_batch_size is not None:
        sample = min(state.get("batch", 0) * saved_batch_size, len(order))
    else:
        sample = 0
    if sample > len(order):
        raise SchemaError(f"{where}: field 'sample': the position {sample} is past the end of the "
                          f"epoch ({len(order)} samples)")
    batch = state.get("batch", 0)
    if saved_batch_size is not None and batch > math.ceil(len(order) / saved_batch_size):
        raise SchemaError(f"{where}: field 'batch': batch {batch} is past the end of the epoch "
                          f"({len(order)} samples in batches of {saved_batch_size})")
    return sample


# -----------------------------------------------------------------------------
# A checkpoint's model configuration against the tensors present
# -----------------------------------------------------------------------------
def check_model_config(config, model_state, where, count_parameters):
    """Check ``config`` (see :data:`CONFIG_SCHEMA`) against the tensors in ``model_state``.

    ``count_parameters(config_at_width_1)`` builds the model at width 1 and
    counts its parameters: the network the config asks for has about that
    times ``width²``, and a checkpoint that holds far fewer numbers cannot be
    its weights (nothing that big is allocated to find out).
    """
    check(config, CONFIG_SCHEMA, where)
    classes, num_classes = config.get("classes"), config.get("num_classes")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise SchemaError(f"{where}: field 'classes': {len(classes)} class names for "
                          f"num_classes={num_classes} outputs")
    weights = [(k, v) for k, v in model_state.items()
               if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    if num_classes is not None and weights:
        name, classifier = weights[-1]                 # the last Linear layer
        if classifier.shape[0] != num_classes:
            raise SchemaError(f"{where}: field 'num_classes': {num_classes}, but the classifier "
                              f"{name} in the file has {classifier.shape[0]} outputs")
    present = sum(int(np.prod(getattr(v, "shape", ()))) for v in model_state.values())
    width = config.get("model_kwargs", {}).get("width", 1.0)
    if "architecture" not in config and width > 1:
        at_width_1 = dict(config, model_kwargs={**config.get("model_kwargs", {}), "width": 1.0})
        needed = count_parameters(at_width_1) * width ** 2
        if needed > 4 * present + 10_000:
            raise SchemaError(f"{where}: field 'model_kwargs.width': {width:g} asks for a network of "
                              f"about {needed:,.0f} parameters, but the file holds {present:,} numbers")
