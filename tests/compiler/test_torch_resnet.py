"""The seed's ResNet-18 shape (torchvision's architecture, written out in
examples/seed_case_study/torch_models.py, random weights, 1x3x224x224) through the seed's
``torch.onnx.export`` and ``build`` with ImageNet's per-channel Normalize folded in: the latency
path. Its first build takes minutes on a 2-core machine (docs/adr/0012), so it runs only when
asked: ``EDGEFLEET_TEST_RESNET18=1``; the export and the bundle are cached (by torch_models.py and
by the compiler's source), so a second run takes seconds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CACHE, cached_bundle
from tests.pytorch_builds import MODELS, require_torch

pytestmark = [pytest.mark.slow]

_EXPORT = """
import sys, numpy as np, torch
sys.path.insert(0, {models_dir!r})
import torch_models as tm
torch.manual_seed(0)
torch.onnx.export(tm.ResNet18(10).eval(), torch.zeros(1, 3, 224, 224), {out!r} + "/resnet18.onnx", opset_version=11)
pixels = np.random.default_rng(0).integers(0, 256, (24, 224, 224, 3)).astype(np.uint8)
np.savez({out!r} + "/cal.npz", x=pixels[:16])
np.savez({out!r} + "/val.npz", x=pixels[16:], y=np.arange(8) % 10)
"""


def _resnet18_onnx() -> Path:
    """resnet18.onnx (+ .data), cal.npz and val.npz, made once per version of torch_models.py."""
    key = hashlib.sha256(MODELS.read_bytes() + _EXPORT.encode()).hexdigest()[:16]
    out = CACHE / f"torch-resnet18-{key}"
    if not (out / "val.npz").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        proc = subprocess.run(
            [sys.executable, "-c", _EXPORT.format(models_dir=str(MODELS.parent), out=str(tmp))],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def test_resnet18_shape_builds_with_normalize_folded_to_a_loadable_int8_model_and_reports_latency() -> None:
    if os.environ.get("EDGEFLEET_TEST_RESNET18") != "1":
        pytest.skip(
            "ResNet-18's first build takes 3-8 min on 2 cores (docs/adr/0012; 0.3 s once cached); "
            "set EDGEFLEET_TEST_RESNET18=1"
        )
    require_torch()
    d = _resnet18_onnx()
    bundle = cached_bundle(
        f"torch-resnet18-{d.name}",
        [
            "build", str(d / "resnet18.onnx"), "--calibration", str(d / "cal.npz"), "--validation", str(d / "val.npz"),
            "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--max-accuracy-drop", "100",
        ],
        timeout=3000,
    )  # fmt: skip
    report = json.loads((bundle / "report.json").read_text())
    assert report["model"]["input"]["shape"] == [1, 224, 224, 3]
    fold = report["source"]["preprocess"]["folded_into_graph"]
    assert fold["mean"] == [0.485, 0.456, 0.406] and fold["channel_order"] == "rgb"
    # the float conversion of the folded graph answers as the ONNX does on every input
    assert report["twin"]["figures"]["top1_agreement"] == 1.0
    for name in ("model_int8.tflite", "model_float.tflite"):
        assert report["artifacts"][name]["latency_ms"]["1"] > 0
    # LiteRT prepares and runs the int8 model (it refused to before the MaxPool pad fix), and its
    # activations are alive: no tensor carries the ~1e36 scale that onnx2tf's -3.4e38 pad gave
    # one, and different pixels give different logits
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(bundle / "model_int8.tflite"))
    it.allocate_tensors()
    scales = [float(s) for t in it.get_tensor_details() for s in t["quantization_parameters"]["scales"]]
    assert max(scales) < 1e3, max(scales)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    logits = []
    for px in np.load(d / "val.npz")["x"][:3]:
        it.set_tensor(inp["index"], (px.astype(np.int16) - 128).astype(np.int8)[None])
        it.invoke()
        logits.append(it.get_tensor(out["index"]).copy())
    assert any(not np.array_equal(logits[0], other) for other in logits[1:])
