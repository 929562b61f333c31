"""Regenerate ``gather_oob.tflite`` (needs TensorFlow; run from the repo root with the venv).

A tiny float model that works on dark images and fails at invoke on bright ones:
``index = int(max(pixel) * 100)`` then ``GATHER`` from a 10-row table, so any pixel above 0.09
raises "gather index out of bounds". It passes a self-test made of a dark image and then errors
on live traffic: the failure a self-test cannot see, which the agent's probation must catch.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import numpy as np
    import tensorflow as tf

    table = tf.constant(np.eye(10, dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32, name="image")])
    def f(x: tf.Tensor) -> tf.Tensor:
        idx = tf.cast(tf.reduce_max(x) * 100.0, tf.int32)
        return tf.reshape(tf.gather(table, idx), [1, 10])

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    out = Path(__file__).with_name("gather_oob.tflite")
    out.write_bytes(conv.convert())
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
