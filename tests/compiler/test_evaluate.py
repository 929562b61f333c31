"""compiler.evaluate: metrics and the accuracy gate (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.evaluate import GatePolicy, Metrics, auc_ovr, gate, macro_f1, metrics


def test_perfect_ranking_has_auc_one_and_reversed_has_zero() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    assert auc_ovr(s, y) == 1.0
    assert auc_ovr(s[:, ::-1], y) == 0.0


def test_auc_counts_ties_as_half() -> None:
    y = np.array([0, 1])
    assert auc_ovr(np.array([[0.5, 0.5], [0.5, 0.5]]), y) == 0.5


def test_auc_skips_classes_without_positives() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.9, 0.0]])
    assert auc_ovr(s, y) == 1.0  # class 2 never occurs: not averaged in


def test_macro_f1_weighs_classes_equally() -> None:
    y = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0])
    # class 0: tp 3, fp 1 -> F1 6/7; class 1: tp 0, fn 1 -> 0
    assert macro_f1(pred, y, 2) == pytest.approx(3 / 7)


def test_agreement_and_max_diff_are_against_the_reference() -> None:
    ref = np.array([[0.9, 0.1], [0.4, 0.6]])
    other = np.array([[0.7, 0.3], [0.6, 0.4]])
    m = metrics(other, np.array([0, 1]), ref)
    assert m.agreement == 0.5 and m.max_abs_diff == pytest.approx(0.2) and m.accuracy == 0.5


def _m(acc: float, agreement: float | None = None, diff: float | None = None) -> Metrics:
    return Metrics(100, acc, acc, None, agreement, diff)


@pytest.mark.parametrize(
    "float_acc,int8_acc,limit,passed",
    [
        (0.95, 0.94, 1.0, True),  # exactly 1 point: allowed
        (0.95, 0.9399, 1.0, False),
        (0.95, 0.96, 1.0, True),  # int8 better than float
        (0.95, 0.90, 5.0, True),
    ],
)
def test_int8_drop_gate_boundary(float_acc: float, int8_acc: float, limit: float, passed: bool) -> None:
    res = gate(_m(float_acc), _m(int8_acc), GatePolicy(max_accuracy_drop=limit))
    assert res.passed is passed and [c.name for c in res.checks] == ["int8_accuracy_drop"]


def test_the_gate_judges_the_int8_model_only() -> None:
    """A drifting ONNX twin is withheld by compiler.parity, never a failed gate."""
    res = gate(_m(0.9), _m(0.85), GatePolicy(max_accuracy_drop=1.0))
    assert [c.name for c in res.failures()] == ["int8_accuracy_drop"] and res.to_dict()["passed"] is False


@pytest.mark.parametrize(
    "int8_acc,floor,passed",
    [
        (0.50, 0.50, True),  # exactly the floor: allowed
        (0.4999, 0.50, False),
        (0.97, 0.258, True),  # a retrained model above the one it replaces
    ],
)
def test_int8_accuracy_floor_refuses_a_model_below_it(int8_acc: float, floor: float, passed: bool) -> None:
    res = gate(_m(int8_acc), _m(int8_acc), GatePolicy(min_accuracy=floor))
    assert res.passed is passed and [c.name for c in res.checks] == ["int8_accuracy_drop", "int8_accuracy"]
    check = res.checks[1]
    assert check.limit == floor and ("floor" in check.detail), check


def test_no_floor_by_default() -> None:
    assert [c.name for c in gate(_m(0.1), _m(0.1)).checks] == ["int8_accuracy_drop"]


def test_without_int8_figures_the_floor_check_is_named_after_the_float_model_it_judged() -> None:
    (check,) = gate(_m(0.4), None, GatePolicy(min_accuracy=0.5)).checks
    assert (check.name, check.passed) == ("float_accuracy", False) and check.detail.startswith("float top-1")
