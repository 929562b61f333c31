"""The self-test compares every output, with a tolerance that means something per dtype
(protocol.selftest), so it can fail for each kind of output: vectors the compiler records from
real Coral models pass on the agent's own backend, and the same vectors with one output moved
beyond its tolerance (a box, a keypoint, 2 % of a mask, a classifier score) fail, naming it.
Before schema 2 only the first output was compared with a tolerance of 2 raw units, which a
float box or keypoint never exceeds: the schema-1 rule passes the moved box (shown below)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import selftest
from agent.runtime import LiteRTBackend
from compiler import selftest as build_vectors, tasks
from compiler.graph import read_graph
from compiler.inference import TfliteRunner
from protocol.errors import Reason
from tests.coral_imports import CASES, pixels


def _vectors(coral: Path, key: str) -> tuple[dict[str, Any], LiteRTBackend]:
    """Vectors as the compiler records them on the model's real test image, and the agent's
    backend for the same model."""
    c = CASES[key]
    data = (coral / c.model).read_bytes()
    feed = tasks.request_input(read_graph(data, c.model), c.model)
    runner = TfliteRunner(data, c.model, feed=feed.name)
    pre = tasks.preprocess(feed, None, None)
    h, w, ch = feed.shape[1], feed.shape[2], feed.shape[3]
    x = pixels(coral, c, h, w, ch).astype(np.float32) * pre["scale"] + pre["offset"]
    doc = build_vectors.build(runner, c.model, x, None, len(x))
    return doc, LiteRTBackend(coral / c.model, feed=feed.name)


@pytest.fixture(scope="module")
def detector(coral_models: Path) -> tuple[dict[str, Any], LiteRTBackend]:
    return _vectors(coral_models, "traffic")


@pytest.fixture(scope="module")
def pose(coral_models: Path) -> tuple[dict[str, Any], LiteRTBackend]:
    return _vectors(coral_models, "movenet")


@pytest.fixture(scope="module")
def segmenter(coral_models: Path) -> tuple[dict[str, Any], LiteRTBackend]:
    return _vectors(coral_models, "deeplab")


@pytest.fixture(scope="module")
def classifier(coral_models: Path) -> tuple[dict[str, Any], LiteRTBackend]:
    return _vectors(coral_models, "mnv1_025")


def _output(doc: dict[str, Any], name_part: str) -> int:
    return next(i for i, o in enumerate(doc["outputs"]) if name_part in o["name"])


def test_the_right_detector_passes_with_every_output_compared(detector):
    doc, backend = detector
    assert [o["compare"] for o in doc["outputs"]] == ["close"] * 4 + ["steps"] * 2  # boxes..count, LSTM c/h
    state = doc["cases"][0]["outputs"][4]
    assert state["stride"] == 20 and len(state["values"]) <= 1024  # 20,480 values: a strided sample
    result = selftest.run(backend, doc)
    assert result.ok, result.detail
    assert result.compared.startswith("6 outputs:") and "(close)" in result.compared
    assert result.metrics()["compared"] == result.compared


def test_a_detector_whose_box_moved_fails_and_the_schema_1_rule_would_have_passed_it(detector):
    doc, backend = detector
    boxes = 0  # TFLite_Detection_PostProcess: boxes first, in 0..1
    assert doc["outputs"][boxes]["tolerance"] == pytest.approx(0.02 * max(map(abs, _values(doc, boxes))), rel=1e-6)
    moved = copy.deepcopy(doc)
    moved["cases"][0]["outputs"][boxes]["values"][1] += 0.1  # the best box's x0, a tenth of the image
    result = selftest.run(backend, moved)
    assert not result.ok and result.reason is Reason.SELFTEST_FAILED
    assert doc["outputs"][boxes]["name"] in result.detail and "> tolerance" in result.detail
    # what the agent checked before: the first output within 2 raw units (a float box never is off by 2)
    legacy = {"tolerance": 2, "cases": [{"input": doc["cases"][0]["input"], "expected": _values(moved, boxes)}]}
    assert selftest.run(backend, legacy).ok


def test_a_detector_whose_class_or_count_is_wrong_fails(detector):
    doc, backend = detector
    for part, delta in (("1", 1.0), ("3", 1.0)):  # PostProcess outputs :1 classes, :3 count
        wrong = copy.deepcopy(doc)
        wrong["cases"][0]["outputs"][_output(doc, f"PostProcess:{part}")]["values"][0] += delta
        result = selftest.run(backend, wrong)
        assert not result.ok and f"PostProcess:{part}" in result.detail


def test_the_right_pose_model_passes_and_a_moved_keypoint_fails(pose):
    doc, backend = pose
    assert doc["outputs"][0]["compare"] == "keypoints" and doc["outputs"][0]["shape"] == [1, 1, 17, 3]
    assert selftest.run(backend, doc).ok
    moved = copy.deepcopy(doc)
    moved["cases"][0]["outputs"][0]["values"][3 * 5 + 1] += 0.08  # keypoint 5's x: ~15 px of 192
    result = selftest.run(backend, moved)
    assert not result.ok and "keypoints moved by up to 0.08 (keypoint 5; tolerance 0.05)" in result.detail
    scored = copy.deepcopy(doc)  # a score as far off as Coral's Edge TPU reference is from the CPU's
    scored["cases"][0]["outputs"][0]["values"][3 * 5 + 2] += 0.4
    assert selftest.run(backend, scored).ok


def test_the_right_segmenter_passes_and_a_mask_two_percent_off_fails(segmenter):
    doc, backend = segmenter
    spec, want = doc["outputs"][0], doc["cases"][0]["outputs"][0]
    assert spec["compare"] == "agreement" and spec["dtype"] == "int64"
    assert len(want["values"]) <= 1024 and sum(want["histogram"].values()) == 513 * 513
    assert "3" in want["histogram"]  # the bird is in the mask: the vector exercises the model
    result = selftest.run(backend, doc)
    assert result.ok, result.detail
    # 2 % of the sampled pixels another class
    off = copy.deepcopy(doc)
    values = off["cases"][0]["outputs"][0]["values"]
    for i in range(0, len(values), 50):
        values[i] = 7 if values[i] != 7 else 0
    result = selftest.run(backend, off)
    assert not result.ok and "sampled values agree" in result.detail
    # the sample agrees but 2 % of the whole mask moved from the background to the bird
    shifted = copy.deepcopy(doc)
    hist = shifted["cases"][0]["outputs"][0]["histogram"]
    n = int(0.02 * 513 * 513)
    hist["0"] -= n
    hist["3"] += n
    result = selftest.run(backend, shifted)
    assert not result.ok and "class histograms differ by 2.00%" in result.detail


def test_the_right_classifier_passes_and_a_score_three_steps_off_fails(classifier):
    doc, backend = classifier
    assert doc["outputs"][0]["compare"] == "steps" and doc["outputs"][0]["tolerance"] == 2
    assert selftest.run(backend, doc).ok
    top = int(np.argmax(doc["cases"][0]["outputs"][0]["values"]))
    within = copy.deepcopy(doc)
    within["cases"][0]["outputs"][0]["values"][top] -= 2
    assert selftest.run(backend, within).ok  # two quantization steps: the Edge TPU's leeway
    off = copy.deepcopy(doc)
    off["cases"][0]["outputs"][0]["values"][top] -= 3
    result = selftest.run(backend, off)
    assert not result.ok and "differs by 3 steps > tolerance 2" in result.detail


def test_vectors_of_another_model_fail_on_this_one(coral_models, classifier):
    """A wrong model: the 0.5/160 classifier's weights against the 0.25/128's vectors."""
    doc, _ = classifier
    other = LiteRTBackend(coral_models / "mobilenet_v1_0.5_160_quant.tflite")
    result = selftest.run(other, doc)
    assert not result.ok and "unusable vector" in result.detail
    same_shape = copy.deepcopy(doc)  # its own input, this model's expected scores
    mine, _ = _vectors(coral_models, "mnv1_05")
    same_shape["cases"][0]["input"] = mine["cases"][0]["input"]
    result = selftest.run(other, same_shape)
    assert not result.ok and "steps > tolerance 2" in result.detail


def test_schema_1_vectors_still_verify_and_say_only_the_first_output_was_compared(detector):
    doc, backend = detector
    old = {
        "schema": 1,
        "tolerance": 2,
        "cases": [{"input": c["input"], "expected": c["expected"]} for c in doc["cases"]],
    }
    result = selftest.run(backend, old)
    assert result.ok and result.compared == "the first output only (schema 1 vectors)"
    assert "first output only" in result.detail


def test_vectors_with_a_bad_field_are_refused_naming_it(classifier):
    doc, backend = classifier
    bad = copy.deepcopy(doc)
    bad["outputs"][0]["compare"] = "roughly"
    result = selftest.run(backend, bad)
    assert not result.ok and "outputs.0.compare" in result.detail and "'roughly'" in result.detail


def _values(doc: dict[str, Any], j: int) -> list[float]:
    return list(doc["cases"][0]["outputs"][j]["values"])
