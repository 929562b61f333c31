"""A device-view archive (protocol.view) on the agent: staged into a slot that holds only the
artifacts the device uses, which self-tests, serves, re-verifies after a restart and patches as a
delta base; a view lacking an artifact the device needs is refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.delta import Fallback, choose, patch_into
from agent.download import Download
from agent.install import Choice, Current, Inventory, choose_artifact, disk_needed, plan
from agent.slots import SlotRecord, Slots
from agent.updater import selftest_slot
from hub.deltas import make_members
from protocol.bundle import ChunkPlan, Manifest, digest_of, pack_archive, parse_manifest
from protocol.delta import ALGO_MEMBERS, DeltaRef, base_parts, split_archive, unsigned, view_manifest
from protocol.errors import Reason, VerificationError
from protocol.messages import BundleRef, Desired
from protocol.view import BundleView, needed

from .bundles import coral_bundle

OMITTED = {
    "model_float.tflite": ("tflite_float", os.urandom(20_000)),
    "model.onnx": ("onnx", os.urandom(21_000)),
    "report.json": ("report", b'{"top1": 0.7}'),
    "MODEL_CARD.md": ("model_card", b"# mnv1\n"),
}


def _bundle(tmp_path: Path, coral_models: Path, trust, version: str = "1"):
    env, arts, archive = trust.sign_dir(
        coral_bundle(tmp_path / f"b{version}", coral_models, extras=OMITTED, version=version)
    )
    m = parse_manifest(env.payload)
    names = [a.name for a in needed(m)]
    return env, arts, archive, m, names


def _stage(tmp_path: Path, trust, data: bytes, only, state: str = "state") -> tuple[Slots, Manifest, str]:
    path = tmp_path / f"{len(data)}.efb"
    path.write_bytes(data)
    slots = Slots(tmp_path / state)
    m, digest, _ = slots.stage(path, len(data), trust.root, only)
    return slots, m, digest


def test_view_installs_only_what_the_device_uses_and_self_tests(tmp_path: Path, coral_models, trust):
    env, arts, archive, m, names = _bundle(tmp_path, coral_models, trust)
    view = pack_archive(env, arts, only=names)
    assert sorted(names) == ["baseline.json", "labels.txt", "model_int8.tflite", "selftest.json"]
    assert len(view) < len(archive) - 41_000
    slots, manifest, digest = _stage(tmp_path, trust, view, names)
    assert digest == digest_of(env)  # the same bundle as the full archive
    assert sorted(p.name for p in slots.path(digest).iterdir()) == sorted([*names, "manifest.json"])
    choice = choose_artifact(manifest, Inventory(board="rpi4"))
    assert isinstance(choice, Choice) and choice.artifact.name == "model_int8.tflite"
    rec = SlotRecord(digest, manifest.name, manifest.version, "model_int8.tflite", "cpu")
    model, result = selftest_slot(slots, rec, manifest, 1)
    assert result.ok, result
    assert model is not None
    model.close()
    again = Slots(tmp_path / "state")  # what a restart does before it serves the slot
    assert again.check(digest, trust.root).name == manifest.name


def test_view_lacking_an_artifact_the_device_needs_is_refused_by_name(tmp_path: Path, coral_models, trust):
    env, arts, archive, m, names = _bundle(tmp_path, coral_models, trust)
    short = [n for n in names if n != "selftest.json"]
    parts = split_archive(archive)
    data = b"".join(b for n, b in parts if not n or n in short)
    with pytest.raises(VerificationError) as err:
        _stage(tmp_path, trust, data, short)
    assert err.value.reason is Reason.MISSING_ARTIFACT and "selftest.json" in err.value.detail
    left = list((tmp_path / "state" / "slots").iterdir())
    assert all(p.name.endswith(".tmp") and not any(p.iterdir()) for p in left), left  # no slot, no byte


def test_view_slot_check_names_a_needed_file_gone_and_a_present_one_damaged(tmp_path: Path, coral_models, trust):
    env, arts, archive, m, names = _bundle(tmp_path, coral_models, trust)
    slots, _, digest = _stage(tmp_path, trust, pack_archive(env, arts, only=names), names)
    (slots.path(digest) / "model.onnx").write_bytes(b"not the twin")  # present: checked like any
    with pytest.raises(VerificationError) as err:
        slots.check(digest, trust.root)
    assert err.value.reason is Reason.LENGTH_MISMATCH and "model.onnx" in err.value.detail
    (slots.path(digest) / "model.onnx").unlink()
    slots.check(digest, trust.root)  # absent: the view leaves it out
    (slots.path(digest) / "labels.txt").unlink()
    with pytest.raises(VerificationError) as err:
        slots.check(digest, trust.root)
    assert err.value.reason is Reason.MISSING_ARTIFACT and "labels.txt" in err.value.detail


def test_plan_fetches_the_view_and_counts_disk_for_it():
    full, small = ChunkPlan.of(b"f" * 90_000, 1024), ChunkPlan.of(b"v" * 30_000, 1024)
    ref = BundleRef("a" * 64, "m", "1", full, view=BundleView(("m.tflite",), small))
    d = Desired("dev-1", 1, 0, 100, "install", ref)
    got = plan(Current(), d, Inventory("rpi4", free_disk=10**9), 1)
    assert got.bundle is not None and got.bundle.archive == small and got.bundle.members == ("m.tflite",)  # type: ignore[union-attr]
    assert got.need_bytes == disk_needed(got.bundle, 0, 0) == 60_000  # type: ignore[union-attr]
    old = plan(
        Current(),
        Desired("dev-1", 1, 0, 100, "install", BundleRef("a" * 64, "m", "1", full)),
        Inventory("rpi4", free_disk=10**9),
        1,
    )
    assert old.bundle is not None and old.bundle.archive == full  # type: ignore[union-attr]


def test_a_view_delta_is_used_only_for_a_view_download_and_the_reverse():
    ref = DeltaRef("b" * 64, ALGO_MEMBERS, ChunkPlan.of(b"d" * 2000, 1024), view=True)
    assert choose(ref, "b" * 64, 0, view=True) is None
    assert choose(ref, "b" * 64, 0, view=False) is Fallback.VIEW_MISMATCH
    plain = DeltaRef("b" * 64, ALGO_MEMBERS, ChunkPlan.of(b"d" * 2000, 1024))
    assert choose(plain, "b" * 64, 0, view=True) is Fallback.VIEW_MISMATCH


@pytest.mark.parametrize("base_installed", ["view", "full"])
def test_view_delta_patches_a_view_or_full_base_slot_into_the_target_view(
    tmp_path: Path, coral_models, trust, base_installed: str
):
    env1, arts1, archive1, m1, names1 = _bundle(tmp_path, coral_models, trust, "1")
    env2, arts2, archive2, m2, names2 = _bundle(tmp_path, coral_models, trust, "2")
    slots, _, digest1 = _stage(
        tmp_path,
        trust,
        pack_archive(env1, arts1, only=names1) if base_installed == "view" else archive1,
        names1 if base_installed == "view" else None,
    )
    target = pack_archive(env2, arts2, only=names2)
    base = view_manifest(slots.manifest(digest1, trust.root))
    parts = base_parts(base, unsigned(env1.to_bytes()), lambda a: arts1[a.name])
    delta = make_members(parts, {a.name: i + 1 for i, a in enumerate(base.artifacts)}, target)
    assert len(delta) < len(target) // 4  # only the manifest (version, hashes, signature) differs much
    ref = DeltaRef(digest1, ALGO_MEMBERS, ChunkPlan.of(delta, 1024), view=True)
    dl = Download(tmp_path / "dl", ChunkPlan.of(target, 16 * 1024))
    done = patch_into(ref, delta, slots.path(digest1), base, dl)
    assert done.rejected == 0 and dl.complete
    dl.verify()
    assert _stage(tmp_path, trust, dl.path.read_bytes(), names2, "state2")[2] == digest_of(env2)
