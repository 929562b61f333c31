"""The ONNX twin for the cloud fallback (tf2onnx, opset 17). Runs only in the conversion child.

The twin keeps a dynamic batch dimension so the cloud can micro-batch; the TFLite artifacts
keep batch 1 for the Edge TPU.
"""

from __future__ import annotations

from typing import Any

OPSET = 17


def to_onnx(model: Any) -> tuple[bytes, str, str]:
    """Return ``(onnx bytes, input name, output name)``."""
    import tensorflow as tf
    import tf2onnx

    from .quantize import dynamic_batch

    dyn = dynamic_batch(model)
    name = dyn.inputs[0].name.split(":")[0] or "input"
    shape = [None] + [int(d) for d in dyn.inputs[0].shape[1:]]
    proto, _ = tf2onnx.convert.from_keras(
        dyn, input_signature=[tf.TensorSpec(shape, tf.float32, name=name)], opset=OPSET
    )
    return proto.SerializeToString(), proto.graph.input[0].name, proto.graph.output[0].name
