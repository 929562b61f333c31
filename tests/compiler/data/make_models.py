"""Test helper (run as a child process): small real Keras models for the build tests.

    python make_models.py OUT_DIR

writes ``digits_dyn.keras`` (the digits CNN with a *dynamic* batch, 3 epochs), ``saved_model/``
(the same model exported as a SavedModel), ``spatial_dyn.keras`` (dynamic H and W), ``lstm.keras``
(its int8 conversion crashes TensorFlow), ``leaky.keras`` (a LeakyReLU CNN: int8 but not Edge TPU
mappable) and ``digits.npz`` (cal / val splits as uint8
pixels: ``cal_x``, ``val_x``, ``val_y``).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import keras  # noqa: E402

from compiler import digits  # noqa: E402


def cnn(inp, act="relu"):
    h = keras.layers.Conv2D(16, 3, padding="same")(inp)
    h = keras.layers.LeakyReLU(0.1)(h) if act == "leaky" else keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    return keras.layers.Dense(10, activation="softmax")(h)


def main(out: Path) -> None:
    keras.utils.set_random_seed(1)
    out.mkdir(parents=True, exist_ok=True)
    split = digits.load_split(0)
    x, y = digits.to_float(split.train_pixels), split.train_y
    inp = keras.Input((8, 8, 1), name="image")
    m = keras.Model(inp, cnn(inp))
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    m.save(out / "digits_dyn.keras")
    m.export(str(out / "saved_model"), verbose=False)
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")
    leaky = keras.Model(inp, cnn(inp, "leaky"))
    leaky.compile("adam", "sparse_categorical_crossentropy")
    leaky.fit(x, y, epochs=3, batch_size=32, verbose=0)
    leaky.save(out / "leaky.keras")
    inp = keras.Input((None, None, 1), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h)).save(out / "spatial_dyn.keras")
    inp = keras.Input((8, 8), batch_size=1, name="seq")  # int8 LSTM conversion segfaults TF 2.21
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.LSTM(8)(inp))).save(out / "lstm.keras")
    np.savez(out / "digits.npz", cal_x=split.train_pixels[:200], val_x=split.test_pixels, val_y=split.test_y)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
