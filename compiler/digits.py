"""The digits example: scikit-learn's bundled 8x8 digits, a small CNN, and its preprocessing.

Pixels are ``round(x * 255 / 16)`` as uint8 (sklearn's values are 0..16), so an 8x8 grayscale
PNG is a valid request; the float input is ``pixel / 255`` (the manifest's preprocess spec).
Data handling here is numpy/scikit-learn only; :func:`train` imports Keras and runs only in the
conversion child process (see :mod:`compiler.convert`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LABELS = tuple(str(i) for i in range(10))
SCALE = 1.0 / 255.0
PREPROCESS: dict[str, Any] = {"kind": "image", "height": 8, "width": 8, "channels": 1, "scale": SCALE, "offset": 0.0}
TEST_SIZE = 360
CALIBRATION_SIZE = 300
WIDTH = (16, 32, 64)  # the CNN's two convolutions' filters and its hidden Dense layer's units


@dataclass(frozen=True)
class DigitsSplit:
    train_pixels: np.ndarray  # (N, 8, 8) uint8
    train_y: np.ndarray
    test_pixels: np.ndarray  # (360, 8, 8) uint8, never trained on
    test_y: np.ndarray


def load_split(seed: int) -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    y = d.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(pixels, y, test_size=TEST_SIZE, stratify=y, random_state=seed)
    return DigitsSplit(tr_x, tr_y, te_x, te_y)


def to_float(pixels: np.ndarray) -> np.ndarray:
    """(N, 8, 8) uint8 pixels -> (N, 8, 8, 1) float32 model input."""
    return (pixels.astype(np.float32) * np.float32(SCALE))[..., None]


def calibration(split: DigitsSplit, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(split.train_pixels), size=min(CALIBRATION_SIZE, len(split.train_pixels)), replace=False)
    return to_float(split.train_pixels[np.sort(idx)])


def train(train_npz: Path, out: Path, epochs: int, seed: int, width: tuple[int, int, int] = WIDTH) -> None:
    """Train the CNN on ``train_npz`` (x float input, y labels) and save it to ``out`` (.keras).

    ``width``: the two convolutions' filters and the hidden Dense layer's units (38k parameters
    by default; ``bench._delta_models`` trains a 2.18M-parameter one with (64, 128, 1024)).

    The input has a static batch of 1 (``keras.Input(..., batch_size=1)``) so the int8 model
    has static shapes and no SHAPE/PACK ops, as the Edge TPU compiler needs.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except (AttributeError, RuntimeError):  # pragma: no cover - older TF
        pass
    data = np.load(train_npz)
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")
    h = keras.layers.Conv2D(width[0], 3, activation="relu", padding="same")(inp)
    h = keras.layers.Conv2D(width[1], 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(width[2], activation="relu")(h)
    out_t = keras.layers.Dense(10, activation="softmax", name="scores")(h)
    model = keras.Model(inp, out_t, name="digits_cnn" if width == WIDTH else "digits_cnn_wide")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data["x"], data["y"], epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    model.save(out)
