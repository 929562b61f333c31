"""A bundle whose ONNX twin the compiler withheld: the cloud cannot serve it and says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud.bundles import no_twin_why
from cloud.errors import NoTwin
from cloud.hub import parse_item
from protocol.bundle import Artifact, Manifest, pack_archive, sha256_hex
from protocol.signing import seal

from .conftest import Setup, client_for, drop, make_archive, portal_of, service_of, tiny_model
from .test_bundles import NOW, refusal
from .test_hub import TOKEN, FakeHub

INAT = "mobilenet_v2_1.0_224_inat_bird_quant"
INAT_WHY = (
    "the compiler withheld it: top-1 agreement 9.38% < 99.00%; "
    "largest difference 207 quantization steps > 32 on 32 synthetic inputs"
)
WITHHELD = {"status": "withheld", "reason": "lowest cosine similarity 0.9747 < 0.9900 on 32 synthetic inputs"}


def _edge_only(trust: Any, model: dict[str, Any]) -> bytes:
    data = b"tflite bytes"
    m = Manifest("edgeonly", "2", NOW, (Artifact.of("m.tflite", "tflite_int8", data),), model=model)
    return pack_archive(seal("manifest", m.to_dict(), [trust.targets_key]), {"m.tflite": data})


@pytest.mark.parametrize(
    "model,why",
    [
        (
            {"twin": WITHHELD},
            "the compiler withheld it: lowest cosine similarity 0.9747 < 0.9900 on 32 synthetic inputs",
        ),
        ({"twin": {"status": "none", "reason": "--no-onnx"}}, "none was made: --no-onnx"),
        ({}, "no 'onnx' artifact (the bundle records no twin status)"),
        ({"twin": {"status": "sometimes"}}, "no 'onnx' artifact, and its twin status is unreadable (field 'status'"),
    ],
)
def test_a_bundle_without_a_twin_is_refused_with_what_its_manifest_says(
    trust: Any, model: dict[str, Any], why: str
) -> None:
    exc = refusal(_edge_only(trust, model), trust)
    assert isinstance(exc, NoTwin) and exc.reason == "missing_artifact"
    assert (exc.name, exc.version) == ("edgeonly", "2") and exc.why.startswith(why)
    assert exc.detail == f"bundle edgeonly 2 has no ONNX twin: {exc.why}"


def test_asking_for_a_model_whose_twin_was_withheld_is_a_404_that_says_why(
    setup: Setup, trust: Any, inat_bundle: Path
) -> None:
    """The real iNat bird import (no data given): its twin was withheld at compile time."""
    _, _, archive = trust.sign_dir(inat_bundle)
    path = drop(setup.bundles, archive)
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model().onnx))
    with client_for(setup, trust) as client:
        r = client.post(f"/v1/models/{INAT}/predict", json={"inputs": [[0.0]]})
        assert r.status_code == 404
        assert r.json()["detail"] == (
            f"model {INAT!r} is not served: bundle {INAT} 1.0.0 ({path.name}) has no ONNX twin: {INAT_WHY}"
        )
        r = client.post(f"/v1/models/{INAT}/versions/1.0.0/predict/image", content=b"x")
        assert r.status_code == 404 and r.json()["detail"].startswith(f"model {INAT!r} version '1.0.0' is not served")
        listing = client.get("/v1/models").json()
        assert [m["name"] for m in listing["models"]] == ["tiny"]
        (refused,) = listing["refused"]
        assert refused["reason"] == "missing_artifact" and refused["detail"].endswith(INAT_WHY)
        # a model nobody ever offered still gets the plain answer
        assert (
            client.post("/v1/models/nope/predict", json={"inputs": [[0.0]]})
            .json()["detail"]
            .startswith("no model named 'nope'")
        )
        path.unlink()
        portal_of(client).call(service_of(client).folder.sync)
        gone = client.post(f"/v1/models/{INAT}/predict", json={"inputs": [[0.0]]}).json()["detail"]
        assert gone == f"no model named {INAT!r}; serving ['tiny']"


def test_a_hub_bundle_without_a_twin_is_not_pulled_and_a_request_says_why(setup: Setup, trust: Any) -> None:
    hub = FakeHub()
    try:
        hub.items.append(
            {
                "digest": sha256_hex(b"edge-only"),
                "name": "birds",
                "version": "3",
                "archive_sha256": sha256_hex(b"edge-only archive"),
                "size": 1000,
                "created": 5,
                "artifacts": [{"name": "model_int8.tflite", "role": "tflite_int8"}],
                "model": {"task": "classification", "twin": WITHHELD},
            }
        )
        with client_for(setup, trust, hub=hub.url, token=TOKEN, hub_poll_s=3600) as client:
            detail = client.post("/v1/models/birds/predict", json={"inputs": [[0.0]]}).json()["detail"]
            assert detail == (
                f"model 'birds' is not served: bundle birds 3 (hub bundle {sha256_hex(b'edge-only')[:12]}) has no "
                "ONNX twin: the compiler withheld it: lowest cosine similarity 0.9747 < 0.9900 on 32 synthetic inputs"
            )
            assert not any("/archive" in p for p in hub.requests)  # never downloaded
    finally:
        hub.close()


def test_a_listed_bundle_says_why_it_has_no_twin() -> None:
    item = {
        "digest": "a" * 64,
        "name": "m",
        "version": "1",
        "archive_sha256": "b" * 64,
        "size": 10,
        "artifacts": [{"role": "tflite_int8"}],
        "model": {"twin": {"status": "none", "reason": "--no-onnx"}},
    }
    listed = parse_item(item)
    assert not listed.has_onnx and listed.no_twin == "none was made: --no-onnx"
    assert parse_item(dict(item, artifacts=[{"role": "onnx"}])).no_twin is None
    assert no_twin_why({"twin": "withheld"}).startswith("no 'onnx' artifact, and its twin status is unreadable")
