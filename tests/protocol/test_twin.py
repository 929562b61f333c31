"""protocol.twin: the ONNX twin's status as the manifest and the report carry it."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import BadPayload
from protocol.twin import Twin, of_model

WITHHELD = {
    "status": "withheld",
    "reason": "top-1 agreement 9.38% < 99.00% on 32 synthetic inputs",
    "inputs": "synthetic",
    "n": 32,
    "metric": "classification",
    "figures": {"top1_agreement": 0.09375, "max_step_diff": 207},
    "limits": {"min_top1_agreement": 0.99, "max_step_diff": 32},
}


def test_a_status_reads_and_writes_back_the_same_document() -> None:
    t = Twin.from_dict(WITHHELD)
    assert t.to_dict() == WITHHELD and not t.shipped
    assert t.line() == "withheld: top-1 agreement 9.38% < 99.00% on 32 synthetic inputs"
    assert Twin.from_dict({"status": "none", "reason": "--no-onnx"}).to_dict() == {
        "status": "none",
        "reason": "--no-onnx",
    }


def test_unknown_fields_from_a_newer_compiler_survive() -> None:
    doc = dict(WITHHELD, detection={"f1": 0.5})
    assert Twin.from_dict(doc).to_dict() == doc


def test_a_manifest_without_a_status_has_none() -> None:
    assert of_model({"task": "classification"}) is None
    assert of_model({"twin": {"status": "verified", "reason": "ok"}}) == Twin("verified", "ok")


@pytest.mark.parametrize(
    "doc,problem",
    [
        ({"reason": "x"}, "missing field 'status'"),
        ({"status": "maybe", "reason": "x"}, "field 'status' must be one of verified, withheld, none, got 'maybe'"),
        ({"status": "verified"}, "missing field 'reason'"),
        ({"status": "verified", "reason": "x", "inputs": "guess"}, "field 'inputs' must be one of"),
        ({"status": "verified", "reason": "x", "n": -1}, "field 'n' must be >= 0, got -1"),
        ({"status": "verified", "reason": "x", "figures": {"cos": "high"}}, "field 'figures.cos' must be a finite"),
        ("verified", "expected a JSON object, got str"),
    ],
)
def test_a_bad_status_names_the_field_and_value(doc: Any, problem: str) -> None:
    with pytest.raises(BadPayload, match="^bad twin status: " + problem.replace("(", r"\(")):
        Twin.from_dict(doc)
