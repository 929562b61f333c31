"""The self-test comparison rule per dtype (protocol.selftest), table-tested: quantized outputs in
steps, float outputs within 2 % of their scale, class masks by agreement and histogram; large
outputs sampled; schema-1 documents parse as first-output-only; bad fields are named."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from protocol import selftest as st
from protocol.errors import BadPayload


@pytest.mark.parametrize(
    ("dtype", "kind"),
    [("uint8", "steps"), ("int8", "steps"), ("int16", "steps"), ("float32", "close"), ("int64", "agreement")],
)
def test_each_dtype_gets_its_compare_rule(dtype: str, kind: str) -> None:
    assert st.compare_kind(dtype) == kind


@pytest.mark.parametrize(
    ("dtype", "want", "got", "ok"),
    [
        ("uint8", [10, 200], [12, 198], True),  # 2 steps
        ("uint8", [10, 200], [13, 200], False),  # 3 steps
        ("float32", [0.5, 1.0], [0.519, 1.0], True),  # scale 1.0: tolerance 0.02
        ("float32", [0.5, 1.0], [0.53, 1.0], False),
        ("float32", [40.0, 0.0], [40.7, 0.0], True),  # a detection count of 40: tolerance 0.8
        ("float32", [40.0, 0.0], [41.0, 0.0], False),
    ],
)
def test_values_within_the_outputs_tolerance_pass_and_beyond_it_fail(
    dtype: str, want: list[float], got: list[float], ok: bool
) -> None:
    spec = st.spec_for("out", dtype, [2], 0.0, 0, [want])
    check = st.compare(spec, st.expect(spec, want), got)
    assert check.ok is ok, check.detail
    assert ("<= tolerance" if ok else "> tolerance") in check.detail


def test_a_mask_passes_at_99_percent_agreement_and_fails_below_it() -> None:
    want = [0] * 900 + [3] * 100
    spec = st.spec_for("mask", "int64", [1000], 0.0, 0, [want])
    exp = st.expect(spec, want)
    assert exp.stride == 1 and exp.histogram == {0: 900, 3: 100}
    assert st.compare(spec, exp, [0] * 910 + [3] * 90).ok  # 1 % off
    check = st.compare(spec, exp, [0] * 911 + [3] * 89)
    assert not check.ok and "98.90% of 1000 sampled values agree" in check.detail


def test_a_large_output_is_sampled_but_compared_whole_for_its_histogram() -> None:
    want = [0] * 263_169
    spec = st.spec_for("mask", "int64", [1, 513, 513], 0.0, 0, [want])
    exp = st.expect(spec, want)
    assert exp.stride == 258 and len(exp.values) <= st.MAX_VALUES
    got = [0 if i % 258 == 0 else 5 for i in range(263_169)]  # every pixel the sample skips: another class
    check = st.compare(spec, exp, got)
    assert not check.ok and "class histograms differ by" in check.detail


def test_a_schema_1_document_compares_the_first_output_only() -> None:
    doc = st.parse({"tolerance": 2, "cases": [{"input": [[1, 2]], "expected": [[3, 4]]}]})
    assert doc.outputs == () and doc.legacy == ((3, 4),)
    assert doc.compared == "the first output only (schema 1 vectors)"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"schema": 2, "cases": [{"input": [1]}], "outputs": [{"shape": [1], "compare": "x"}]}, "outputs.0.compare"),
        (
            {"schema": 2, "cases": [{"input": [1], "outputs": []}], "outputs": [{"shape": [1], "compare": "steps"}]},
            "cases.0",
        ),  # fmt: skip
        ({"cases": "none"}, "cases"),
        ({"tolerance": "2", "cases": []}, "tolerance"),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(BadPayload, match=f"'{field}'"):
        st.parse(doc)


def test_unknown_keys_are_kept() -> None:
    doc = st.parse({"schema": 2, "cases": [], "smoke": True, "note": "why", "inputs": "synthetic"})
    assert doc.smoke and doc.extra == {"note": "why", "inputs": "synthetic"}


def _pose(path: Path) -> list[float]:
    rows = sorted(csv.DictReader(path.read_text().splitlines()), key=lambda r: int(r["keypoint_id"]))
    return [float(r[k]) for r in rows for k in ("keypoint_y", "keypoint_x", "keypoint_score")]


def test_coral_movenet_on_the_edge_tpu_passes_against_the_cpu_reference_and_a_shifted_pose_fails(
    coral_models: Path,
) -> None:
    """Coral's own references of the same image: the Edge TPU model's keypoints are within 0.02
    of the CPU model's, its scores up to 0.40 off (2 % of the scale would refuse the install)."""
    cpu = _pose(coral_models / "movenet_single_pose_lightning_ptq_reference.csv")
    tpu = _pose(coral_models / "movenet_single_pose_lightning_ptq_edgetpu_reference.csv")
    spec = st.spec_for("keypoints", "float32", [1, 1, 17, 3], 0.0, 0, [cpu])
    assert spec.compare == "keypoints" and spec.tolerance == 0.05
    assert st.compare(spec, st.expect(spec, cpu), tpu).ok
    close = st.spec_for("keypoints", "float32", [1, 1, 17, 3], 0.0, 0, [cpu])
    close = st.OutputSpec(close.name, close.dtype, close.shape, "close", 0.02)
    assert not st.compare(close, st.expect(close, cpu), tpu).ok  # the plain float rule would refuse it
    shifted = [v + 0.06 if i % 3 == 1 else v for i, v in enumerate(tpu)]  # the person 12 px to the right
    check = st.compare(spec, st.expect(spec, cpu), shifted)
    assert not check.ok and "keypoints moved by up to" in check.detail
