"""Float and full-int8 TFLite conversion with TensorFlow. Runs only in the conversion child.

Pitfalls handled (see ../shared/reference/edgetpu-toolchain.md §5.5-5.6): a Keras input with a
dynamic batch gives ``shape_signature [-1, ...]`` and SHAPE/STRIDED_SLICE/PACK ops, so a model is
re-wrapped with ``keras.Input(..., batch_size=1)`` before ``from_keras_model``;
``from_concrete_functions`` and the legacy converter are broken under Keras 3, so they are not
used; a SavedModel directory goes through ``from_saved_model`` and keeps whatever batch it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MAX_CALIBRATION = 500


class LoadError(Exception):
    """The model file cannot be loaded as a Keras model / SavedModel."""


def load_keras(path: Path) -> Any:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise LoadError(f"cannot load as a Keras model ({type(exc).__name__}: {str(exc)[:200]})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise LoadError(f"expected one input and one output, got {len(model.inputs)} and {len(model.outputs)}")
    return model


def static_batch(model: Any) -> tuple[Any, bool]:
    """Return ``(model with batch 1, whether it had to be re-wrapped)``."""
    import keras

    shape = tuple(model.inputs[0].shape)
    if shape[0] == 1:
        return model, False
    inp = keras.Input(shape[1:], batch_size=1, name=_input_name(model))
    return keras.Model(inp, model(inp), name=model.name), True


def dynamic_batch(model: Any) -> Any:
    import keras

    shape = tuple(model.inputs[0].shape)
    inp = keras.Input(shape[1:], name=_input_name(model))
    return keras.Model(inp, model(inp), name=model.name)


def _input_name(model: Any) -> str:
    name = getattr(model.inputs[0], "name", "") or "input"
    return name.split(":")[0] or "input"


def input_shape(model: Any) -> list[int | None]:
    return [None if d is None else int(d) for d in model.inputs[0].shape]


def output_shape(model: Any) -> list[int | None]:
    return [None if d is None else int(d) for d in model.outputs[0].shape]


def _representative(calibration: np.ndarray) -> Iterator[list[np.ndarray]]:
    for i in range(min(len(calibration), MAX_CALIBRATION)):
        yield [calibration[i : i + 1].astype(np.float32)]


def _converter(model: Any | None, saved_model: Path | None) -> Any:
    import tensorflow as tf

    if saved_model is not None:
        return tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    return tf.lite.TFLiteConverter.from_keras_model(model)


def to_float(model: Any | None, saved_model: Path | None = None) -> bytes:
    conv = _converter(model, saved_model)
    return bytes(conv.convert())


def to_int8(model: Any | None, calibration: np.ndarray, io_type: str, saved_model: Path | None = None) -> bytes:
    """Full-integer post-training quantization (per-channel weights, int8 kernels only)."""
    import tensorflow as tf

    conv = _converter(model, saved_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: _representative(calibration)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = tf.int8 if io_type == "int8" else tf.uint8
    conv.inference_input_type = io
    conv.inference_output_type = io
    return bytes(conv.convert())
