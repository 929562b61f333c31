"""Delta updates on the agent (agent/delta.py): the decision table, and patching a real base slot
into a real archive download, every chunk checked against the target's signed hashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.delta import Fallback, apply, choose, patch_into
from agent.download import Download
from hub.deltas import make
from protocol.bundle import Artifact, ChunkPlan, Manifest
from protocol.delta import ALGO, DeltaRef, reference
from protocol.errors import Reason, VerificationError

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
        apply(ALGO, bytes(delta), ref, len(target))
    assert exc.value.reason in (Reason.MALFORMED, Reason.LENGTH_MISMATCH)


def test_a_delta_applied_to_the_wrong_base_fails_its_checksum():
    base = files()
    target = target_archive(base)
    delta = make(base["model.tflite"], target)
    other = bytearray(base["model.tflite"])
    other[100:200] = bytes(100)
    with pytest.raises(VerificationError, match="does not apply"):
        apply(ALGO, delta, bytes(other), len(target))


def test_a_patch_never_writes_past_the_signed_size():
    base = files()
    target = target_archive(base)
    delta = make(base["model.tflite"], target)
    with pytest.raises(VerificationError):
        apply(ALGO, delta, base["model.tflite"], len(target) - 1)
