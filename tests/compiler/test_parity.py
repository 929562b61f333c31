"""compiler.parity: the rules that ship or withhold the ONNX twin (pure, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.inference import IoSpec
from compiler.parity import (
    MAX_STEP_DIFF,
    MIN_TOP1_AGREEMENT,
    SYNTHETIC_SAMPLES,
    Comparison,
    choose_inputs,
    choose_metric,
    conversion_failed,
    cosine,
    judge,
    not_made,
    synthetic,
)

U8_SCORES = IoSpec((1, 4), np.dtype(np.uint8), 1 / 256, 0)
F32_SCORES = IoSpec((1, 4), np.dtype(np.float32), 0.0, 0)
U8_IMAGE = IoSpec((1, 2, 2, 3), np.dtype(np.uint8), 0.0078125, 128)
I8_IMAGE = IoSpec((1, 2, 2, 3), np.dtype(np.int8), 0.0078125, 0)
F32_IMAGE = IoSpec((1, 2, 2, 3), np.dtype(np.float32), 0.0, 0)
IMAGE = {"kind": "image", "height": 2, "width": 2, "channels": 3, "scale": 1 / 127.5, "offset": -1.0}


def _classification(top1: float, steps: int) -> dict[str, float]:
    return {"top1_agreement": top1, "max_step_diff": steps, "max_abs_diff": steps / 256, "cosine_min": 1.0}


@pytest.mark.parametrize(
    "top1,steps,status",
    [
        (1.0, 0, "verified"),
        (MIN_TOP1_AGREEMENT, MAX_STEP_DIFF, "verified"),  # both limits are inclusive
        (0.98, 0, "withheld"),
        (1.0, MAX_STEP_DIFF + 1, "withheld"),
        (0.09375, 207, "withheld"),  # the inat bird twin on 32 synthetic inputs
    ],
)
def test_a_quantized_classifier_needs_top1_agreement_and_few_steps(top1: float, steps: int, status: str) -> None:
    twin = judge(_classification(top1, steps), "classification", "synthetic", 32, quantized=True)
    assert twin.status == status
    assert twin.limits == {"min_top1_agreement": 0.99, "max_step_diff": 32}
    assert (twin.inputs, twin.n, twin.metric) == ("synthetic", 32, "classification")


def test_a_withheld_twin_names_every_failing_figure_and_its_limit() -> None:
    twin = judge(_classification(0.09375, 207), "classification", "synthetic", 32, quantized=True)
    assert twin.reason == (
        "top-1 agreement 9.38% < 99.00%; largest difference 207 quantization steps > 32 on 32 synthetic inputs"
    )
    assert twin.line().startswith("withheld: top-1 agreement 9.38%")


def test_a_verified_twin_says_what_it_met() -> None:
    twin = judge(_classification(1.0, 9), "classification", "calibration", 1, quantized=True)
    assert twin.reason == (
        "top-1 agreement 100.00% >= 99.00%, largest difference 9 quantization steps <= 32 on 1 calibration input"
    )


def test_a_float_classifier_twin_is_held_to_float_rounding() -> None:
    figs = {"top1_agreement": 1.0, "max_abs_diff": 2e-3, "cosine_min": 1.0}
    twin = judge(figs, "classification", "user", 360, quantized=False)
    assert twin.status == "withheld" and "largest difference 0.002 > 0.001" in twin.reason
    assert judge(dict(figs, max_abs_diff=5e-5), "classification", "user", 360, quantized=False).shipped


@pytest.mark.parametrize(
    "metric,figures,quantized,status",
    [
        ("pixels", {"pixel_agreement": 0.9945}, False, "verified"),  # deeplab on dog_segmentation.bmp
        ("pixels", {"pixel_agreement": 0.98}, False, "withheld"),
        ("keypoints", {"keypoint_distance_mean": 0.02, "cosine_min": 0.9}, False, "verified"),
        ("keypoints", {"keypoint_distance_mean": 0.0712, "cosine_min": 0.99}, False, "withheld"),
        ("cosine", {"cosine_min": 1.0, "max_step_diff": 0, "max_abs_diff": 0.0}, True, "verified"),
        ("cosine", {"cosine_min": 1.0, "max_step_diff": 40, "max_abs_diff": 0.9}, True, "withheld"),
        ("cosine", {"cosine_min": 0.9747, "max_abs_diff": 0.4}, False, "withheld"),  # movenet, synthetic
    ],
)
def test_other_tasks_are_judged_by_pixels_keypoint_distance_or_cosine(
    metric: str, figures: dict[str, float], quantized: bool, status: str
) -> None:
    assert judge(figures, metric, "synthetic", 32, quantized).status == status


@pytest.mark.parametrize(
    "task,spec,metric",
    [
        (None, U8_SCORES, "classification"),
        (None, F32_SCORES, "classification"),
        (None, IoSpec((1, 1, 1, 1024), np.dtype(np.uint8), 0.0235, 0), "cosine"),  # embedding extractor
        (None, IoSpec((1, 513, 513), np.dtype(np.int64), 0.0, 0), "pixels"),  # deeplab's ArgMax
        (None, IoSpec((1, 1, 17, 3), np.dtype(np.float32), 0.0, 0), "cosine"),  # movenet, task unknown
        ("classification", IoSpec((1, 1, 1, 10), np.dtype(np.uint8), 1 / 256, 0), "classification"),
        ("segmentation", IoSpec((1, 513, 513), np.dtype(np.int64), 0.0, 0), "pixels"),
        ("segmentation", IoSpec((1, 64, 64, 21), np.dtype(np.uint8), 0.1, 0), "pixels"),  # logits
        ("keypoints", IoSpec((1, 1, 17, 3), np.dtype(np.float32), 0.0, 0), "keypoints"),
        ("embedding", U8_SCORES, "cosine"),
        ("tensors", U8_SCORES, "cosine"),
        ("detection", U8_SCORES, "cosine"),
    ],
)
def test_the_metric_follows_the_task_else_the_output(task: str | None, spec: IoSpec, metric: str) -> None:
    assert choose_metric(task, spec) == metric


def test_comparison_counts_quantization_steps_and_tied_top_scores_as_agreement() -> None:
    cmp = Comparison(U8_SCORES, "classification")
    cmp.add(np.array([[10, 200, 200, 0]], np.uint8), np.array([[10, 199, 201, 0]], np.uint8))  # tie broken: agree
    cmp.add(np.array([[250, 5, 0, 0]], np.uint8), np.array([[5, 250, 0, 0]], np.uint8))  # another class: disagree
    f = cmp.figures()
    assert f["top1_agreement"] == 0.5 and f["max_step_diff"] == 245
    assert f["max_abs_diff"] == pytest.approx(245 / 256) and f["exact_fraction"] == 0.5
    assert f["cosine_min"] < 0.1


def test_class_maps_report_only_the_pixels_that_agree() -> None:
    cmp = Comparison(IoSpec((1, 2, 2), np.dtype(np.int64), 0.0, 0), "pixels")
    cmp.add(np.array([[[0, 15], [15, 15]]]), np.array([[[0, 15], [15, 3]]]))
    assert cmp.figures() == {"exact_fraction": 0.75, "pixel_agreement": 0.75}


def test_a_uint8_mask_without_quantization_is_compared_as_class_ids() -> None:
    spec = IoSpec((1, 2, 2), np.dtype(np.uint8), 0.0, 0)
    assert choose_metric(None, spec) == "pixels"
    cmp = Comparison(spec, "pixels")
    cmp.add(np.array([[[1, 2], [3, 4]]], np.uint8), np.array([[[1, 2], [3, 5]]], np.uint8))
    assert cmp.figures() == {"exact_fraction": 0.75, "pixel_agreement": 0.75}


def test_segmentation_logits_agree_by_their_per_pixel_argmax() -> None:
    cmp = Comparison(IoSpec((1, 1, 2, 3), np.dtype(np.uint8), 0.1, 0), "pixels")
    ref = np.array([[[[9, 1, 0], [0, 2, 8]]]], np.uint8)
    cmp.add(ref, np.array([[[[8, 2, 0], [0, 9, 7]]]], np.uint8))  # first pixel same class, second not
    f = cmp.figures()
    assert f["pixel_agreement"] == 0.5 and f["max_step_diff"] == 7


def test_keypoints_are_compared_by_their_y_x_distance_not_their_scores() -> None:
    cmp = Comparison(IoSpec((1, 1, 2, 3), np.dtype(np.float32), 0.0, 0), "keypoints")
    ref = np.array([[[[0.5, 0.5, 0.9], [0.1, 0.2, 0.8]]]], np.float32)
    cmp.add(ref, np.array([[[[0.53, 0.54, 0.1], [0.1, 0.2, 0.1]]]], np.float32))
    f = cmp.figures()
    assert f["keypoint_distance_mean"] == pytest.approx(0.025, abs=1e-6)
    assert f["keypoint_distance_max"] == pytest.approx(0.05, abs=1e-6)
    assert judge(f, "keypoints", "synthetic", 1, quantized=False).reason == (
        "mean keypoint distance 0.025 > 0.02 on 1 synthetic input"
    )


def test_cosine_of_zero_outputs() -> None:
    z = np.zeros(3)
    assert cosine(z, z) == 1.0 and cosine(z, np.ones(3)) == 0.0 and cosine(np.ones(3), 2 * np.ones(3)) == 1.0


@pytest.mark.parametrize("spec,lo,hi", [(U8_IMAGE, 0, 255), (I8_IMAGE, -128, 127)])
def test_synthetic_inputs_cover_an_integer_inputs_whole_range(spec: IoSpec, lo: int, hi: int) -> None:
    x = synthetic(spec, IMAGE, 256, 0)
    assert x.dtype == spec.dtype and x.shape == (256, 2, 2, 3)
    assert int(x.min()) == lo and int(x.max()) == hi
    assert np.array_equal(x, synthetic(spec, IMAGE, 256, 0))  # seeded: a rebuild measures the same inputs


def test_synthetic_inputs_for_a_float_image_go_through_the_preprocess() -> None:
    x = synthetic(F32_IMAGE, IMAGE, 256, 0)
    assert x.dtype == np.float32 and x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    assert np.allclose((x + 1.0) * 127.5, np.round((x + 1.0) * 127.5), atol=1e-3)  # whole pixel values
    t = synthetic(F32_IMAGE, {"kind": "tensor"}, 64, 0)
    assert -1.0 <= t.min() < t.max() <= 1.0


def test_parity_inputs_prefer_the_users_data_then_calibration_then_synthetic() -> None:
    val, cal = np.full((3, 2, 2, 3), 0.5, np.float32), np.zeros((5, 2, 2, 3), np.float32)
    got = choose_inputs(U8_IMAGE, IMAGE, val, cal)
    assert got.kind == "user" and got.raw.shape == (3, 2, 2, 3) and got.raw.dtype == np.uint8
    assert int(got.raw[0, 0, 0, 0]) == 192  # quantized as the device would: round(0.5 / (1/128)) + 128
    assert choose_inputs(U8_IMAGE, IMAGE, None, cal).kind == "calibration"
    syn = choose_inputs(U8_IMAGE, IMAGE, None, None)
    assert syn.kind == "synthetic" and len(syn.raw) == SYNTHETIC_SAMPLES


def test_a_converter_failure_is_withheld_with_its_first_line_and_no_twin_asked_for_is_none() -> None:
    twin = conversion_failed("tf2onnx from_tflite (m.tflite) failed: ValueError: boom\nTraceback ...")
    assert (twin.status, twin.reason, twin.inputs) == (
        "withheld",
        "tf2onnx from_tflite (m.tflite) failed: ValueError: boom",
        None,
    )
    assert not_made("--no-onnx").to_dict() == {"status": "none", "reason": "--no-onnx"}
