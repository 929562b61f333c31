"""Child process of the flywheel: train (or fine-tune) the digits CNN and save it as .keras.

    python examples/flywheel/train.py --data train.npz --out model.keras [--base v1.keras]
        [--epochs 12] [--lr 1e-3] [--seed 0]

``train.npz`` holds ``x`` (N, 8, 8) uint8 pixels and ``y`` labels. Without ``--base`` the model
is the compiler's digits CNN trained from scratch (``compiler.digits.train``); with it, the base
model's weights are the start and every layer is trained at ``--lr``. TensorFlow runs only here,
so the flywheel's own process stays small.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compiler import digits  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--base", type=Path)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    data = np.load(a.data)
    x, y = digits.to_float(data["x"]), data["y"]
    if a.base is None:
        tmp = a.out.with_suffix(".float.npz")
        np.savez(tmp, x=x, y=y)
        digits.train(tmp, a.out, a.epochs, a.seed)
        tmp.unlink()
        return 0
    import keras

    keras.utils.set_random_seed(a.seed)
    model = keras.models.load_model(a.base)
    model.compile(optimizer=keras.optimizers.Adam(a.lr), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=a.epochs, batch_size=32, shuffle=True, verbose=0)
    model.save(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
