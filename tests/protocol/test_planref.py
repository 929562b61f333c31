"""A chunk plan by reference (protocol.planref): the signed document names the plan message's
hash instead of carrying the chunk list; only the exact plan message the hub hashed fills it in."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from protocol import planref
from protocol.bundle import ChunkPlan, Requirements
from protocol.errors import BadPayload, Reason, VerificationError
from protocol.messages import BundleRef, Desired, parse_desired_payload, verify_desired
from protocol.topics import Kind, Topic

NOW = 1_700_000_000
ARCHIVE = os.urandom(4 * 1024 * 1024 + 123)  # a 4 MB bundle: 65 chunks of 64 KiB
PLAN = ChunkPlan.of(ARCHIVE)


def ref(plan: ChunkPlan = PLAN) -> BundleRef:
    return BundleRef("d" * 64, "digits", "1.0.0", plan, Requirements())


def document(bundle: BundleRef) -> Desired:
    return Desired("dev1", 5, NOW, NOW + 3600, "install", bundle, "r1")


def test_a_reference_carries_the_plans_hash_not_its_chunk_list_and_parses_back_unresolved():
    wire = ref().by_reference().to_dict()
    assert "chunks" not in wire and wire["plan"] == hashlib.sha256(planref.plan_bytes(PLAN)).hexdigest()
    back = BundleRef.from_dict(wire)
    assert back.unresolved and back.archive.chunks == ()
    assert (back.archive.size, back.archive.sha256, back.archive.chunk_size) == (PLAN.size, PLAN.sha256, 65536)
    assert not BundleRef.from_dict(ref().to_dict()).unresolved  # an inline list is resolved as it comes


def test_the_plan_message_it_names_fills_in_exactly_the_original_chunk_list():
    back = BundleRef.from_dict(ref().by_reference().to_dict())
    full = back.resolve(planref.plan_bytes(PLAN))
    assert full.archive == PLAN and not full.unresolved
    full.archive.check_chunk(3, ARCHIVE[3 * 65536 : 4 * 65536])


def test_a_plan_message_with_one_hash_changed_is_refused_by_its_hash():
    back = BundleRef.from_dict(ref().by_reference().to_dict())
    forged = ChunkPlan(PLAN.size, PLAN.sha256, PLAN.chunk_size, ("0" * 64, *PLAN.chunks[1:]))
    with pytest.raises(VerificationError) as e:
        back.resolve(planref.plan_bytes(forged))
    assert e.value.reason is Reason.HASH_MISMATCH and back.plan_ref is not None and back.plan_ref in str(e.value)


def test_a_plan_for_another_archive_is_refused_even_when_the_hash_matches():
    other = ChunkPlan.of(os.urandom(70_000))
    with pytest.raises(VerificationError) as e:
        planref.resolve(PLAN, planref.plan_ref(other), planref.plan_bytes(other))
    assert e.value.reason is Reason.MALFORMED and "describes archive" in str(e.value)


def test_the_signed_document_shrinks_from_the_chunk_list_to_its_hash(trust):
    inline = document(ref()).seal([trust.targets_key])
    by_ref = document(ref().by_reference()).seal([trust.targets_key])
    assert len(inline) - len(by_ref) > 60 * 64  # 65 hex hashes became one
    assert len(by_ref) < 1500, len(by_ref)
    got = verify_desired(by_ref, trust.root, "dev1", 0, NOW)
    assert got.bundle is not None and got.bundle.unresolved and got.bundle.plan_ref == planref.plan_ref(PLAN)


def test_a_reference_without_chunks_or_plan_is_still_refused():
    wire = ref().to_dict()
    del wire["chunks"]
    with pytest.raises(BadPayload):
        BundleRef.from_dict(wire)
    with pytest.raises(BadPayload):
        BundleRef.from_dict({**wire, "plan": "not-a-digest"})


def test_the_plan_topic_round_trips():
    t = Topic.plan(PLAN.sha256)
    assert str(t) == f"ef/v1/bundle/{PLAN.sha256}/plan"
    assert Topic.parse(str(t)) == t and t.kind is Kind.PLAN


def test_a_parsed_document_writes_its_reference_back_by_hash():
    doc = document(ref().by_reference())
    again = parse_desired_payload(json.dumps(doc.signed_dict()).encode())
    assert again.signed_dict() == doc.signed_dict()
    assert again.bundle is not None and again.bundle.plan_ref == planref.plan_ref(PLAN)


def test_the_plan_message_never_exceeds_the_bound_an_agent_checks_its_packet_size_against():
    for size, cs in ((0, 1024), (1, 1024), (PLAN.size, 65536), (10**9, 65536), (123_456_789, 1024)):
        n = -(-size // cs)
        plan = ChunkPlan(size, "a" * 64, cs, ("f" * 64,) * n)
        assert len(planref.plan_bytes(plan)) <= planref.max_plan_bytes(size, cs)
