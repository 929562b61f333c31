"""The delta's wire format (protocol/delta.py): named in the signed desired document, its chunk
topics, and the reference it is made against."""

from __future__ import annotations

import json

import pytest

from protocol.bundle import Artifact, ChunkPlan, Manifest, Requirements, pack_archive
from protocol.delta import (
    ALGO,
    ALGO_MEMBERS,
    NO_BASE,
    PATCH,
    XOR,
    DeltaRef,
    Record,
    algo_of,
    envelope_content,
    envelope_head,
    pack_members,
    reference,
    split_archive,
    unpack_members,
    unsigned,
)
from protocol.errors import BadPayload, VerificationError
from protocol.messages import BundleRef, Desired, parse_desired_payload, verify_desired
from protocol.signing import Envelope, SigningKey, seal
from protocol.topics import Kind, Topic, delta_filter

NOW = 1_800_000_000
BASE = "b" * 64
ARCHIVE = "a" * 64


def desired(delta: DeltaRef | None) -> Desired:
    ref = BundleRef("d" * 64, "digits", "1.1.0", ChunkPlan.of(b"x" * 5000, 1024), Requirements())
    return Desired("dev1", 7, NOW, NOW + 60, "install", ref, rollout="r1", delta=delta)


def test_a_delta_travels_signed_inside_the_desired_document_and_keeps_unknown_fields(trust):
    delta = DeltaRef(BASE, ALGO, ChunkPlan.of(b"patch" * 400, 1024), extra={"from_newer_hub": 1})
    got = verify_desired(desired(delta).seal([trust.targets_key]), trust.root, "dev1", 6, NOW)
    assert got.delta == delta and got.delta is not None and got.delta.extra == {"from_newer_hub": 1}


def test_a_document_without_a_delta_has_no_delta_key_so_old_documents_keep_their_bytes(trust):
    env = Envelope.parse(desired(None).seal([trust.targets_key]))
    assert "delta" not in json.loads(env.payload)
    assert parse_desired_payload(env.payload).delta is None


def test_a_delta_without_a_bundle_or_with_a_wrong_chunk_table_is_malformed(trust):
    delta = DeltaRef(BASE, ALGO, ChunkPlan.of(b"patch" * 400, 1024))
    doc = desired(delta).signed_dict()
    with pytest.raises(BadPayload, match="needs a bundle"):
        parse_desired_payload(json.dumps({**doc, "action": "idle", "bundle": None}).encode())
    bad = {**doc, "delta": {**doc["delta"], "chunks": doc["delta"]["chunks"][:1]}}
    with pytest.raises(BadPayload, match="chunk hashes"):
        parse_desired_payload(json.dumps(bad).encode())


def test_delta_chunk_topics_round_trip_and_are_not_archive_chunks():
    t = Topic.delta(ARCHIVE, BASE, 3)
    assert str(t) == f"ef/v1/bundle/{ARCHIVE}/delta/{BASE}/chunk/3"
    assert Topic.parse(str(t)) == t and t.kind is Kind.DELTA
    assert delta_filter(ARCHIVE, BASE) == f"ef/v1/bundle/{ARCHIVE}/delta/{BASE}/chunk/+"
    with pytest.raises(BadPayload):
        Topic.parse(f"ef/v1/bundle/{ARCHIVE}/delta/{BASE}/chunk/x")


def test_the_reference_is_the_artifacts_in_manifest_order_each_checked_against_its_signed_hash():
    files = {"b.bin": b"second", "a.bin": b"first"}
    m = Manifest("m", "1", 0, (Artifact.of("b.bin", "report", b"second"), Artifact.of("a.bin", "labels", b"first")))
    assert reference(m, lambda a: files[a.name]) == b"secondfirst"
    with pytest.raises(VerificationError, match="base artifact a.bin"):
        reference(m, lambda a: replace_bytes(files, "a.bin")[a.name])


def replace_bytes(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    return {**files, name: b"FIRST"}


def test_an_archive_splits_into_its_head_and_artifacts_and_the_unsigned_head_survives_a_resigning():
    files = {"model.tflite": b"\x01" * 3000, "labels.txt": b"a\nb\n"}
    manifest = Manifest("m", "1", 0, tuple(Artifact.of(n, "report", b) for n, b in files.items()))
    env = seal("manifest", manifest.to_dict(), [SigningKey.generate()])
    archive = pack_archive(env, files)
    members = split_archive(archive)
    assert [n for n, _ in members] == ["", "model.tflite", "labels.txt"]
    assert b"".join(b for _, b in members) == archive
    resigned = env.add_signature(SigningKey.generate())
    assert resigned.to_bytes() != env.to_bytes() and unsigned(resigned.to_bytes()) == unsigned(env.to_bytes())
    assert unsigned(b"not an envelope") == b""
    with pytest.raises(VerificationError, match="members account for"):
        split_archive(archive + b"x")


def test_a_members_delta_is_named_by_its_first_bytes():
    delta = pack_members([Record(PATCH, 0, b"frame"), Record(XOR, 1, b"")])
    assert algo_of(delta) == ALGO_MEMBERS and algo_of(b"\x28\xb5\x2f\xfd") == ALGO
    assert unpack_members(delta, 2) == [Record(PATCH, 0, b"frame"), Record(XOR, 1, b"")]
    with pytest.raises(VerificationError, match="kind 1 base 65535"):
        unpack_members(pack_members([Record(XOR, NO_BASE, b"")]), 2)  # an XOR needs a base part


def test_an_envelope_record_gives_back_the_exact_archive_head_or_is_not_used():
    files = {"labels.txt": b"a\nb\n"}
    manifest = Manifest("m", "1", 0, tuple(Artifact.of(n, "report", b) for n, b in files.items()))
    env = seal("manifest", manifest.to_dict(), [SigningKey.generate(), SigningKey.generate()])
    head = split_archive(pack_archive(env, files))[0][1]
    content = envelope_content(head)
    assert content is not None and content.endswith(env.payload) and envelope_head(content) == head
    assert envelope_content(head[:8] + head[8:].replace(b'":"', b'": "', 1)) is None  # not canonical: not rebuilt
    with pytest.raises(VerificationError, match="envelope record"):
        envelope_head(b'{"signatures":[]}\npayload')  # no payload type


def test_byte_wise_difference_round_trips_and_steps_of_one_are_one_byte_value_each():
    import os

    from protocol.delta import add_bytes, sub_bytes

    for n in (0, 1, 9, 4096):
        new, old = os.urandom(n), os.urandom(n)
        assert sub_bytes(new, old) == bytes((x - y) & 0xFF for x, y in zip(new, old, strict=True))
        assert add_bytes(old, sub_bytes(new, old)) == new
    old = bytes(range(256))
    assert set(sub_bytes(bytes((b + 1) & 0xFF for b in old), old)) == {1}  # XOR would give 8 patterns
    assert set(sub_bytes(bytes((b - 1) & 0xFF for b in old), old)) == {0xFF}
    with pytest.raises(VerificationError):
        add_bytes(b"ab", b"a")


def test_a_sub_record_makes_a_members_2_delta_and_a_members_1_delta_refuses_one():
    from protocol.delta import ALGO_MEMBERS2, SUB

    two = pack_members([Record(SUB, 1, b"frame"), Record(PATCH, NO_BASE, b"x")])
    assert algo_of(two) == ALGO_MEMBERS2 and unpack_members(two, 2)[0].kind == SUB
    assert algo_of(pack_members([Record(XOR, 1, b"f")])) == ALGO_MEMBERS  # no SUB: the old magic
    with pytest.raises(VerificationError, match="kind 3"):
        unpack_members(b"EFM1" + two[4:], 2)
    with pytest.raises(VerificationError, match="kind 3"):
        unpack_members(pack_members([Record(SUB, NO_BASE, b"f")]), 2)  # a SUB needs a base part
