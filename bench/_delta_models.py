"""The digits model in three versions, for ``python -m bench delta`` and the delta tests.

``base`` is the digits CNN as ``python -m compiler digits`` trains it (seed 0, 12 epochs);
``head`` is base with only its last Dense layer retrained (3 more epochs, every other layer
frozen); ``finetune`` is base with every layer trained 2 more epochs at a tenth of the learning
rate. Each is built into a bundle by ``python -m compiler build`` from the same calibration and
validation data, so the bundles differ only where the weights (and what follows from them:
quantization scales, self-test vectors, report) differ.

Training runs in a child process (``python -m bench._delta_models train DIR``: TensorFlow stays
out of the caller); everything is cached under ``.pytest_cache/edgefleet/delta-*`` by the
source of ``compiler/`` and this file.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".pytest_cache" / "edgefleet"
VARIANTS = ("base", "head", "finetune")
VERSIONS = {"base": "1.0.0", "head": "1.1.0", "finetune": "1.2.0"}
SEED = 0


def _source_hash() -> str:
    h = hashlib.sha256()
    for d in ("compiler",):
        for p in sorted((REPO / d).rglob("*.py")):
            h.update(p.relative_to(REPO).as_posix().encode())
            h.update(p.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def train(out: Path) -> None:
    """Child process: write base.keras, head.keras, finetune.keras and the data .npz files."""
    import keras

    from compiler import digits

    split = digits.load_split(SEED)
    x = digits.to_float(split.train_pixels)
    out.mkdir(parents=True, exist_ok=True)
    train_npz = out / "train.npz"
    np.savez(train_npz, x=x, y=split.train_y)
    np.savez(out / "calibration.npz", x=digits.calibration(split, SEED))
    np.savez(out / "validation.npz", x=digits.to_float(split.test_pixels), y=split.test_y)
    digits.train(train_npz, out / "base.keras", 12, SEED)

    keras.utils.set_random_seed(SEED + 1)
    head = keras.models.load_model(out / "base.keras")
    for layer in head.layers[:-1]:
        layer.trainable = False
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(x, split.train_y, epochs=3, batch_size=32, shuffle=True, verbose=0)
    head.save(out / "head.keras")

    keras.utils.set_random_seed(SEED + 2)
    fine = keras.models.load_model(out / "base.keras")
    fine.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    fine.fit(x, split.train_y, epochs=2, batch_size=32, shuffle=True, verbose=0)
    fine.save(out / "finetune.keras")


def bundles(timeout: float = 1800) -> dict[str, Path]:
    """The three bundle directories (unsigned manifests), built once per source version."""
    root = CACHE / f"delta-{_source_hash()}"
    out = {v: root / v for v in VARIANTS}
    if all((p / "manifest.json").exists() for p in out.values()):
        return out
    models = root / "models"
    if not (models / "finetune.keras").exists():
        shutil.rmtree(models, ignore_errors=True)
        _run([sys.executable, "-m", "bench._delta_models", "train", str(models)], timeout)
    for v, path in out.items():
        if (path / "manifest.json").exists():
            continue
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = [sys.executable, "-m", "compiler", "build", str(models / f"{v}.keras")]
        argv += ["--calibration", str(models / "calibration.npz"), "--validation", str(models / "validation.npz")]
        argv += ["--name", "digits", "--version", VERSIONS[v], "--out", str(tmp), "--quiet"]
        _run(argv, timeout)
        tmp.rename(path)
    return out


def _run(argv: list[str], timeout: float) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "train":
        train(Path(sys.argv[2]))
    else:
        print("usage: python -m bench._delta_models train DIR", file=sys.stderr)
        sys.exit(2)
