"""Per-task drift features and shadow agreement (protocol.taskstats), table-tested against
hand-computed cases; the baseline's ``task`` section round-trips and refuses bad values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from protocol import taskstats
from protocol.baseline import Baseline, TaskSection, parse
from protocol.errors import BadPayload


def det(class_id: int, score: float, xmin: float, ymin: float, xmax: float, ymax: float) -> dict:
    return {
        "class_id": class_id,
        "score": score,
        "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
    }


def detection_doc(*dets: dict) -> dict:
    return {"task": "detection", "detections": list(dets)}


@pytest.mark.parametrize(
    ("doc", "classes", "want"),
    [
        (detection_doc(), (), {"detection_count": 0.0, "detection_top_score": 0.0}),
        (
            detection_doc(det(3, 0.9, 0, 0, 1, 1), det(3, 0.6, 0, 0, 1, 1), det(1, 0.2, 0, 0, 1, 1)),
            (1, 3),
            # 0.2 is under the 0.3 threshold: counted in no class, but the top score is 0.9
            {"detection_count": 2.0, "detection_top_score": 0.9, "detections_c1": 0.0, "detections_c3": 2.0},
        ),
        (
            detection_doc(det(2, 0.25, 0, 0, 1, 1)),
            (2,),
            {"detection_count": 0.0, "detection_top_score": 0.25, "detections_c2": 0.0},
        ),
        (
            {
                "task": "segmentation",
                "classes": [{"class_id": 0, "fraction": 0.75}, {"class_id": 15, "fraction": 0.25}],
            },
            (3, 15),
            {"foreground_fraction": 0.25, "fraction_c3": 0.0, "fraction_c15": 0.25},
        ),
        (
            {"task": "segmentation", "classes": [{"class_id": 7, "fraction": 1.0}]},
            (),
            {"foreground_fraction": 1.0},
        ),
        (
            {"task": "keypoints", "score": 0.4, "keypoints": [{"score": s} for s in (0.1, 0.3, 0.8)]},
            (),
            {"pose_score": 0.4, "keypoints_visible": 2.0},
        ),
        ({"task": "classification", "top": []}, (), {}),
        ({"task": "tensors", "tensors": []}, (), {}),
    ],
)
def test_task_features_are_one_number_per_answer(doc, classes, want):
    assert taskstats.features(doc, classes) == pytest.approx(want)


def test_embedding_features_are_its_norm_and_cosine_distance_to_the_centroid():
    doc = {"task": "embedding", "embedding": np.array([3.0, 4.0]), "norm": 5.0}
    assert taskstats.features(doc) == {"embedding_norm": 5.0}  # no centroid: no distance
    got = taskstats.features(doc, centroid=[1.0, 0.0])
    assert got["embedding_norm"] == 5.0 and got["centroid_distance"] == pytest.approx(1 - 3 / 5)
    assert taskstats.features(doc, centroid=[-3.0, -4.0])["centroid_distance"] == pytest.approx(2.0)


def test_centroid_averages_directions_not_magnitudes():
    assert taskstats.centroid_of([[10.0, 0.0], [0.0, 1.0]]) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="no embeddings"):
        taskstats.centroid_of([])
    with pytest.raises(ValueError, match="3 and 2 dimensions"):
        taskstats.centroid_of([[1.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="2 dimensions, the baseline centroid 3"):
        taskstats.cosine_distance([1.0, 0.0], [1.0, 0.0, 0.0])
    assert taskstats.cosine_distance([0.0, 0.0], [1.0, 0.0]) == 1.0


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("detection_count", [i + 0.5 for i in range(10)]),
        ("detections_c7", [i + 0.5 for i in range(10)]),
        ("keypoints_visible", [i + 0.5 for i in range(10)]),
        ("detection_top_score", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ("pose_score", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ("foreground_fraction", list(taskstats.FRACTION_EDGES)),
        ("fraction_c15", list(taskstats.FRACTION_EDGES)),
        ("embedding_norm", [2.0, 4.0, 6.0, 8.0]),  # the reference's quantiles
    ],
)
def test_edges_per_feature(name, want):
    assert taskstats.edges(name, [float(v) for v in range(11)], bins=5) == pytest.approx(want)


def test_a_reference_where_a_class_never_shows_still_sees_it_appear():
    ref = [0.0] * 50
    e = taskstats.edges("fraction_c15", ref)
    from protocol.sketch import bin_counts, drift_verdict

    assert bin_counts(e, ref)[0] == 50
    v = drift_verdict(bin_counts(e, ref), bin_counts(e, [0.4] * 200))
    assert v.status == "alert"


def test_busiest_classes_ranks_detections_and_pixels():
    docs = [
        detection_doc(det(5, 0.9, 0, 0, 1, 1), det(2, 0.8, 0, 0, 1, 1), det(9, 0.29, 0, 0, 1, 1)),
        detection_doc(det(5, 0.7, 0, 0, 1, 1)),
    ]
    assert taskstats.busiest_classes(docs, limit=1) == [5]
    assert taskstats.busiest_classes(docs) == [2, 5]  # 9 is under the threshold
    seg = [{"task": "segmentation", "classes": [{"class_id": 0, "fraction": 0.9}, {"class_id": 3, "fraction": 0.1}]}]
    assert taskstats.busiest_classes(seg, limit=1) == [0]


BOX = (0.0, 0.0, 10.0, 10.0)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        (BOX, BOX, 1.0),
        (BOX, (5.0, 0.0, 15.0, 10.0), 50 / 150),
        (BOX, (10.0, 10.0, 20.0, 20.0), 0.0),  # touching corners
        (BOX, (2.0, 2.0, 4.0, 4.0), 4 / 100),
        ((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), 0.0),
    ],
)
def test_iou(a, b, want):
    box = lambda t: dict(zip(("xmin", "ymin", "xmax", "ymax"), t, strict=True))  # noqa: E731
    assert taskstats.iou(box(a), box(b)) == pytest.approx(want)


@pytest.mark.parametrize(
    ("served", "candidate", "want"),
    [
        ([], [], 1.0),
        ([det(1, 0.9, *BOX)], [], 0.0),
        ([det(1, 0.9, *BOX)], [det(1, 0.8, *BOX)], 1.0),
        ([det(1, 0.9, *BOX)], [det(2, 0.8, *BOX)], 0.0),  # same box, another class
        ([det(1, 0.9, *BOX)], [det(1, 0.8, 5, 0, 15, 10)], 0.0),  # IoU 1/3 < 0.5
        ([det(1, 0.9, *BOX)], [det(1, 0.8, 2, 0, 12, 10)], 1.0),  # IoU 8/12 >= 0.5
        # two candidates on one served box: only one matches (one-to-one): 2*1/(1+2)
        ([det(1, 0.9, *BOX)], [det(1, 0.8, *BOX), det(1, 0.7, 1, 0, 11, 10)], 2 / 3),
        (
            [det(1, 0.9, *BOX), det(1, 0.9, 20, 20, 30, 30)],
            [det(1, 0.8, 20, 20, 30, 30), det(3, 0.5, 50, 50, 60, 60)],
            2 * 1 / 4,
        ),
    ],
)
def test_detection_agreement_is_iou_matched_f1(served, candidate, want):
    assert taskstats.detection_f1(served, candidate) == pytest.approx(want)
    assert taskstats.agreement(detection_doc(*served), detection_doc(*candidate)) == pytest.approx(want)
    # boxes under the counting threshold take no part in the agreement
    low = det(7, 0.29, 0, 0, 5, 5)
    assert taskstats.agreement(detection_doc(*served), detection_doc(*candidate, low)) == pytest.approx(want)


def test_match_gives_the_higher_scored_candidate_the_best_box():
    truth = [det(1, 1.0, *BOX), det(1, 1.0, 0, 0, 10, 12)]
    found = [det(1, 0.5, 0, 0, 10, 12), det(1, 0.9, *BOX)]
    assert taskstats.match(truth, found) == [(0, 1), (1, 0)]


def test_segmentation_agreement_is_the_share_of_equal_pixels():
    a = np.array([[0, 0], [1, 2]])
    b = np.array([[0, 1], [1, 2]])
    seg = {"task": "segmentation", "classes": []}
    assert taskstats.agreement(seg, seg, (a, b)) == 0.75
    with pytest.raises(ValueError, match="needs both class maps"):
        taskstats.agreement(seg, seg)
    with pytest.raises(ValueError, match=r"shapes \[2, 2\] and \[1, 4\]"):
        taskstats.pixel_agreement(a, b.reshape(1, 4))


def test_keypoint_embedding_and_classification_agreement():
    p = lambda x, y: {"x_normalized": x, "y_normalized": y}  # noqa: E731
    kp = lambda *pts: {"task": "keypoints", "keypoints": list(pts)}  # noqa: E731
    assert taskstats.agreement(kp(p(0.5, 0.5), p(0.1, 0.1)), kp(p(0.52, 0.53), p(0.3, 0.1))) == 0.5
    emb = lambda *v: {"task": "embedding", "embedding": np.array(v)}  # noqa: E731
    assert taskstats.agreement(emb(1.0, 0.0), emb(2.0, 0.0)) == pytest.approx(1.0)
    assert taskstats.agreement(emb(1.0, 1.0), emb(1.0, 0.0)) == pytest.approx(math.sqrt(0.5))
    assert taskstats.agreement(emb(1.0, 0.0), emb(-1.0, 0.0)) == 0.0
    top = lambda i: {"task": "classification", "top": [{"index": i}]}  # noqa: E731
    assert taskstats.agreement(top(3), top(3)) == 1.0 and taskstats.agreement(top(3), top(4)) == 0.0


def test_agreement_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="different tasks: detection and keypoints"):
        taskstats.agreement(detection_doc(), {"task": "keypoints", "keypoints": []})
    with pytest.raises(ValueError, match="no agreement measure for task 'tensors'"):
        taskstats.agreement({"task": "tensors"}, {"task": "tensors"})
    with pytest.raises(ValueError, match="2 and 1 keypoints"):
        taskstats.keypoint_agreement([{}, {}], [{}])


def test_the_baseline_task_section_round_trips_and_unknown_keys_survive():
    doc = {
        "schema": 2,
        "samples": 3,
        "outputs": {"detections_c3": {"edges": [0.5], "ref": [2, 1]}},
        "task": {"task": "detection", "classes": [3], "centroid": None, "future": 1},
    }
    base = parse(json.dumps(doc).encode())
    assert base.task == TaskSection("detection", (3,), None)
    assert base.to_dict()["task"] == doc["task"]
    old = parse(b'{"schema": 1, "samples": 0}')
    assert old.task is None and "task" not in old.to_dict()
    assert Baseline(1, task=TaskSection("embedding", (), (0.5, 0.5))).to_dict()["task"]["centroid"] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"classes": []}, "missing field 'task'"),
        ({"task": "detection", "classes": [-1]}, "field 'task.classes' must hold ints >= 0, found -1"),
        ({"task": "embedding", "centroid": []}, "field 'task.centroid' must be a non-empty list or null"),
        ({"task": "embedding", "centroid": [1, "x"]}, "field 'task.centroid' must hold finite numbers, found 'x'"),
    ],
)
def test_a_bad_task_section_is_refused_naming_the_field(task, message):
    with pytest.raises(BadPayload, match=message):
        parse(json.dumps({"schema": 2, "samples": 0, "task": task}).encode())
