"""The device view of a bundle (protocol.view): which artifacts a device needs, the view archive
packed and read like the full one, and its place in the signed desired document."""

from __future__ import annotations

import io

import pytest

from protocol.bundle import Artifact, ChunkPlan, Manifest, pack_archive, read_archive
from protocol.delta import DeltaRef, view_manifest
from protocol.device import Inventory
from protocol.errors import BadPayload, Reason, VerificationError
from protocol.messages import BundleRef, Desired, parse_desired_payload
from protocol.signing import seal
from protocol.view import FEATURE, BundleView, check_members, needed

FILES = {
    "model_int8.tflite": ("tflite_int8", b"\x01" * 3000),
    "model_edgetpu.tflite": ("tflite_edgetpu", b"\x02" * 2000),
    "model_float.tflite": ("tflite_float", b"\x03" * 9000),
    "model.onnx": ("onnx", b"\x04" * 9100),
    "baseline.json": ("baseline", b'{"b": 1}'),
    "selftest.json": ("selftest", b'{"s": 1}'),
    "labels.txt": ("labels", b"zero\none\n"),
    "report.json": ("report", b'{"r": 1}'),
    "MODEL_CARD.md": ("model_card", b"# card\n"),
}


def manifest(*names: str) -> Manifest:
    arts = tuple(Artifact.of(n, FILES[n][0], FILES[n][1]) for n in names)
    return Manifest("digits", "1.0.0", 1, arts)


def kept(*names: str) -> list[str]:
    return [a.name for a in needed(manifest(*names))]


def test_int8_bundle_drops_float_reference_onnx_twin_and_human_documents():
    assert kept(*FILES) == ["model_int8.tflite", "model_edgetpu.tflite", "baseline.json", "selftest.json", "labels.txt"]


def test_float_only_bundle_keeps_its_float_model_and_drops_the_twin():
    assert kept("model_float.tflite", "model.onnx", "labels.txt") == ["model_float.tflite", "labels.txt"]


def test_edgetpu_only_bundle_keeps_the_onnx_twin_for_a_device_without_a_tpu():
    assert kept("model_edgetpu.tflite", "model.onnx", "selftest.json") == [
        "model_edgetpu.tflite",
        "model.onnx",
        "selftest.json",
    ]


def test_onnx_only_bundle_keeps_its_model():
    assert kept("model.onnx", "labels.txt", "report.json") == ["model.onnx", "labels.txt"]


def test_bundle_without_anything_to_drop_is_its_own_view():
    m = manifest("model_int8.tflite", "selftest.json")
    assert needed(m) == m.artifacts and view_manifest(m).artifacts == m.artifacts


def test_check_members_names_the_missing_needed_artifact():
    m = manifest(*FILES)
    with pytest.raises(VerificationError) as err:
        check_members(m, ["model_int8.tflite", "model_edgetpu.tflite", "baseline.json", "labels.txt"])
    assert err.value.reason is Reason.MISSING_ARTIFACT and "selftest.json" in err.value.detail


def test_check_members_refuses_a_name_the_manifest_does_not_list():
    m = manifest("model_int8.tflite")
    with pytest.raises(VerificationError) as err:
        check_members(m, ["model_int8.tflite", "evil.bin"])
    assert err.value.reason is Reason.MALFORMED and "evil.bin" in err.value.detail


def _signed(trust, m: Manifest):
    return seal("manifest", m.to_dict(), [trust.targets_key])


def _read(trust, archive: bytes, only):
    got: dict[str, bytes] = {}
    m, digest = read_archive(
        io.BytesIO(archive),
        trust.root,
        len(archive),
        lambda a, b: got.__setitem__(a.name, got.get(a.name, b"") + b),
        only=only,
    )
    return m, digest, got


def test_view_archive_packs_the_same_envelope_and_only_the_needed_artifacts(trust):
    m = manifest(*FILES)
    env = _signed(trust, m)
    arts = {n: FILES[n][1] for n in FILES}
    names = [a.name for a in needed(m)]
    full, view = pack_archive(env, arts), pack_archive(env, arts, only=names)
    assert len(view) == len(full) - sum(
        len(FILES[n][1]) for n in ("model_float.tflite", "model.onnx", "report.json", "MODEL_CARD.md")
    )
    assert view[: 8 + len(env.to_bytes())] == full[: 8 + len(env.to_bytes())]  # same signed head
    got_m, digest, got = _read(trust, view, names)
    assert got == {n: FILES[n][1] for n in names}
    assert digest == _read(trust, full, None)[1]  # one bundle, one digest, whichever archive


def test_view_archive_read_as_a_full_archive_is_refused_by_its_length(trust):
    m = manifest(*FILES)
    env = _signed(trust, m)
    view = pack_archive(env, {n: FILES[n][1] for n in FILES}, only=[a.name for a in needed(m)])
    with pytest.raises(VerificationError) as err:
        _read(trust, view, None)
    assert err.value.reason is Reason.LENGTH_MISMATCH


def test_view_lacking_a_needed_artifact_is_refused_before_any_artifact_byte(trust):
    m = manifest(*FILES)
    env = _signed(trust, m)
    names = [a.name for a in needed(m) if a.role != "labels"]
    view = pack_archive(env, {n: FILES[n][1] for n in FILES}, only=names + ["labels.txt"])
    with pytest.raises(VerificationError) as err:
        _read(trust, view, names)
    assert err.value.reason is Reason.MISSING_ARTIFACT and "labels.txt" in err.value.detail


def test_view_with_a_tampered_member_is_refused_by_hash(trust):
    m = manifest(*FILES)
    env = _signed(trust, m)
    names = [a.name for a in needed(m)]
    view = bytearray(pack_archive(env, {n: FILES[n][1] for n in FILES}, only=names))
    view[-3] ^= 0xFF  # inside labels.txt, the last member
    with pytest.raises(VerificationError) as err:
        _read(trust, bytes(view), names)
    assert err.value.reason is Reason.HASH_MISMATCH and "labels.txt" in err.value.detail


PLAN = ChunkPlan.of(b"x" * 5000, 1024)
VIEW_PLAN = ChunkPlan.of(b"y" * 2000, 1024)


def test_bundle_ref_with_a_view_round_trips_and_fetches_the_view():
    ref = BundleRef("a" * 64, "digits", "1", PLAN, view=BundleView(("m.tflite", "labels.txt"), VIEW_PLAN))
    back = BundleRef.from_dict(ref.to_dict())
    assert back == ref and back.members is None  # as sent: the full archive, the view beside it
    fetched = back.fetched()
    assert fetched.archive == VIEW_PLAN and fetched.members == ("m.tflite", "labels.txt")
    assert fetched.digest == ref.digest


def test_bundle_ref_without_a_view_keeps_its_bytes_and_fetches_the_full_archive():
    ref = BundleRef("a" * 64, "digits", "1", PLAN)
    assert "view" not in ref.to_dict() and ref.fetched() is ref and ref.members is None


def test_an_older_agents_parser_sees_only_the_full_archive():
    """An agent from before views reads BundleRef's known keys: the view key is ignored."""
    ref = BundleRef("a" * 64, "digits", "1", PLAN, view=BundleView(("m.tflite",), VIEW_PLAN))
    doc = ref.to_dict()
    old_keys = {"digest", "name", "version", "size", "sha256", "chunk_size", "chunks", "requirements"}
    assert BundleRef.from_dict({k: v for k, v in doc.items() if k in old_keys}).archive == PLAN


def test_view_with_bad_fields_is_refused_by_name():
    good = BundleView(("m.tflite",), VIEW_PLAN).to_dict()
    for key, value in (("artifacts", ["../x"]), ("artifacts", ["a", "a"]), ("chunks", ["0" * 64]), ("sha256", "zz")):
        with pytest.raises(BadPayload):
            BundleView.from_dict({**good, key: value})


def test_desired_document_carries_the_view_and_a_view_delta():
    ref = BundleRef("a" * 64, "digits", "1", PLAN, view=BundleView(("m.tflite",), VIEW_PLAN))
    delta = DeltaRef("b" * 64, "zstd-members-1", ChunkPlan.of(b"d" * 1500, 1024), view=True)
    doc = Desired("dev-1", 3, 1, 99, "install", ref, delta=delta)
    back = parse_desired_payload(seal("desired", doc.signed_dict(), []).payload)
    assert back.bundle == ref and back.delta is not None and back.delta.view is True
    plain = DeltaRef("b" * 64, "zstd-members-1", ChunkPlan.of(b"d" * 1500, 1024))
    assert "view" not in plain.to_dict()


def test_inventory_features_round_trip_and_unknown_ones_are_kept():
    inv = Inventory.from_dict({"board": "rpi4", "features": [FEATURE, "from-the-future"], "new": 1})
    assert inv.features == (FEATURE, "from-the-future") and inv.to_dict()["new"] == 1
    assert Inventory.from_dict(inv.to_dict()) == inv
    assert "features" not in Inventory(board="rpi4").to_dict()
    with pytest.raises(BadPayload):
        Inventory.from_dict({"features": [1]})


def test_a_view_keeps_fields_a_newer_hub_added():
    doc = {**BundleView(("m.tflite",), VIEW_PLAN).to_dict(), "compression": "zstd"}
    back = BundleView.from_dict(doc)
    assert back.extra == {"compression": "zstd"} and back.to_dict() == doc


def test_every_chunk_plan_on_the_wire_is_checked_the_same_way():
    good = BundleView(("m.tflite",), VIEW_PLAN).to_dict()
    for bad, says in (
        ({"chunk_size": 512}, "below 1024"),
        ({"chunks": []}, "chunk hashes for"),
        ({"size": 0, "chunks": []}, "chunk hashes for 0 bytes"),
    ):
        with pytest.raises(BadPayload, match=says):
            BundleView.from_dict({**good, **bad})
    # a bundle reference may describe an empty archive (no chunks); a view or a delta may not
    empty = {"digest": "a" * 64, "name": "x", "version": "1", "size": 0, "sha256": "b" * 64, "chunk_size": 1024}
    assert BundleRef.from_dict({**empty, "chunks": []}).archive.chunks == ()
