"""The digits model in four versions, for ``python -m bench delta`` and the delta tests.

Two models: ``digits`` (default) is the 38k-parameter CNN ``python -m compiler digits`` trains;
``wide`` is the same layers made wider (64 and 128 filters, a 1,024-unit Dense: 2.18M
parameters, the size of the synthetic model issue 18 measured its byte diffs on), trained on the
same data, so the bench can tell what of a delta is fixed cost (signed envelope, records) and
what grows with the weights.

``base`` is the model trained from scratch (seed 0, 12 epochs); ``head`` is base with only its
last Dense layer retrained (3 more epochs, every other layer frozen); ``finetune`` is base with
every layer trained 2 more epochs at a tenth of the learning rate (27-31 % of the int8 model's
bytes differ); ``small`` is the same at a hundredth (10 %: the issue's "small fine-tune"
differed in 7.8 % of its bytes). The delta tests use the first three (``VARIANTS``), the bench
all four (``ALL``). Each is built into a bundle by ``python -m compiler build`` from the same
calibration and validation data, so the bundles differ only where the weights (and what follows
from them: quantization scales, self-test vectors, report) differ.

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
MODELS = ("digits", "wide")
WIDTHS = {"digits": (16, 32, 64), "wide": (64, 128, 1024)}  # compiler.digits.train's width
VARIANTS = ("base", "head", "finetune")
ALL = (*VARIANTS, "small")
VERSIONS = {"base": "1.0.0", "head": "1.1.0", "finetune": "1.2.0", "small": "1.3.0"}
SEED = 0


def _source_hash() -> str:
    h = hashlib.sha256()
    for d in ("compiler",):
        for p in sorted((REPO / d).rglob("*.py")):
            h.update(p.relative_to(REPO).as_posix().encode())
            h.update(p.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def train(out: Path, model: str = "digits") -> None:
    """Child process: write base.keras, head.keras, finetune.keras, small.keras and the data .npz files."""
    import keras

    from compiler import digits

    split = digits.load_split(SEED)
    x = digits.to_float(split.train_pixels)
    out.mkdir(parents=True, exist_ok=True)
    train_npz = out / "train.npz"
    np.savez(train_npz, x=x, y=split.train_y)
    np.savez(out / "calibration.npz", x=digits.calibration(split, SEED))
    np.savez(out / "validation.npz", x=digits.to_float(split.test_pixels), y=split.test_y)
    digits.train(train_npz, out / "base.keras", 12, SEED, WIDTHS[model])

    # (saved as, seed, learning rate, epochs, only the last layer trained)
    for name, seed, lr, epochs, head_only in (
        ("head", SEED + 1, 1e-3, 3, True),
        ("finetune", SEED + 2, 1e-4, 2, False),
        ("small", SEED + 3, 1e-5, 2, False),
    ):
        keras.utils.set_random_seed(seed)
        m = keras.models.load_model(out / "base.keras")
        for layer in m.layers[:-1] if head_only else ():
            layer.trainable = False
        m.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
        m.fit(x, split.train_y, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
        m.save(out / f"{name}.keras")


def bundles(timeout: float = 1800, model: str = "digits", variants: tuple[str, ...] = VARIANTS) -> dict[str, Path]:
    """The bundle directories of ``model``'s ``variants`` (unsigned manifests), built once per
    source version."""
    if model not in MODELS:
        raise ValueError(f"model {model!r}: expected one of {', '.join(MODELS)}")
    root = CACHE / (f"delta-{_source_hash()}" if model == "digits" else f"delta-{model}-{_source_hash()}")
    out = {v: root / v for v in variants}
    if all((p / "manifest.json").exists() for p in out.values()):
        return out
    models = root / "models"
    if not (models / "small.keras").exists():  # the last train() writes
        shutil.rmtree(models, ignore_errors=True)
        _run([sys.executable, "-m", "bench._delta_models", "train", str(models), model], timeout)
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
    if len(sys.argv) in (3, 4) and sys.argv[1] == "train" and (sys.argv[3:] or ["digits"])[0] in MODELS:
        train(Path(sys.argv[2]), *sys.argv[3:])
    else:
        print(f"usage: python -m bench._delta_models train DIR [{'|'.join(MODELS)}]", file=sys.stderr)
        sys.exit(2)
