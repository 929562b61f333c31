"""A synthetic bundle of a chosen size, shaped like the compiler's output (the hub signs it on
push): a model file of random bytes, labels, a drift baseline and a report. For benches, tests
and the simulated demo: the simulator never runs the model, so its bytes only need a size."""

from __future__ import annotations

import json
import random
from pathlib import Path

from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, Requirements, pack_archive
from protocol.signing import Envelope, seal

BASELINE = {
    "schema": 1,
    "samples": 1000,
    "inputs": {"brightness": {"edges": [0.2, 0.4, 0.6, 0.8], "ref": [100, 250, 300, 250, 100]}},
    "outputs": {"top1_class": {"edges": [0.5, 1.5], "ref": [334, 333, 333]}},
    "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100},
}


def synthetic_archive(size: int, name: str = "sim-model", version: str = "1.0.0", seed: int = 0) -> bytes:
    """An unsigned bundle archive of about ``size`` bytes (the model takes what the rest leaves)."""
    env, files = _synthetic(size, name, version, seed)
    return pack_archive(env, files)


def synthetic_bundle_dir(out: Path, size: int, name: str = "sim-model", version: str = "1.0.0") -> Path:
    """The same bundle as a compiler output directory (``hub models push DIR`` takes it)."""
    env, files = _synthetic(size, name, version, 0)
    out.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (out / n).write_bytes(data)
    (out / MANIFEST_FILE).write_bytes(env.to_bytes())
    return out


def _synthetic(size: int, name: str, version: str, seed: int) -> tuple[Envelope, dict[str, bytes]]:
    files = {
        "labels.txt": b"zero\none\ntwo\n",
        "baseline.json": json.dumps(BASELINE).encode(),
        "report.json": json.dumps({"accuracy": {"int8": 0.97}, "synthetic": True}).encode(),
    }
    rest = sum(len(v) for v in files.values()) + 2048  # the manifest envelope and archive header
    files["model_int8.tflite"] = random.Random(f"{name}/{version}/{seed}").randbytes(max(1024, size - rest))
    roles = {
        "model_int8.tflite": "tflite_int8",
        "labels.txt": "labels",
        "baseline.json": "baseline",
        "report.json": "report",
    }
    arts = tuple(Artifact.of(n, roles[n], data) for n, data in files.items())
    m = Manifest(
        name,
        version,
        1,
        arts,
        Requirements(edgetpu="optional"),
        {"task": "classification", "num_classes": 3, "labels": "labels.txt"},
    )
    return seal("manifest", m.to_dict(), []), files
