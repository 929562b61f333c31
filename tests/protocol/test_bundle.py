"""Bundle manifest, archive and chunking: tampering of any kind is caught, with its reason."""

from __future__ import annotations

import io
import random

import pytest

from protocol.bundle import (
    Artifact,
    ChunkPlan,
    Manifest,
    Requirements,
    check_bundle,
    digest_of,
    pack_archive,
    parse_manifest,
    read_archive,
    verify_manifest,
)
from protocol.errors import BadPayload, Reason, VerificationError
from protocol.signing import SigningKey, seal

ARTS = {"model_int8.tflite": b"\x01" * 3000, "labels.txt": b"zero\none\n"}


def manifest(**kw) -> Manifest:
    arts = (
        Artifact.of("model_int8.tflite", "tflite_int8", ARTS["model_int8.tflite"]),
        Artifact.of("labels.txt", "labels", ARTS["labels.txt"]),
    )
    base = dict(
        name="digits",
        version="1.0.0",
        created=1,
        artifacts=arts,
        requirements=Requirements(edgetpu="optional"),
        model={"task": "classification"},
    )
    base.update(kw)
    return Manifest(**base)


def signed(trust, m: Manifest | None = None, keys=None):
    return seal("manifest", (m or manifest()).to_dict(), keys if keys is not None else [trust.targets_key])


def read(trust, archive: bytes):
    got: dict[str, bytearray] = {}
    m, digest = read_archive(
        io.BytesIO(archive), trust.root, len(archive), lambda a, b: got.setdefault(a.name, bytearray()).extend(b)
    )
    return m, digest, {k: bytes(v) for k, v in got.items()}


def test_signed_archive_round_trips_every_artifact(trust):
    env = signed(trust)
    m, digest, got = read(trust, pack_archive(env, ARTS))
    assert digest == digest_of(env) and got == ARTS and m.requirements.edgetpu == "optional"


def test_digest_is_content_address_independent_of_signer(trust):
    a = signed(trust)
    b = signed(trust, keys=[SigningKey.generate()])
    assert digest_of(a) == digest_of(b)
    assert digest_of(signed(trust, manifest(version="1.0.1"))) != digest_of(a)


def test_tampered_artifact_is_rejected_before_next_artifact_is_written(trust):
    archive = bytearray(pack_archive(signed(trust), ARTS))
    archive[-len(ARTS["labels.txt"]) - 10] ^= 0xFF  # inside the model bytes
    written: list[str] = []
    with pytest.raises(VerificationError) as err:
        read_archive(io.BytesIO(bytes(archive)), trust.root, len(archive), lambda a, b: written.append(a.name))
    assert err.value.reason is Reason.HASH_MISMATCH
    assert "labels.txt" not in written


def test_archive_signed_by_unknown_key_is_rejected_before_any_artifact(trust):
    archive = pack_archive(signed(trust, keys=[SigningKey.generate()]), ARTS)
    written: list[str] = []
    with pytest.raises(VerificationError) as err:
        read_archive(io.BytesIO(archive), trust.root, len(archive), lambda a, b: written.append(a.name))
    assert err.value.reason is Reason.UNKNOWN_KEY and written == []


def test_truncated_archive_is_a_length_mismatch(trust):
    archive = pack_archive(signed(trust), ARTS)
    with pytest.raises(VerificationError) as err:
        read_archive(io.BytesIO(archive[:-5]), trust.root, len(archive) - 5, lambda a, b: None)
    assert err.value.reason is Reason.LENGTH_MISMATCH


def test_bytes_past_the_last_artifact_are_refused(trust):
    archive = pack_archive(signed(trust), ARTS) + b"extra"
    with pytest.raises(VerificationError) as err:
        read_archive(io.BytesIO(archive), trust.root, len(archive), lambda a, b: None)
    assert err.value.reason is Reason.LENGTH_MISMATCH


def test_check_bundle_reports_every_problem_without_raising(trust):
    env = signed(trust, keys=[])
    report = check_bundle(env.to_bytes(), {"model_int8.tflite": b"x", "stray.bin": b""}, trust.root)
    reasons = [r for r, _ in report.problems]
    assert Reason.THRESHOLD_NOT_MET in reasons
    assert Reason.LENGTH_MISMATCH in reasons
    assert Reason.MISSING_ARTIFACT in reasons
    assert Reason.MALFORMED in reasons  # stray.bin
    assert not report.ok


def test_unknown_manifest_fields_are_kept(trust):
    m = manifest(extra={"future_field": {"x": 1}})
    again, _ = verify_manifest(signed(trust, m).to_bytes(), trust.root)
    assert again.extra == {"future_field": {"x": 1}}


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d.update(_type="desired"), "_type must be 'manifest'"),
        (lambda d: d.update(schema=2), "schema 2 is not supported"),
        (lambda d: d.update(name="../etc"), "bundle name"),
        (lambda d: d.update(artifacts=[]), "lists no artifacts"),
        (lambda d: d["artifacts"][0].update(name="../../x"), "artifact name"),
        (lambda d: d["artifacts"][0].update(role="weird"), "unknown role 'weird'"),
        (lambda d: d["artifacts"][0].update(size=-1), "must be >= 0"),
        (lambda d: d["requirements"].update(edgetpu="maybe"), "edgetpu must be one of"),
    ],
)
def test_malformed_manifest_gives_one_clear_error(mutate, needle):
    doc = manifest().to_dict()
    mutate(doc)
    from protocol.codec import canonical

    with pytest.raises(BadPayload) as err:
        parse_manifest(canonical(doc))
    assert needle in str(err.value)


def test_chunk_plan_checks_length_and_hash_of_each_chunk():
    data = random.Random(0).randbytes(5120)
    plan = ChunkPlan.of(data, 1024)
    assert len(plan.chunks) == 5 and plan.chunk_length(4) == 1024
    plan.check_chunk(2, data[2048:3072])
    with pytest.raises(VerificationError) as err:
        plan.check_chunk(2, data[0:1024])
    assert err.value.reason is Reason.HASH_MISMATCH
    with pytest.raises(VerificationError) as err:
        plan.check_chunk(1, data[1024:2000])
    assert err.value.reason is Reason.LENGTH_MISMATCH
    with pytest.raises(VerificationError, match="outside 0..4"):
        plan.check_chunk(5, b"")
