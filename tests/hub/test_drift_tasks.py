"""Drift per task at the hub: a detector's baseline of per-frame detection features
(protocol.taskstats, as the compiler builds it) judged against windows binned as the agent bins
them. Fewer vehicles per frame and a changed class mix alert on their own signals, in the device
page's report (hub.drift.assess) and in the rollout gate alike; the same traffic stays ok."""

from __future__ import annotations

import random

import pytest

from hub.drift import assess
from hub.rollout import DeviceState, Gates, Health, Policy, RolloutState, evaluate_gates
from protocol import taskstats
from protocol.baseline import Baseline, Feature, TaskSection
from protocol.sketch import bin_counts


def frame(rng: random.Random, vehicles: int, bus_share: float) -> dict:
    dets = []
    for _ in range(vehicles):
        cls = 3 if rng.random() < bus_share else 1
        dets.append({"class_id": cls, "score": rng.uniform(0.35, 0.95), "box": {}})
    dets.append({"class_id": 1, "score": rng.uniform(0.0, 0.25), "box": {}})  # background noise box
    return {"task": "detection", "detections": dets}


def frames(seed: int, n: int, mean_vehicles: float, bus_share: float) -> list[dict]:
    rng = random.Random(seed)
    return [frame(rng, min(9, int(rng.expovariate(1 / mean_vehicles))), bus_share) for _ in range(n)]


REF = frames(0, 2000, 3.0, 0.2)
CLASSES = tuple(taskstats.busiest_classes(REF))
COLUMNS = [taskstats.features(d, CLASSES) for d in REF]
EDGES = {k: taskstats.edges(k, [c[k] for c in COLUMNS]) for k in COLUMNS[0]}
BASE = Baseline(
    len(REF),
    outputs={k: Feature(tuple(e), tuple(bin_counts(e, [c[k] for c in COLUMNS]))) for k, e in EDGES.items()},
    task=TaskSection("detection", CLASSES),
)


def window(docs: list[dict]) -> dict:
    """Bin answers as the agent's recorder does (taskstats.features on the baseline's edges)."""
    counts = {k: [0] * (len(e) + 1) for k, e in EDGES.items()}
    for d in docs:
        for k, v in taskstats.features(d, CLASSES).items():
            counts[k][bin_counts(EDGES[k], [v]).index(1)] += 1
    return {"outputs": counts}


def gate(win: dict) -> str:
    st = RolloutState(
        "b" * 64,
        devices=(DeviceState("d", "installed", 0),),
        baseline=BASE.refs(),
        drift_thresholds=BASE.thresholds_for(""),
        feature_thresholds={k: BASE.thresholds_for(k) for k in BASE.features()},
    )
    drift = {f"outputs.{k}": v for k, v in win["outputs"].items()}
    health = {"d": Health("d", inferences=500, drift=drift)}
    policy = Policy(gates=Gates(max_p95_ratio=None, max_error_rate=None))
    return next(g for g in evaluate_gates(st, st.devices, health, policy) if g.name == "drift").status


def test_the_baseline_has_a_feature_per_signal_and_per_busy_class():
    assert CLASSES == (1, 3)
    assert set(BASE.outputs) == {"detection_count", "detection_top_score", "detections_c1", "detections_c3"}


@pytest.mark.parametrize(
    ("case", "docs", "signals", "gate_status"),
    [
        ("same traffic", frames(1, 500, 3.0, 0.2), {}, "pass"),
        (
            "an empty road (camera moved)",
            frames(2, 500, 0.3, 0.2),
            {"detections per frame": "alert", "detections per class": "alert", "detection scores": "alert"},
            "breach",
        ),
        ("buses instead of cars", frames(3, 500, 3.0, 0.8), {"detections per class": "alert"}, "breach"),
    ],
)
def test_detection_drift_alerts_on_its_own_signal_in_report_and_gate(case, docs, signals, gate_status):
    report = assess(BASE, [window(docs)])
    got = report.signals()
    assert set(got) == {"detections per frame", "detection scores", "detections per class"}
    # the drifted signals alert; the others do not
    assert {name: status for name, status in got.items() if status == "alert"} == signals, (case, got)
    assert report.to_dict()["signals"] == got
    assert gate(window(docs)) == gate_status


def test_signal_names_every_task_feature():
    assert taskstats.signal("inputs.brightness") == "input features"
    assert taskstats.signal("outputs.fraction_c15") == "class-pixel fractions"
    assert taskstats.signal("outputs.detections_c3") == "detections per class"
    assert taskstats.signal("outputs.centroid_distance") == "distance to the baseline centroid"
    assert taskstats.signal("outputs.keypoints_visible") == "keypoint scores"
    assert taskstats.signal("outputs.top1_class") == "class mix"
    assert taskstats.signal("outputs.newer_feature") == "newer_feature"
