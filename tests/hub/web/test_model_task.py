"""Issue 12 part 7 with a real detector (Coral's traffic model, imported with a hand-labelled
frame as ground truth): the model page shows its task, every input and output (name, dtype,
shape, quantization, role), the twin status with its reason and the per-task evaluation
(mAP@0.5, not gated); the device page groups drift by signal with the task's own numbers."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from hub import bundles
from hub.server import Hub
from hub.store import read_bundle_dir
from hub.transport import MemoryPublisher
from hub.web.catalog import drift_by_signal, signature_summary, task_evaluation
from tests.bundle_cache import put
from tests.conftest import CACHE, cached_bundle

from ..conftest import VIEWER
from ..helpers import status, telemetry
from .test_dashboard import session_for

TRUTH = Path(__file__).resolve().parents[2] / "compiler" / "data" / "tasks" / "traffic_boxes.jsonl"


def detector_bundle(coral: Path) -> Path:
    """``traffic_model.tflite`` imported with its first frame as calibration and ``--truth``
    (unsigned bundle directory, cached by compiler source)."""
    cal = put(
        CACHE / "calibration" / "traffic-truth" / "traffic_0001.bmp", (coral / "traffic_0001.bmp").read_bytes()
    ).parent
    argv = ["import", str(coral / "traffic_model.tflite"), "--name", "traffic"]
    argv += ["--labels", str(coral / "traffic_label_map.pbtxt"), "--calibration", str(cal)]
    argv += ["--truth", str(TRUTH), "--no-onnx"]
    return cached_bundle("coral-traffic-truth", argv)


@pytest.fixture(scope="module")
def detector(coral_models: Path) -> Path:
    return detector_bundle(coral_models)


def _push(hub: Hub, bundle: Path) -> str:
    env, arts = read_bundle_dir(bundle)
    return str(bundles.push(hub.fleet, env, arts, "test")["digest"])


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def test_the_model_page_shows_a_detectors_task_inputs_outputs_twin_and_map(
    memhub: tuple[Hub, MemoryPublisher], detector: Path
) -> None:
    hub, _ = memhub
    digest = _push(hub, detector)
    page = session_for(hub, VIEWER).get(f"/ui/models/{digest}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert re.search(r'<dd id="task">detection\b', text)
    io = _section(text, 'id="io"', 'id="task-eval"')
    rows = re.findall(r"<tr><td>(input|output)</td><td><code>([^<]+)</code></td><td>(\w+)</td><td>([^<]+)</td>"
                      r"<td>([^<]+)</td><td>(\w+)</td></tr>", io)  # fmt: skip
    assert [(r[0], r[5]) for r in rows] == [
        ("input", "image"),
        ("input", "state"),
        ("input", "state"),
        ("output", "boxes"),
        ("output", "classes"),
        ("output", "scores"),
        ("output", "count"),
        ("output", "state"),
        ("output", "state"),
    ]
    image = rows[0]
    assert image[2] == "uint8" and image[3] == "1×256×256×3" and image[4].startswith("scale 0.0078125, zero point 128")
    boxes = rows[3]
    assert boxes[2] == "float32" and boxes[3] == "1×40×4" and boxes[4] == "none"
    twin = _section(text, 'id="twin"', 'id="h-tpu"')
    assert "Cloud twin (ONNX)" in twin and "No twin was made:" in twin and "--no-onnx" in twin
    ev = _section(text, 'id="task-eval"', 'id="h-eval"')
    report = json.loads((detector / "report.json").read_text())
    value = report["accuracy"]["value"]
    assert "Evaluation per task: detection" in ev and '<span class="sev">not gated</span>' in ev
    assert f"mAP@0.5 {value * 100:.2f} %</strong> on 1 image" in ev and 0.5 < value < 1.0
    assert "not gated: an imported .tflite has no float original" in ev


def test_the_device_page_groups_a_detectors_drift_by_signal(
    memhub: tuple[Hub, MemoryPublisher], detector: Path
) -> None:
    """A camera whose frames look like the baseline's but that sees no vehicles any more: the
    input features are fine, detections per frame alert, and the page says so per signal."""
    hub, _ = memhub
    digest = _push(hub, detector)
    base = json.loads((detector / "baseline.json").read_text())
    n = 400

    def like_ref(ref: list[int]) -> list[int]:
        total = sum(ref)
        counts = [n * r // total for r in ref]
        counts[max(range(len(ref)), key=ref.__getitem__)] += n - sum(counts)
        return counts

    inputs = {name: like_ref(f["ref"]) for name, f in base["inputs"].items()}
    outputs = {name: like_ref(f["ref"]) for name, f in base["outputs"].items()}
    bins = len(base["outputs"]["detection_count"]["ref"])
    outputs["detection_count"] = [n] + [0] * (bins - 1)  # nothing detected in any frame
    hub.ingest.handle(
        [
            ("ef/v1/dev/cam-1/status", status("cam-1", active=(digest, "traffic", "0.0.0"))),
            (
                "ef/v1/dev/cam-1/telemetry",
                telemetry("cam-1", 1, digest, drift={"inputs": inputs, "outputs": outputs}),
            ),
        ]
    )
    text = html.unescape(session_for(hub, VIEWER).get("/ui/devices/cam-1").text)
    table = text[text.index('id="drift-signals"') :]
    table = table[: table.index("</table>")]
    signals = re.findall(r'data-signal="([^"]+)"><th scope="row">[^<]+</th><td><span class="sev sev-(\w+)"', table)
    got = dict(signals)
    assert list(got)[0] == "input features" and got["input features"] == "ok"
    assert got["detections per frame"] == "alert"
    assert {"detection scores", "detections per class"} <= set(got)
    assert "detection_count" in table and "brightness" in table


def test_signature_evaluation_and_drift_summaries_survive_old_or_odd_documents() -> None:
    assert signature_summary({})["task"] == "classification" and "before signatures" in signature_summary({})["note"]
    odd = signature_summary({"signature": {"task": "detection", "inputs": "no"}})
    assert odd["task"] is None and odd["note"].startswith("unreadable signature")
    build = {
        "task": "classification",
        "gate": {"passed": True, "checks": []},
        "artifacts": {"model_int8.tflite": {"metrics": {"accuracy": 0.95, "samples": 360}}},
    }
    ev = task_evaluation(build)
    assert (ev["metric"], ev["value"], ev["images"], ev["passed"], ev["gated"]) == ("accuracy", 0.95, 360, True, True)
    none = task_evaluation({"accuracy": None, "gate_note": "none: an import has no float reference to compare against"})
    assert none["metric"] is None and none["note"].startswith("none: an import")
    groups = drift_by_signal(
        {
            "outputs.fraction_c3": {"status": "warn", "psi": 0.2, "samples": 200},
            "outputs.foreground_fraction": {"status": "ok", "psi": 0.01, "samples": 200},
            "inputs.brightness": {"status": "insufficient_data", "psi": None, "samples": 3},
            "error": "not a verdict",
        }
    )
    assert [(g["signal"], g["status"], len(g["features"])) for g in groups] == [
        ("input features", "insufficient_data", 1),
        ("class-pixel fractions", "warn", 2),
    ]
