"""The model signature in the manifest: typed on the way in, unknown fields kept on the way out,
and a manifest without one still means classification."""

from __future__ import annotations

import copy

import pytest

from protocol.bundle import Artifact, Manifest, parse_manifest
from protocol.codec import canonical
from protocol.errors import BadPayload
from protocol.signature import Quantization, Signature, TensorSpec, of_model, task_of

MOVENET = {
    "schema": 1,
    "task": "keypoints",
    "stateful": False,
    "inputs": [
        {
            "name": "serving_default_input:0",
            "dtype": "uint8",
            "shape": [1, 192, 192, 3],
            "quantization": None,
            "role": "image",
        }
    ],
    "outputs": [
        {
            "name": "StatefulPartitionedCall:0",
            "dtype": "float32",
            "shape": [1, 1, 17, 3],
            "quantization": None,
            "role": "keypoints",
        }
    ],
}
TRAFFIC = {  # the detector with LSTM state, as the compiler reads it
    "schema": 1,
    "task": "detection",
    "stateful": True,
    "inputs": [
        {
            "name": "normalized_input_image_tensor",
            "dtype": "uint8",
            "shape": [1, 256, 256, 3],
            "quantization": {"scale": 0.0078125, "zero_point": 128},
            "role": "image",
        },
        {
            "name": "raw_inputs/init_lstm_c",
            "dtype": "uint8",
            "shape": [1, 8, 8, 320],
            "quantization": {"scale": 0.0235294122248888, "zero_point": 0},
            "role": "state",
        },
    ],
    "outputs": [
        {
            "name": "TFLite_Detection_PostProcess",
            "dtype": "float32",
            "shape": [1, 40, 4],
            "quantization": None,
            "role": "boxes",
        },
        {
            "name": "TFLite_Detection_PostProcess:3",
            "dtype": "float32",
            "shape": [1],
            "quantization": None,
            "role": "count",
        },
        {
            "name": "raw_outputs/lstm_c",
            "dtype": "uint8",
            "shape": [1, 8, 8, 320],
            "quantization": {"scale": 0.0235294122248888, "zero_point": 0},
            "role": "state",
        },
    ],
}


@pytest.mark.parametrize("doc", [MOVENET, TRAFFIC])
def test_a_signature_round_trips_unchanged(doc):
    assert Signature.from_dict(copy.deepcopy(doc)).to_dict() == doc


def test_unknown_fields_task_and_role_of_a_newer_compiler_are_kept():
    doc = copy.deepcopy(MOVENET)
    doc["task"] = "ocr"
    doc["hint"] = {"x": 1}
    doc["outputs"][0]["role"] = "glyphs"
    doc["outputs"][0]["layout"] = "yx"
    sig = Signature.from_dict(copy.deepcopy(doc))
    assert sig.task == "ocr" and not sig.classification and sig.outputs[0].role == "glyphs"
    assert sig.to_dict() == doc


def test_state_roles_are_left_out_of_what_a_request_fills_and_an_answer_carries():
    sig = Signature.from_dict(TRAFFIC)
    assert sig.stateful
    assert [t.role for t in sig.request_inputs] == ["image"]
    assert [t.role for t in sig.answer_outputs] == ["boxes", "count"]
    assert sig.output("count") is not None and sig.output("mask") is None
    assert sig.inputs[0].quantization == Quantization(0.0078125, 128)
    assert sig.inputs[0].describe() == "uint8[1, 256, 256, 3] 'normalized_input_image_tensor'"


def test_a_manifest_without_a_signature_parses_and_means_classification():
    m = Manifest("m", "1", 1, (Artifact.of("a.tflite", "tflite_int8", b"x"),), model={"task": "classification"})
    parsed = parse_manifest(canonical(m.to_dict()))
    assert of_model(parsed.model) is None and task_of(parsed.model) == "classification"


def test_a_manifest_with_a_signature_carries_it_through_the_signed_payload():
    m = Manifest("m", "1", 1, (Artifact.of("a.tflite", "tflite_int8", b"x"),), model={"signature": MOVENET})
    parsed = parse_manifest(canonical(m.to_dict()))
    sig = of_model(parsed.model)
    assert sig is not None and sig.task == "keypoints" and task_of(parsed.model) == "keypoints"
    assert sig.inputs[0] == TensorSpec("serving_default_input:0", "uint8", (1, 192, 192, 3), "image", None)


def _with(path: str, value):
    doc = copy.deepcopy(MOVENET)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    key = int(last) if isinstance(node, list) else last
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    return doc


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("schema", 0, "field 'schema' must be >= 1, got 0"),
        ("schema", KeyError, "missing field 'schema'"),
        ("task", 7, "field 'task' must be str, got 7"),
        ("task", "Key Points", "field 'task' must be a lower-case word like 'detection', got 'Key Points'"),
        ("stateful", "no", "field 'stateful' must be bool, got 'no'"),
        ("inputs", [], "needs at least one input and one output, got 0 and 1"),
        (
            "outputs.0.dtype",
            "float 32",
            "field 'outputs[0].dtype' must be a numpy dtype name like 'uint8', got 'float 32'",
        ),
        ("outputs.0.shape", [1, -1], "field 'shape' must hold ints >= 0, found -1"),
        ("outputs.0.role", "", "field 'outputs[0].role' must be a lower-case word, got ''"),
        (
            "inputs.0.quantization",
            {"scale": 0.0, "zero_point": 0},
            "'inputs[0].quantization.scale' must be a finite number > 0",
        ),
        ("inputs.0.quantization", [0.5, 3], "field 'inputs[0].quantization' must be an object or null"),
        ("inputs.0.quantization", {"scale": 0.5, "zero_point": True}, "field 'zero_point' must be int, got True"),
        ("outputs.0", "keypoints", "field 'outputs[0]' must be an object, got 'keypoints'"),
    ],
)
def test_a_bad_field_is_refused_naming_it_and_its_value(path, value, message):
    with pytest.raises(BadPayload, match="^bad model signature") as exc:
        Signature.from_dict(_with(path, value))
    assert message in str(exc.value)
