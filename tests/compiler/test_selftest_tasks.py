"""Self-test vectors and drift baselines of the real Coral models (../shared/models/coral): the
synthetic vectors a data-less import ships are in range (neither constant nor saturated) and
make every model do real work; a non-classifier's baseline from a real image holds its task's
output features (protocol.taskstats) and the agent-side numbers are the compiler's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler import baseline, selftest, tasks
from compiler.dataset import read_labels
from compiler.graph import read_graph
from compiler.inference import TfliteRunner
from protocol import taskstats
from protocol.baseline import parse
from protocol.labels import parse_labels
from tests.coral_imports import CASES, _labels, pixels

WANT = {
    "detection": {"detection_count", "detection_top_score"},
    "segmentation": {"foreground_fraction"},
    "keypoints": {"pose_score", "keypoints_visible"},
    "embedding": {"embedding_norm", "centroid_distance"},
}


def _load(coral: Path, key: str):
    c = CASES[key]
    data = (coral / c.model).read_bytes()
    g = read_graph(data, c.model)
    feed = tasks.request_input(g, c.model)
    runner = TfliteRunner(data, c.model, feed=feed.name)
    labels = read_labels(_labels(coral, c.labels)) if c.labels else ()
    sig = tasks.read_signature(tasks.with_shapes(g, runner.shapes), labels, None, c.model)
    return c, runner, feed, sig, labels, tasks.preprocess(feed, None, None)


@pytest.mark.parametrize("key", sorted(CASES))
def test_synthetic_selftest_vectors_are_in_range_and_make_the_model_work(coral_models: Path, key: str):
    c, runner, feed, sig, labels, pre = _load(coral_models, key)
    x = selftest.synthetic(tuple(feed.shape[1:]), pre, 5, value_range=selftest.tensor_range(runner.input))
    doc = selftest.build(runner, c.model, x, None, 5, inputs="synthetic")
    assert doc["inputs"] == "synthetic" and len(doc["cases"]) == 5
    raws = [np.array(case["input"]) for case in doc["cases"]]
    info = np.iinfo(runner.input.dtype) if np.issubdtype(runner.input.dtype, np.integer) else None
    for raw in raws:
        assert raw.std() > 10 if info else raw.std() > 0.05, f"{key}: a near-constant vector"
        if info is not None:
            saturated = np.mean((raw == info.min) | (raw == info.max))
            assert saturated == 0.0, f"{key}: {saturated:.1%} of the values at the dtype's limits"
    assert not np.array_equal(raws[0], raws[1])  # different cases, not one frame repeated
    assert len(doc["outputs"]) == len(runner.outputs)  # every output recorded, each bounded in size
    outs = [np.array(o["values"], dtype=np.float64) for case in doc["cases"] for o in case["outputs"]]
    assert all(np.isfinite(o).all() and o.size <= 1024 for o in outs)
    assert selftest.check(runner, doc) == []  # the vectors reproduce on the artifact they describe
    # seeded: a rebuild ships the same vectors
    again = selftest.synthetic(tuple(feed.shape[1:]), pre, 5, value_range=selftest.tensor_range(runner.input))
    assert np.array_equal(again, x)


@pytest.mark.parametrize(
    ("key", "exercised"),
    [("traffic", True), ("movenet", True), ("embedding", True), ("mnv2", True), ("deeplab", False)],
)
def test_synthetic_vectors_give_other_outputs_than_a_constant_frame_or_say_they_do_not(
    coral_models: Path, key: str, exercised: bool
):
    """A constant (mid-grey) frame against the synthetic vectors: the detector's boxes, the pose,
    the embedding and the classifier's scores differ, so the self-test checks the model's work.
    The segmenter sees background everywhere on smooth synthetic images (a constant mask):
    the document says the vectors barely exercise it (real images: --calibration)."""
    c, runner, feed, sig, labels, pre = _load(coral_models, key)
    x = selftest.synthetic(tuple(feed.shape[1:]), pre, 3, value_range=selftest.tensor_range(runner.input))
    grey = runner.run_raw(runner.input.quantize(np.full((1, *feed.shape[1:]), 128 * pre["scale"] + pre["offset"])))
    differs = [not np.array_equal(runner.run_raw(runner.input.quantize(x[i : i + 1])), grey) for i in range(3)]
    doc = selftest.build(runner, c.model, x, None, 3, inputs="synthetic")
    if exercised:
        assert all(differs) and "note" not in doc
    else:
        assert "barely exercise the model; give --calibration images" in doc["note"]


@pytest.mark.parametrize("key", sorted(k for k, c in CASES.items() if c.task in WANT))
def test_a_task_baseline_from_a_real_image_holds_its_task_features(coral_models: Path, key: str):
    c, runner, feed, sig, labels, pre = _load(coral_models, key)
    h, w, ch = feed.shape[1], feed.shape[2], feed.shape[3]
    px = pixels(coral_models, c, h, w, ch).astype(np.float32)
    x = np.concatenate([px, selftest.synthetic((h, w, ch), {"kind": "image", "scale": 1.0, "offset": 0.0}, 3)])
    x = x * pre["scale"] + pre["offset"]
    raw = np.stack([runner.input.quantize(x[i : i + 1]).reshape(runner.input.shape) for i in range(len(x))])
    label_map = parse_labels("\n".join(labels))
    docs = baseline.answers(runner, sig, label_map, raw)
    doc = baseline.build_task(x, docs, pre, sig.task)
    base = parse(json.dumps(doc).encode())
    assert base.task is not None and base.task.task == c.task and base.schema == 2
    assert WANT[c.task] <= set(base.outputs)
    assert all(sum(f.ref) == len(x) for f in base.features().values())
    if c.task == "detection":
        # the real traffic frame has vehicles: their class gets its own count feature
        assert base.task.classes and {f"detections_c{i}" for i in base.task.classes} <= set(base.outputs)
        assert taskstats.features(docs[0])["detection_count"] >= 1, "no vehicle counted on traffic_0001.bmp"
    if c.task == "segmentation":  # the bird image: background and the bird class (3)
        assert 3 in base.task.classes and "fraction_c3" in base.outputs
    if c.task == "embedding":
        assert base.task.centroid is not None and len(base.task.centroid) == 1024
    # the agent bins each answer with the same function and the baseline's own context: a
    # window of the reference answers is the reference
    classes, centroid = base.task.classes, base.task.centroid
    window = {name: [0] * (len(f.edges) + 1) for name, f in base.outputs.items()}
    from protocol.sketch import bin_index

    for d in docs:
        for name, value in taskstats.features(d, classes, centroid).items():
            window[name][bin_index(base.outputs[name].edges, value)] += 1
    assert window == {name: list(f.ref) for name, f in base.outputs.items()}
