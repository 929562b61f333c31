"""A slot's manifest signed again after the hub's online key changed (Slots.refresh_manifest):
taken only if it verifies under the current root and carries the very payload of the slot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.slots import Slots
from protocol.bundle import MANIFEST_FILE
from protocol.errors import Reason, VerificationError
from protocol.signing import Envelope, SigningKey, load_root_unverified, root_document, seal

from .bundles import coral_bundle


def _staged(tmp_path: Path, coral_models: Path, trust, version: str = "1") -> tuple[Slots, str, Envelope]:
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / f"b{version}", coral_models, version=version))
    path = tmp_path / f"a{version}.efb"
    path.write_bytes(archive)
    slots = Slots(tmp_path / "state")
    _, digest, _ = slots.stage(path, len(archive), trust.root)
    return slots, digest, env


def _rotated(trust, new_targets: SigningKey):
    doc = root_document(2, int(time.time()) + 86400, trust.root_keys, 2, [new_targets])
    return load_root_unverified(seal("root", doc, trust.root_keys[:2]).to_bytes())


def test_manifest_signed_again_by_the_new_targets_key_keeps_the_slot_verifying(tmp_path, coral_models, trust):
    slots, digest, env = _staged(tmp_path, coral_models, trust)
    new_key = SigningKey.generate()
    rotated = _rotated(trust, new_key)
    with pytest.raises(VerificationError):
        slots.check(digest, rotated)  # what a restart after the rotation would meet
    resigned = Envelope(env.payload_type, env.payload, ()).add_signature(new_key).to_bytes()
    assert slots.refresh_manifest(digest, resigned, rotated)
    slots.check(digest, rotated)
    assert not slots.refresh_manifest(digest, resigned, rotated)  # the same bytes again: nothing to do


def test_manifest_of_another_bundle_or_by_an_untrusted_key_is_refused_for_the_slot(tmp_path, coral_models, trust):
    slots, digest, env = _staged(tmp_path, coral_models, trust)
    _, _, other = _staged(tmp_path, coral_models, trust, version="2")
    kept = (slots.path(digest) / MANIFEST_FILE).read_bytes()
    with pytest.raises(VerificationError) as e:
        slots.refresh_manifest(digest, other.to_bytes(), trust.root)
    assert e.value.reason is Reason.HASH_MISMATCH
    stranger = Envelope(env.payload_type, env.payload, ()).add_signature(SigningKey.generate()).to_bytes()
    with pytest.raises(VerificationError) as e:
        slots.refresh_manifest(digest, stranger, trust.root)
    assert e.value.reason is Reason.UNKNOWN_KEY
    assert (slots.path(digest) / MANIFEST_FILE).read_bytes() == kept
    assert not slots.refresh_manifest("0" * 64, env.to_bytes(), trust.root)  # no such slot


def test_an_archive_refused_part_way_through_staging_leaves_nothing_in_the_slots(tmp_path, coral_models, trust):
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models))
    bad = archive[:-1] + bytes([archive[-1] ^ 0xFF])  # the last artifact's last byte: its hash fails
    path = tmp_path / "bad.efb"
    path.write_bytes(bad)
    slots = Slots(tmp_path / "state")
    with pytest.raises(VerificationError) as e:
        slots.stage(path, len(bad), trust.root)
    assert e.value.reason is Reason.HASH_MISMATCH
    assert not list(slots.dir.glob("*.tmp"))  # the half-written stage is gone, not left until a restart
