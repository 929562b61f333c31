"""A non-classifier's drift and shadow agreement on a real agent serving path: the traffic
detector imported with its two Coral frames as calibration data (so its baseline holds the
detection features of exactly those frames), served by the local API; the window the agent
records for the same frames is the baseline's reference, bin for bin; a shadow candidate is
compared by IoU-matched F1 (protocol.taskstats), a candidate of another task not at all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from protocol import taskstats
from protocol.baseline import parse
from protocol.messages import Telemetry, check_plausible
from tests.agent.test_tasks import local_api, open_model
from tests.bundle_cache import put
from tests.conftest import CACHE, cached_bundle
from tests.coral_imports import CASES, imported

pytestmark = pytest.mark.slow  # imports the traffic detector and MoveNet (cached by source)

FRAMES = ("traffic_0001.bmp", "traffic_0002.bmp")


@pytest.fixture(scope="module")
def traffic(coral_models: Path) -> Path:
    cal = CACHE / "calibration" / "traffic-frames"
    for f in FRAMES:
        put(cal / f, (coral_models / f).read_bytes())  # atomic, only when it differs
    argv = ["import", str(coral_models / "traffic_model.tflite"), "--name", "traffic"]
    argv += ["--labels", str(coral_models / "traffic_label_map.pbtxt"), "--calibration", str(cal), "--no-onnx"]
    return cached_bundle("h12-traffic-cal", argv)


def _compared(api) -> int:
    sh = api.serving.recorder._shadow
    return int(sh["n"] + sh["errors"])


def _until(cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _wait_windows(api, n: int):
    # the recording runs after the answer is sent: wait for the n requests, then their drift
    _until(lambda: api.serving.recorder._counts["inferences"] >= n)
    api.serving.recorder.drain(30)
    return api.serving.recorder.rotate()


def test_the_agent_bins_the_reference_frames_into_the_baselines_own_counts(traffic: Path, coral_models: Path):
    base = parse((traffic / "baseline.json").read_bytes())
    assert base.task is not None and base.task.task == "detection" and base.samples == len(FRAMES)
    names = set(base.outputs)
    assert {"detection_count", "detection_top_score"} <= names
    assert {f"detections_c{c}" for c in base.task.classes} <= names and base.task.classes  # vehicles counted
    with local_api(traffic) as api:
        assert api.model.baseline is not None and api.model.baseline.task == base.task
        for f in FRAMES:
            code, doc = api.image((coral_models / f).read_bytes())
            assert code == 200 and doc["task"] == "detection"
        (win,) = _wait_windows(api, len(FRAMES))
    outputs = win["drift"]["outputs"]
    assert outputs == {name: list(f.ref) for name, f in base.outputs.items()}
    # one value per answer and feature: the window stays plausible for the hub
    t = Telemetry(
        device="d",
        seq=1,
        window_start=0,
        window_end=10,
        counts=win["counts"],
        latency=win["latency"],
        drift=win["drift"],
    )
    check_plausible(t)


def test_a_detector_shadow_is_compared_by_iou_matched_f1(traffic: Path, coral_models: Path):
    with local_api(traffic) as api:
        candidate = open_model(traffic)
        api.serving.set_shadow(candidate, 1.0)
        for n, f in enumerate(FRAMES, 1):
            assert api.image((coral_models / f).read_bytes())[0] == 200
            # one shadow run at a time (a request meanwhile is not sampled): wait for each
            _until(lambda n=n: _compared(api) >= n)
        (win,) = _wait_windows(api, len(FRAMES))
        candidate.close()
    shadow = win["shadow"]
    assert shadow is not None and shadow.errors == 0 and shadow.samples == len(FRAMES)
    assert shadow.agreement == 1.0  # the same model finds the same boxes


def test_a_shadow_of_another_task_is_not_compared(traffic: Path, coral_models: Path):
    other = imported("movenet", coral_models)
    with local_api(traffic) as api:
        candidate = open_model(other)
        api.serving.set_shadow(candidate, 1.0)
        assert api.image((coral_models / FRAMES[0]).read_bytes())[0] == 200
        (win,) = _wait_windows(api, 1)
        candidate.close()
    assert win["shadow"] is None  # not compared: no samples, no errors


def test_movenet_windows_carry_its_keypoint_features(coral_models: Path):
    bundle = imported("movenet", coral_models)  # imported with squat.bmp as calibration
    base = parse((bundle / "baseline.json").read_bytes())
    assert base.task is not None and base.task.task == "keypoints"
    with local_api(bundle) as api:
        code, doc = api.image((coral_models / CASES["movenet"].image).read_bytes())
        assert code == 200
        (win,) = _wait_windows(api, 1)
    assert win["drift"]["outputs"] == {name: list(f.ref) for name, f in base.outputs.items()}
    assert taskstats.features(doc)["pose_score"] == pytest.approx(doc["score"])
