"""Delta updates on the agent (agent/delta.py): the decision table, and patching a real base slot
into a real archive download, every chunk checked against the target's signed hashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.delta import Fallback, apply, choose, patch_into
from agent.download import Download
from hub.deltas import make, make_members
from protocol.bundle import MANIFEST_FILE, Artifact, ChunkPlan, Manifest, pack_archive
from protocol.delta import (
    ALGO,
    ALGO_MEMBERS,
    ENVELOPE,
    PATCH,
    XOR,
    DeltaRef,
    base_parts,
    reference,
    unpack_members,
    unsigned,
)
from protocol.errors import Reason, VerificationError
from protocol.signing import Envelope, SigningKey, seal

BASE = "b" * 64
OTHER = "c" * 64


def ref_of(delta: bytes, base: str = BASE, algo: str = ALGO) -> DeltaRef:
    return DeltaRef(base, algo, ChunkPlan.of(delta, 1024))


def slot(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Manifest]:
    d = tmp_path / "slot"
    d.mkdir()
    arts = []
    for name, data in files.items():
        (d / name).write_bytes(data)
        arts.append(Artifact.of(name, "report", data))
    return d, Manifest("m", "1", 0, tuple(arts))


@pytest.mark.parametrize(
    ("active", "algo", "on_disk", "want"),
    [
        (BASE, ALGO, 0, None),
        (OTHER, ALGO, 0, Fallback.BASE_NOT_ACTIVE),
        (None, ALGO, 0, Fallback.BASE_NOT_ACTIVE),
        (BASE, "bsdiff-9", 0, Fallback.UNKNOWN_ALGO),
        (BASE, ALGO, 4096, Fallback.RESUMED),
    ],
)
def test_delta_is_used_only_from_its_own_base_with_a_known_algorithm_and_nothing_on_disk(active, algo, on_disk, want):
    assert choose(ref_of(b"x" * 10, algo=algo), active, on_disk) == want


def test_no_delta_named_means_no_fallback_to_report():
    assert choose(None, BASE, 0) is None


def files() -> dict[str, bytes]:
    rng = __import__("random").Random(0)
    return {"model.tflite": bytes(rng.getrandbits(8) for _ in range(40_000)), "labels.txt": b"0\n1\n"}


def target_archive(base: dict[str, bytes]) -> bytes:
    head = b"EFB1\x00\x00\x00\x05hello"
    model = bytearray(base["model.tflite"])
    model[30_000:30_640] = os.urandom(640)  # a retrained head: a few hundred bytes change
    return head + bytes(model) + base["labels.txt"] + b"new report"


def test_patching_the_base_slot_reproduces_the_target_archive_chunk_for_chunk(tmp_path: Path):
    base = files()
    d, manifest = slot(tmp_path, base)
    target = target_archive(base)
    delta = make(reference(manifest, lambda a: base[a.name]), target)
    assert len(delta) < len(target) // 10
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 1024))
    done = patch_into(ref_of(delta), delta, d, manifest, dl)
    assert (done.written, done.rejected) == (dl.total, 0) and dl.complete
    dl.verify()
    assert dl.path.read_bytes() == target


def test_a_delta_that_patches_into_the_wrong_bytes_writes_only_the_chunks_that_match_the_signed_hashes(
    tmp_path: Path,
):
    base = files()
    d, manifest = slot(tmp_path, base)
    target = target_archive(base)
    wrong = bytearray(target)
    wrong[5000] ^= 0xFF  # the hub's delta is of other bytes: chunk 4 only
    delta = make(reference(manifest, lambda a: base[a.name]), bytes(wrong))
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 1024))
    done = patch_into(ref_of(delta), delta, d, manifest, dl)
    assert done.rejected == 1 and dl.missing() == [4]  # fetched in full; the rest is kept


def test_a_damaged_base_slot_is_refused_before_patching(tmp_path: Path):
    base = files()
    d, manifest = slot(tmp_path, base)
    target = target_archive(base)
    delta = make(reference(manifest, lambda a: base[a.name]), target)
    (d / "model.tflite").write_bytes(b"\0" + base["model.tflite"][1:])
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 1024))
    with pytest.raises(VerificationError, match="base artifact model.tflite"):
        patch_into(ref_of(delta), delta, d, manifest, dl)
    assert dl.missing() == list(range(dl.total))


def test_a_corrupted_delta_does_not_apply():
    base = files()
    ref = base["model.tflite"]
    target = target_archive(base)
    delta = bytearray(make(ref, target))
    delta[len(delta) // 2] ^= 0x55
    with pytest.raises(VerificationError) as exc:
        apply(ALGO, bytes(delta), [b"", ref], len(target))
    assert exc.value.reason in (Reason.MALFORMED, Reason.LENGTH_MISMATCH)


def test_a_delta_applied_to_the_wrong_base_fails_its_checksum():
    base = files()
    target = target_archive(base)
    delta = make(base["model.tflite"], target)
    other = bytearray(base["model.tflite"])
    other[100:200] = bytes(100)
    with pytest.raises(VerificationError, match="does not apply"):
        apply(ALGO, delta, [b"", bytes(other)], len(target))


def test_a_patch_never_writes_past_the_signed_size():
    base = files()
    target = target_archive(base)
    delta = make(base["model.tflite"], target)
    with pytest.raises(VerificationError):
        apply(ALGO, delta, [b"", base["model.tflite"]], len(target) - 1)


def signed_slot(tmp_path: Path, files: dict[str, bytes], version: str) -> tuple[Path, Manifest, bytes]:
    """A slot as the agent keeps it (artifacts and the signed manifest envelope), and its archive."""
    d = tmp_path / f"slot-{version}"
    d.mkdir()
    manifest = Manifest("m", version, 0, tuple(Artifact.of(n, "report", b) for n, b in files.items()))
    env = seal("manifest", manifest.to_dict(), [SigningKey.generate()])
    (d / MANIFEST_FILE).write_bytes(env.to_bytes())
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d, manifest, pack_archive(env, files)


def retrained(base: dict[str, bytes]) -> dict[str, bytes]:
    """Every byte of the int8 model nudged by one (a fine-tune), the float copy repeated in the
    twin, a report that grew: what zstd alone cannot express compactly but an XOR can."""
    model = bytes((b + (i % 3 == 0)) % 256 for i, b in enumerate(base["model.tflite"]))
    twin = b"onnx" + model[:20_000]
    return {"model.tflite": model, "twin.onnx": twin, "labels.txt": base["labels.txt"] + b"2\n"}


def test_a_members_delta_rebuilds_the_target_archive_from_its_envelope_xors_patches_and_earlier_members(tmp_path: Path):
    old = files()
    old["twin.onnx"] = b"onnx" + old["model.tflite"][:20_000]
    d, manifest, _ = signed_slot(tmp_path, old, "1")
    _, _, target = signed_slot(tmp_path, retrained(old), "2")
    parts = base_parts(manifest, unsigned((d / MANIFEST_FILE).read_bytes()), lambda a: old[a.name])
    names = {a.name: i + 1 for i, a in enumerate(manifest.artifacts)}
    delta = make_members(parts, names, target)
    assert [r.kind for r in unpack_members(delta, len(parts))] == [ENVELOPE, XOR, PATCH, PATCH]
    assert len(delta) < len(make(b"".join(parts[1:]), target)) // 2
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 1024))
    done = patch_into(ref_of(delta, algo=ALGO_MEMBERS), delta, d, manifest, dl)
    assert (done.written, done.rejected) == (dl.total, 0)
    assert dl.path.read_bytes() == target


def test_a_members_delta_from_a_slot_whose_manifest_was_resigned_still_applies(tmp_path: Path):
    old = files()
    d, manifest, _ = signed_slot(tmp_path, old, "1")
    _, _, target = signed_slot(tmp_path, retrained(old), "2")
    parts = base_parts(manifest, unsigned((d / MANIFEST_FILE).read_bytes()), lambda a: old[a.name])
    delta = make_members(parts, {a.name: i + 1 for i, a in enumerate(manifest.artifacts)}, target)
    resigned = Envelope.parse((d / MANIFEST_FILE).read_bytes()).add_signature(SigningKey.generate())
    (d / MANIFEST_FILE).write_bytes(resigned.to_bytes())  # other bytes, same payload, same digest
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 1024))
    assert patch_into(ref_of(delta, algo=ALGO_MEMBERS), delta, d, manifest, dl).rejected == 0 and dl.complete


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[:4] + b"\x07" + b[5:], "kind 7"),  # an unknown record kind
        (lambda b: b[:5] + b"\x00\x63" + b[7:], "base 99"),  # a base part the bundle does not have
        (lambda b: b[:-1], "runs past the end"),
        (lambda b: b"EFM2" + b[4:], "does not start"),
    ],
)
def test_a_malformed_members_delta_is_refused_naming_what_is_wrong(tmp_path: Path, damage, match):
    old = files()
    d, manifest, _ = signed_slot(tmp_path, old, "1")
    _, _, target = signed_slot(tmp_path, retrained(old), "2")
    parts = base_parts(manifest, b"", lambda a: old[a.name])
    delta = make_members(parts, {a.name: i + 1 for i, a in enumerate(manifest.artifacts)}, target)
    with pytest.raises(VerificationError, match=match):
        apply(ALGO_MEMBERS, damage(delta), parts, len(target))


def test_a_members_delta_patched_onto_other_base_bytes_never_writes_a_wrong_chunk(tmp_path: Path):
    old = files()
    d, manifest, _ = signed_slot(tmp_path, old, "1")
    _, _, target = signed_slot(tmp_path, retrained(old), "2")
    wrong = dict(old)
    m = old["model.tflite"]
    wrong["model.tflite"] = m[:1000] + bytes(100) + m[1100:]  # the hub diffed against other bytes than the slot holds
    wm = Manifest("m", "1", 0, tuple(Artifact.of(n, "report", b) for n, b in wrong.items()))
    parts = base_parts(wm, b"", lambda a: wrong[a.name])
    delta = make_members(parts, {n: i + 1 for i, n in enumerate(wrong)}, target)
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 1024))
    assert [r.kind for r in unpack_members(delta, len(parts))][1] == XOR
    try:  # a later record's frame checksum may catch the wrong bytes first: all chunks in full
        done = patch_into(ref_of(delta, algo=ALGO_MEMBERS), delta, d, manifest, dl)
    except VerificationError as exc:
        assert "does not apply" in str(exc) and dl.missing() == list(range(dl.total))
    else:
        assert done.rejected >= 1 and 1 in dl.missing()  # where the XORed model is wrong: fetched in full
