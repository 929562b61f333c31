"""compiler.bundle: the one writer of bundle directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.bundle import BundleFile, BundleSpec, read_bundle, write_bundle
from compiler.errors import BadInput
from protocol.bundle import MANIFEST_FILE, Requirements, check_bundle, verify_manifest
from protocol.errors import VerificationError

SPEC = BundleSpec("tiny", "1.0.0", 1_700_000_000, {"task": "classification"}, Requirements("optional"))
FILES = [
    BundleFile("model_int8.tflite", "tflite_int8", b"TFL3-not-really"),
    BundleFile("labels.txt", "labels", b"a\nb\n"),
]


def test_written_bundle_checks_clean_and_digest_is_stable(tmp_path: Path) -> None:
    d1 = write_bundle(tmp_path / "a", SPEC, FILES)
    d2 = write_bundle(tmp_path / "b", SPEC, FILES)
    assert d1 == d2
    arts = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir() if p.name != MANIFEST_FILE}
    assert check_bundle((tmp_path / "a" / MANIFEST_FILE).read_bytes(), arts, None).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp dirs left


def test_existing_output_directory_is_refused_and_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="already exists"):
        write_bundle(out, SPEC, FILES)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_signed_with_a_key_verifies_against_the_root_and_unsigned_does_not(tmp_path: Path, trust) -> None:
    write_bundle(tmp_path / "signed", SPEC, FILES, trust.targets_key)
    write_bundle(tmp_path / "unsigned", SPEC, FILES)
    manifest, _ = verify_manifest((tmp_path / "signed" / MANIFEST_FILE).read_bytes(), trust.root)
    assert manifest.requirements.edgetpu == "optional"
    with pytest.raises(VerificationError):
        verify_manifest((tmp_path / "unsigned" / MANIFEST_FILE).read_bytes(), trust.root)


def test_read_bundle_reports_a_tampered_artifact(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", SPEC, FILES)
    (tmp_path / "b" / "labels.txt").write_bytes(b"a\nc\n")
    b = read_bundle(tmp_path / "b")
    assert len(b.problems) == 1 and b.problems[0].startswith("labels.txt: sha256")
