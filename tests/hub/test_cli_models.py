"""``edgefleet-hub models show ID`` against a real ``serve`` process: a detector pushed through the
CLI shows its task, inputs and outputs, twin status with the reason and its per-task evaluation;
by name or digest; an unknown model exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hub.test_cli import TOKEN, cli, served  # noqa: F401  (served: the fixture)
from tests.hub.web.test_model_task import detector_bundle

pytestmark = pytest.mark.integration


def test_models_show_prints_a_detectors_task_io_twin_and_evaluation(served: str, coral_models: Path) -> None:  # noqa: F811
    bundle = detector_bundle(coral_models)
    hub = ["--hub", served, "--token", TOKEN]
    pushed = json.loads(cli("models", "push", str(bundle), *hub).stdout.strip().splitlines()[-1])
    text = cli("models", "show", "traffic", *hub).stdout
    lines = text.splitlines()
    assert lines[0].startswith("traffic ") and pushed["digest"] in lines[0]
    assert lines[1] == "task: detection (stateful)"
    outputs = lines[lines.index("outputs:") + 1 : lines.index("outputs:") + 7]
    assert [o.split()[0] for o in outputs] == ["boxes", "classes", "scores", "count", "state", "state"]
    assert "float32[1, 40, 4]" in outputs[0] and "quantization: none" in outputs[0]
    image = lines[lines.index("inputs:") + 1]
    assert image.split()[0] == "image" and "uint8[1, 256, 256, 3]" in image and "zero point 128" in image
    assert "twin: none: " in text and "--no-onnx" in text
    value = json.loads((bundle / "report.json").read_text())["accuracy"]["value"]
    assert f"evaluation: detection mAP@0.5 {value:.2%} on 1 image; not gated" in text
    doc = json.loads(cli("models", "show", pushed["digest"], "--json", *hub).stdout)
    assert doc["signature"]["task"] == "detection" and doc["evaluation"]["metric"] == "mAP@0.5"
    assert doc["twin"]["status"] == "none"
    missing = cli("models", "show", "no-such-model", *hub, check=False)
    assert missing.returncode == 2 and "no bundle with digest or model name 'no-such-model'" in missing.stderr
