"""Example: Keras MobileNetV2 (weights=None) for latency work.

    python examples/mobilenet/build.py --out build/mobilenet [--size 224] [--samples 32]

Random weights, random calibration images in [-1, 1] and random validation labels: the
accuracy numbers mean nothing, so the gate runs with ``--max-accuracy-drop 100`` (it still
records float/int8 agreement). What this example is for: sizes, op mapping (all 35 CONV_2D,
17 DEPTHWISE_CONV_2D, 10 ADD, MEAN, FULLY_CONNECTED, SOFTMAX are on Coral's list) and the
latency of each artifact on this machine (the report and ``python -m bench edge_latency``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compiler.__main__ import main as compile_main  # noqa: E402


def make_model(size: int, path: Path, seed: int = 0) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), batch_size=1, name="image")
    base = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=1000)
    keras.Model(inp, base(inp), name=f"mobilenet_v2_{size}").save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    p.add_argument("--samples", type=int, default=32, help="calibration and validation samples (default 32)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        make_model(a.size, t / "mobilenet.keras")
        shape = (a.samples, a.size, a.size, 3)
        np.savez(t / "cal.npz", x=rng.uniform(-1, 1, shape).astype(np.float32))
        np.savez(t / "val.npz", x=rng.uniform(-1, 1, shape).astype(np.float32), y=rng.integers(0, 1000, a.samples))
        args = [
            "build",
            str(t / "mobilenet.keras"),
            "--calibration",
            str(t / "cal.npz"),
            "--validation",
            str(t / "val.npz"),
            "--out",
            str(a.out),
            "--name",
            f"mobilenet_v2_{a.size}",
            "--max-accuracy-drop",
            "100",
        ]
        return compile_main(args + (["--quiet"] if a.quiet else []))


if __name__ == "__main__":
    sys.exit(main())
