"""The answer forms: a classifier's class scores, every other task's outputs by name, never
ranked as class scores."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import answers
from protocol.signature import Quantization, Signature, TensorSpec

IMAGE = TensorSpec("image", "uint8", (1, 8, 8, 3), "image", Quantization(0.0078125, 128))


def _sig(task: str, *outputs: TensorSpec, stateful: bool = False) -> Signature:
    return Signature(task, (IMAGE,), outputs, stateful)


def test_a_bundle_without_a_signature_and_a_classifier_answer_class_scores():
    assert answers.form(None) == answers.CLASSIFICATION
    assert answers.form(_sig("classification", TensorSpec("p", "uint8", (1, 4), "scores"))) == "classification"
    for task in ("detection", "segmentation", "keypoints", "embedding", "tensors", "ocr"):
        assert answers.form(_sig(task, TensorSpec("o", "float32", (1, 4), "tensor"))) == answers.TENSORS


def test_top_ranks_best_first_lower_index_on_ties_and_names_missing_labels_by_index():
    scores = np.array([0.1, 0.5, 0.5, 0.0, 0.9], np.float32)
    top = answers.top(scores, ["a", "b", "c"], k=4)
    assert [t["index"] for t in top] == [4, 1, 2, 0]
    assert [t["label"] for t in top] == ["4", "b", "c", "a"]
    assert top[0]["score"] == pytest.approx(0.9)


def test_uint8_scores_do_not_wrap_when_ranked():
    assert answers.top(np.array([0, 255, 3], np.uint8), [])[0]["index"] == 1


def test_a_batch_keeps_one_row_per_input_and_its_first_row_is_ranked():
    scores = np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)
    doc = answers.classification(scores, ["x", "y"])
    assert doc["predictions"].tolist() == scores.tolist() and doc["top"][0]["label"] == "y"


@pytest.mark.parametrize("shape", [(3,), (1, 3), (1, 1, 3)])
def test_one_inputs_scores_answer_one_row_whatever_their_shape(shape):
    """The agent has one image's scores flat, the cloud the model's ``[1, K]`` (or ``[1, 1, K]``)
    output: both answer ``[[K scores]]``, the seed's ``[N, K]``."""
    scores = np.array([0.1, 0.7, 0.2], np.float32).reshape(shape)
    doc = answers.classification(scores, ["a", "b", "c"])
    assert doc["predictions"].tolist() == [[np.float32(0.1), np.float32(0.7), np.float32(0.2)]]
    assert [t["label"] for t in doc["top"]] == ["b", "c", "a"]


def test_tensors_are_dequantized_by_name_and_role_with_their_shape_state_left_out():
    sig = Signature(
        "detection",
        (IMAGE, TensorSpec("c_in", "uint8", (1, 2), "state", Quantization(0.5, 0))),
        (
            TensorSpec("boxes", "float32", (1, 2, 4), "boxes"),
            TensorSpec("count", "float32", (1,), "count"),
            TensorSpec("emb", "uint8", (1, 3), "tensor", Quantization(0.25, 10)),
            TensorSpec("c_out", "uint8", (1, 2), "state", Quantization(0.5, 0)),
        ),
        stateful=True,
    )
    raw = [np.zeros((1, 2, 4), np.float32), np.array([2.0], np.float32), np.array([[10, 14, 18]], np.uint8)]
    doc = answers.tensors(sig, [*raw, np.zeros((1, 2), np.uint8)])
    assert doc["task"] == "detection"
    assert [(t["name"], t["role"], t["shape"]) for t in doc["tensors"]] == [
        ("boxes", "boxes", [1, 2, 4]),
        ("count", "count", [1]),
        ("emb", "tensor", [1, 3]),
    ]
    emb = doc["tensors"][2]
    assert emb["dtype"] == "float32" and emb["values"].tolist() == [[0.0, 1.0, 2.0]]
    # an ONNX twin has no state outputs: its outputs map onto the answer ones
    assert answers.tensors(sig, raw)["tensors"][1]["values"].tolist() == [2.0]
    with pytest.raises(ValueError, match="the model gave 2 outputs, its signature lists 4 \\(3 besides state\\)"):
        answers.tensors(sig, raw[:2])


def test_a_class_map_keeps_its_integer_class_ids():
    sig = _sig("segmentation", TensorSpec("ArgMax", "int64", (1, 2, 2), "mask"))
    doc = answers.tensors(sig, [np.array([[[0, 15], [15, 3]]], np.int64)])
    (mask,) = doc["tensors"]
    assert mask["dtype"] == "int64" and mask["values"].tolist() == [[[0, 15], [15, 3]]]


def test_a_float_output_already_dequantized_is_not_dequantized_again():
    spec = TensorSpec("emb", "uint8", (1, 2), "embedding", Quantization(0.5, 4))
    done = np.array([[1.0, 2.0]], np.float32)
    assert answers.dequantize(spec, done) is done


@pytest.mark.parametrize(
    "shapes, ok",
    [
        ([[1, 1001]], True),
        ([[10]], True),
        ([["batch", 10]], True),
        ([[1, 513, 513]], False),  # a segmenter's mask forced through an old import
        ([[1, 1, 17, 3]], False),  # a pose model's keypoints
        ([[1, 10, 4], [1, 10], [1, 10], [1]], False),  # a detector's four outputs
    ],
)
def test_a_bundle_without_a_signature_is_answered_only_if_it_really_is_a_classifier(shapes, ok):
    problem = answers.unsigned_problem(shapes)
    assert (problem is None) == ok
    if not ok:
        assert "no model signature" in problem and "re-import" in problem
