"""``baseline.json`` has one reader: what the compiler writes parses, round-trips, keeps what a
newer compiler adds, and a bad field is refused by name with its value."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from protocol.baseline import Baseline, Feature, Thresholds, parse
from protocol.codec import canonical
from protocol.errors import BadPayload
from protocol.sketch import DriftThresholds

# the compiler's real output: baseline.json of `python -m compiler digits` (tests/conftest.py's
# digits_bundle), byte for byte
DIGITS = Path(__file__).resolve().parent / "vectors" / "baseline.digits.json"


def doc() -> dict[str, Any]:
    return {
        "schema": 1,
        "samples": 1000,
        "inputs": {"brightness": {"edges": [0.25, 0.5, 0.75], "ref": [250, 250, 250, 250]}},
        "outputs": {"top1_class": {"edges": [0.5, 1.5], "ref": [333, 333, 334], "thresholds": {"psi_alert": 0.5}}},
        "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100},
    }


def test_the_compilers_real_baseline_parses_and_round_trips_exactly():
    raw = DIGITS.read_bytes()
    base = parse(raw)
    assert base.schema == 1 and base.samples == 360
    assert set(base.features()) == {
        "inputs.brightness",
        "inputs.mean_c0",
        "inputs.std_c0",
        "outputs.top1_class",
        "outputs.top1_confidence",
    }
    assert base.edges("outputs")["top1_class"] == [i + 0.5 for i in range(9)]
    assert all(sum(f.ref) == 360 for f in base.features().values())
    assert base.to_dict() == json.loads(raw)
    assert base.thresholds_for("inputs.brightness") == DriftThresholds(0.1, 0.25, 100)


def test_round_trip_through_bytes_gives_the_same_baseline():
    base = Baseline.from_dict(doc())
    assert parse(canonical(base.to_dict())) == base
    assert base.to_dict() == doc()
    assert base.refs() == {"inputs.brightness": [250, 250, 250, 250], "outputs.top1_class": [333, 333, 334]}


def test_fields_a_newer_compiler_adds_are_kept_at_every_level():
    d = doc()
    d["built_by"] = "compiler 9"
    d["inputs"]["brightness"]["quantiles"] = [0.1, 0.9]
    d["thresholds"]["js_alert"] = 0.2
    d["outputs"]["top1_class"]["thresholds"]["note"] = "per class"
    base = parse(canonical(d))
    assert base.extra == {"built_by": "compiler 9"}
    assert base.inputs["brightness"].extra == {"quantiles": [0.1, 0.9]}
    assert base.to_dict() == d


def test_thresholds_apply_from_the_model_to_the_feature_to_the_hubs_overrides():
    base = Baseline.from_dict(doc())
    assert base.thresholds_for("inputs.brightness") == DriftThresholds(0.1, 0.25, 100)
    assert base.thresholds_for("outputs.top1_class") == DriftThresholds(0.1, 0.5, 100)
    over = {"*": Thresholds(psi_alert=0.3, min_samples=10), "outputs.top1_class": Thresholds(ks_alpha=0.01)}
    assert base.thresholds_for("inputs.brightness", over) == DriftThresholds(0.1, 0.3, 10)
    # the feature's own beats the hub's fleet-wide "*"; the hub's per-feature override beats all
    assert base.thresholds_for("outputs.top1_class", over) == DriftThresholds(0.1, 0.5, 10, 0.01)
    assert Baseline(0).thresholds_for("inputs.x") == DriftThresholds()


def _set(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc())
    *parents, last = path.split("/")
    node = d
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("schema", _DELETE, "missing field 'schema'"),
        ("schema", "1", "field 'schema' must be int, got '1'"),
        ("schema", 0, "field 'schema' must be >= 1, got 0"),
        ("samples", _DELETE, "missing field 'samples'"),
        ("samples", -1, "field 'samples' must be >= 0, got -1"),
        ("inputs", [], "field 'inputs' must be dict, got []"),
        ("inputs/brightness", [0.5], "inputs.brightness must be an object, got [0.5]"),
        ("inputs/brightness/edges", _DELETE, "baseline inputs.brightness: missing field 'edges'"),
        (
            "inputs/brightness/edges",
            [0.25, "x", 0.75],
            "field 'inputs.brightness.edges' must hold finite numbers, found 'x'",
        ),
        ("inputs/brightness/edges", [0.25, True, 0.75], "must hold finite numbers, found True"),
        (
            "inputs/brightness/edges",
            [0.5, 0.25, 0.75],
            "field 'inputs.brightness.edges' must ascend, found 0.25 after 0.5",
        ),
        ("inputs/brightness/ref", _DELETE, "baseline inputs.brightness: missing field 'ref'"),
        ("inputs/brightness/ref", [250, -1, 250, 250], "field 'inputs.brightness.ref' must hold ints >= 0, found -1"),
        ("inputs/brightness/ref", [250, 2.5, 250, 250], "field 'inputs.brightness.ref' must hold ints >= 0, found 2.5"),
        (
            "inputs/brightness/ref",
            [500, 500],
            "field 'inputs.brightness.ref' must hold 4 counts (one more than edges), got 2",
        ),
        ("outputs/top1_class/thresholds", 0.5, "outputs.top1_class.thresholds must be an object, got 0.5"),
        (
            "outputs/top1_class/thresholds/psi_alert",
            "high",
            "field 'outputs.top1_class.thresholds.psi_alert' must be a finite number, got 'high'",
        ),
        ("thresholds/psi_warn", -0.1, "field 'thresholds.psi_warn' must be >= 0, got -0.1"),
        ("thresholds/ks_alpha", 1.5, "field 'thresholds.ks_alpha' must be within 0..1 (exclusive), got 1.5"),
        ("thresholds/min_samples", 10.5, "field 'min_samples' must be int, got 10.5"),
        ("thresholds/min_samples", -5, "field 'min_samples' must be >= 0, got -5"),
    ],
)
def test_each_bad_field_is_refused_naming_it_and_its_value(path: str, value: Any, message: str):
    with pytest.raises(BadPayload, match="^bad baseline") as exc:
        parse(json.dumps(_set(path, value)).encode())
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"{not json", "not valid JSON"),
        (b'{"schema": 1, "samples": NaN}', "not valid JSON"),
    ],
)
def test_bytes_that_are_no_json_object_are_a_bad_baseline(data: bytes, message: str):
    with pytest.raises(BadPayload, match=message):
        parse(data)


def test_a_feature_built_in_code_writes_what_it_was_given():
    f = Feature((0.5,), (3, 4), Thresholds(min_samples=5))
    assert f.to_dict() == {"edges": [0.5], "ref": [3, 4], "thresholds": {"min_samples": 5}}
    assert Baseline(7, outputs={"top1_class": f}).to_dict() == {
        "schema": 2,
        "samples": 7,
        "inputs": {},
        "outputs": {"top1_class": {"edges": [0.5], "ref": [3, 4], "thresholds": {"min_samples": 5}}},
    }
