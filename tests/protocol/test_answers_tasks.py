"""The per-task answers (protocol.answers.build): detection boxes in pixels of the original image,
segmentation counts and the PNG mask, named keypoints, the embedding's norm, and every request
parameter refused with its name and value when it is wrong for the model."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from protocol import answers
from protocol.errors import BadParameter
from protocol.labels import LabelMap, parse_labels
from protocol.signature import Quantization, Signature, TensorSpec

IMAGE = TensorSpec("image", "uint8", (1, 4, 8, 3), "image", Quantization(0.0078125, 128))
DETECTOR = Signature(
    "detection",
    (IMAGE, TensorSpec("c", "uint8", (1, 2), "state", Quantization(0.5, 0))),
    (
        TensorSpec("boxes", "float32", (1, 3, 4), "boxes"),
        TensorSpec("classes", "float32", (1, 3), "classes"),
        TensorSpec("scores", "float32", (1, 3), "scores"),
        TensorSpec("count", "float32", (1,), "count"),
        TensorSpec("c_out", "uint8", (1, 2), "state", Quantization(0.5, 0)),
    ),
    stateful=True,
)
PBTXT = 'item {\n  name: "sedan"\n  id: 1\n}\nitem {\n  name: "truck"\n  id: 2\n  display_name: "Truck"\n}\n'


def _detector_outputs(count: float = 2.0) -> list[np.ndarray]:
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, -0.1, 1.2, 0.5], [0.3, 0.3, 0.4, 0.4]]], np.float32)
    classes = np.array([[0.0, 1.0, 1.0]], np.float32)
    scores = np.array([[0.6, 0.9, 0.99]], np.float32)  # the third is past count: not a detection
    return [boxes, classes, scores, np.array([count], np.float32), np.zeros((1, 2), np.uint8)]


def test_detections_are_in_pixels_of_the_original_image_best_first_with_pbtxt_ids_and_names():
    doc = answers.build(DETECTOR, _detector_outputs(), parse_labels(PBTXT), answers.Params(), (640, 480))
    assert doc["task"] == "detection" and doc["image"] == {"width": 640, "height": 480}
    first, second = doc["detections"]
    assert (first["label"], first["class_id"], first["score"]) == ("Truck", 2, pytest.approx(0.9))
    # clipped to the image: [ymin, xmin, ymax, xmax] = [0, 0, 1, 0.5]
    assert first["box_normalized"] == {"xmin": 0.0, "ymin": 0.0, "xmax": 0.5, "ymax": 1.0}
    assert first["box"] == {"xmin": 0.0, "ymin": 0.0, "xmax": 320.0, "ymax": 480.0}
    assert (second["label"], second["class_id"]) == ("sedan", 1)
    assert second["box"] == pytest.approx({"xmin": 128.0, "ymin": 48.0, "xmax": 384.0, "ymax": 240.0})
    assert doc["max_detections"] == 3 and doc["score_threshold"] == 0.5 and "tensors" not in doc


@pytest.mark.parametrize(
    "params, kept",
    [
        (answers.Params(score_threshold=0.7, given=frozenset({"score_threshold"})), [0.9]),
        (answers.Params(score_threshold=0.0, given=frozenset({"score_threshold"})), [0.9, 0.6]),
        (answers.Params(max_detections=1, given=frozenset({"max_detections"})), [0.9]),
        (answers.Params(score_threshold=0.95, given=frozenset({"score_threshold"})), []),
    ],
)
def test_score_threshold_and_max_detections_choose_the_detections(params, kept):
    doc = answers.build(DETECTOR, _detector_outputs(), LabelMap(), params, (8, 4))
    assert [d["score"] for d in doc["detections"]] == pytest.approx(kept)


def test_a_detector_without_labels_names_classes_by_id_and_without_count_takes_every_row():
    outputs = _detector_outputs()
    sig = Signature("detection", (IMAGE,), DETECTOR.outputs[:3])
    doc = answers.build(sig, outputs[:3], LabelMap(), answers.Params(), None)
    assert [d["label"] for d in doc["detections"]] == ["1", "1", "0"]  # the third row counts now
    assert doc["image"] == {"width": 8, "height": 4}  # a tensor request: the input's own size


def test_segmentation_counts_pixels_per_class_and_the_png_mask_holds_the_class_ids():
    sig = Signature("segmentation", (IMAGE,), (TensorSpec("ArgMax", "int64", (1, 3, 4), "mask"),))
    mask = np.array([[[0, 0, 15, 15], [0, 15, 15, 15], [0, 0, 0, 2]]], np.int64)
    labels = LabelMap({0: "background", 2: "bicycle", 15: "person"})
    doc = answers.build(sig, [mask], labels, answers.Params(mask="png", given=frozenset({"mask"})), (40, 30))
    assert doc["classes"] == [
        {"class_id": 0, "label": "background", "pixels": 6, "fraction": 0.5},
        {"class_id": 15, "label": "person", "pixels": 5, "fraction": 5 / 12},
        {"class_id": 2, "label": "bicycle", "pixels": 1, "fraction": 1 / 12},
    ]
    assert doc["mask_size"] == {"width": 4, "height": 3} and doc["image"] == {"width": 40, "height": 30}
    png = Image.open(io.BytesIO(base64.b64decode(doc["mask"]["data"])))
    assert png.mode == "L" and png.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(png), mask[0])
    assert "mask" not in answers.build(sig, [mask], labels, answers.Params(), None)


def test_segmentation_logits_are_a_class_per_pixel_by_argmax_and_ids_over_255_get_a_16_bit_png():
    sig = Signature("segmentation", (IMAGE,), (TensorSpec("logits", "float32", (1, 1, 2, 3), "logits"),))
    logits = np.array([[[[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]]]], np.float32)
    doc = answers.build(sig, [logits], LabelMap(), answers.Params(), None)
    assert [(c["class_id"], c["pixels"]) for c in doc["classes"]] == [(0, 1), (1, 1)]
    ids = np.array([[300, 1]], np.int64)
    doc = answers.tasks.segmentation(ids, LabelMap(), answers.Params(mask="png"), (2, 1))
    png = Image.open(io.BytesIO(base64.b64decode(doc["mask"]["data"])))
    assert doc["mask"]["bit_depth"] == 16 and np.asarray(png).tolist() == [[300, 1]]


def test_keypoints_are_named_coco_17_in_pixels_of_the_original_image():
    sig = Signature("keypoints", (IMAGE,), (TensorSpec("kp", "float32", (1, 1, 17, 3), "keypoints"),))
    pts = np.zeros((1, 1, 17, 3), np.float32)
    pts[0, 0, 0] = [0.25, 0.5, 0.8]  # nose: y, x, score
    pts[0, 0, 16] = [1.0, 0.0, 0.2]
    doc = answers.build(sig, [pts], LabelMap(), answers.Params(), (200, 100))
    nose, ankle = doc["keypoints"][0], doc["keypoints"][16]
    assert nose == {
        "name": "nose",
        "score": pytest.approx(0.8),
        "x": 100.0,
        "y": 25.0,
        "x_normalized": 0.5,
        "y_normalized": 0.25,
    }
    assert ankle["name"] == "right_ankle" and (ankle["x"], ankle["y"]) == (0.0, 100.0)
    assert doc["score"] == pytest.approx(1.0 / 17)


def test_an_embedding_is_the_dequantized_vector_and_its_l2_norm():
    sig = Signature("embedding", (IMAGE,), (TensorSpec("e", "uint8", (1, 1, 1, 2), "embedding", Quantization(0.5, 0)),))
    doc = answers.build(sig, [np.array([[[[6, 8]]]], np.uint8)], LabelMap(), answers.Params(), None)
    assert doc["embedding"].tolist() == [3.0, 4.0] and doc["norm"] == 5.0 and doc["dimensions"] == 2
    raw = answers.build(sig, [np.array([[[[6, 8]]]], np.uint8)], LabelMap(), answers.Params(raw=True), None)["raw"]
    assert raw[0]["dtype"] == "uint8" and raw[0]["values"].tolist() == [[[[6, 8]]]]


def test_a_task_without_the_outputs_it_needs_is_answered_as_tensors():
    sig = Signature("detection", (IMAGE,), (TensorSpec("o", "float32", (1, 4), "tensor"),))
    assert answers.form(sig) == answers.TENSORS
    doc = answers.build(sig, [np.ones((1, 4), np.float32)], LabelMap(), answers.Params(), None)
    assert doc["task"] == "detection" and doc["tensors"][0]["name"] == "o"


@pytest.mark.parametrize(
    "query, message",
    [
        ({"score_threshold": "1.5"}, "request parameter score_threshold='1.5': must be a number in [0, 1]"),
        ({"score_threshold": "nan"}, "request parameter score_threshold='nan': must be a number in [0, 1]"),
        ({"max_detections": "0"}, "request parameter max_detections='0': must be in 1.."),
        ({"top_k": "two"}, "request parameter top_k='two': must be an integer"),
        ({"mask": "jpeg"}, "request parameter mask='jpeg': the one mask format is 'png'"),
        ({"raw": "maybe"}, "request parameter raw='maybe': must be true or false"),
        ({"treshold": "0.5"}, "request parameter treshold='0.5': is not a parameter of predict"),
    ],
)
def test_a_bad_parameter_is_refused_naming_it_and_its_value(query, message):
    with pytest.raises(BadParameter) as err:
        answers.parse_params(query)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "sig, query, message",
    [
        (DETECTOR, {"top_k": "3"}, "top_k=3: applies to classification, this model is detection"),
        (DETECTOR, {"mask": "png"}, "mask='png': applies to segmentation, this model is detection"),
        (DETECTOR, {"max_detections": "4"}, "max_detections=4: must be in 1..3 (the model gives 3 boxes)"),
        (None, {"score_threshold": "0.2"}, "score_threshold=0.2: applies to detection, this model is classification"),
        (
            Signature("classification", (IMAGE,), (TensorSpec("p", "uint8", (1, 4), "scores"),)),
            {"top_k": "5"},
            "top_k=5: must be in 1..4 (the model has 4 classes)",
        ),
    ],
)
def test_a_parameter_of_another_task_or_beyond_the_model_is_refused_before_it_runs(sig, query, message):
    with pytest.raises(BadParameter, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        answers.check_params(sig, answers.parse_params(query))


def test_the_server_s_own_parameters_are_left_to_it_and_raw_false_is_no_request():
    p = answers.parse_params({"model": "x", "raw": "false", "top_k": "2"}, ignore=("model",))
    assert p.given == frozenset({"top_k"}) and p.top_k == 2 and not p.raw
    answers.check_params(None, p)  # top_k on a classifier


@pytest.mark.parametrize(
    "text, names, offset",
    [
        ("background\ncat\n\ndog\n", {0: "background", 1: "cat", 3: "dog"}, 0),  # a blank line keeps its index
        ("0  person\n2 car\n", {0: "person", 2: "car"}, 0),  # pycoral's "id name"
        ("1: sedan\n2: truck\n", {1: "sedan", 2: "truck"}, 0),
        (PBTXT, {1: "sedan", 2: "Truck"}, 1),  # the Object Detection API's: output k is id k + 1
        ("0\n1\n2\n", {0: "0", 1: "1", 2: "2"}, 0),  # digits are names, not ids
    ],
)
def test_label_files_in_each_format(text, names, offset):
    m = parse_labels(text)
    assert (m.names, m.offset) == (names, offset)


def test_the_coral_traffic_label_map_reads_with_ids_from_one(coral_models):
    m = parse_labels((coral_models / "traffic_label_map.pbtxt").read_text())
    assert m.format == "pbtxt" and m.offset == 1 and m.name(1) == "sedan" and 0 not in m.names


def test_a_label_map_that_names_an_id_twice_is_refused():
    from protocol.errors import BadPayload

    with pytest.raises(BadPayload, match="id 1 is named twice"):
        parse_labels(PBTXT.replace("id: 2", "id: 1"))


def test_raw_of_a_classifier_is_its_scores_output_as_the_model_gave_it():
    sig = Signature(
        "classification",
        (IMAGE,),
        (
            TensorSpec("p", "uint8", (1, 3), "scores", Quantization(0.5, 0)),
            TensorSpec("aux", "float32", (1,), "tensor"),
        ),
    )
    (entry,) = answers.raw(sig, [np.array([[1, 2, 3]], np.uint8)])
    assert (entry["name"], entry["dtype"], entry["values"].tolist()) == ("p", "uint8", [[1, 2, 3]])
