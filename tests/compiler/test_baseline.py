"""The compiler writes ``baseline.json`` through :mod:`protocol.baseline`: what it builds is what
the agent and the hub parse."""

from __future__ import annotations

import numpy as np

from compiler import baseline
from compiler.pipeline import _json
from protocol.baseline import SCHEMA, parse
from protocol.features import class_edges
from protocol.sketch import DriftThresholds

PRE = {"kind": "image", "height": 8, "width": 8, "channels": 1, "scale": 1 / 255, "offset": 0.0}


def test_the_built_baseline_parses_with_the_one_reader_and_round_trips():
    rng = np.random.default_rng(5)
    x = rng.random((50, 8, 8, 1)).astype(np.float32)
    scores = rng.dirichlet(np.ones(4), 50).astype(np.float32)
    doc = baseline.build(x, scores, PRE, num_classes=4, thresholds=DriftThresholds(psi_warn=0.2, min_samples=30))
    parsed = parse(_json(doc))
    assert parsed.to_dict() == doc and parsed.samples == 50 and parsed.schema == SCHEMA
    assert set(parsed.inputs) == {"mean_c0", "std_c0", "brightness"}
    assert parsed.outputs["top1_class"].edges == tuple(class_edges(4))
    assert all(sum(f.ref) == 50 for f in parsed.features().values())
    assert doc["thresholds"] == {"psi_warn": 0.2, "psi_alert": 0.25, "min_samples": 30}
