"""The test builds' cache (tests/bundle_cache.py) keeps a bundle only while what its build read is
unchanged: a traced file edited or gone, a package it imported at another version, or no output
folder, means a rebuild; the same model in
another clone's folder is the same input; a ``.pyc`` the build loaded stands for its source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import bundle_cache


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    (repo / "compiler" / "__pycache__").mkdir(parents=True)
    (repo / "compiler" / "main.py").write_text("A = 1\n")
    (repo / "compiler" / "unread.py").write_text("B = 1\n")
    monkeypatch.setattr(bundle_cache, "REPO", repo)
    return repo


def _entry(tmp_path: Path, repo: Path) -> Path:
    entry = tmp_path / "entry"
    (entry / "bundle").mkdir(parents=True)
    (entry / "bundle" / "manifest.json").write_text("{}")
    files = {"compiler/main.py": bundle_cache._sha(repo / "compiler" / "main.py")}
    dists = {"numpy": bundle_cache._version("numpy")}
    (entry / "deps.json").write_text(json.dumps({"files": files, "distributions": dists}))
    return entry


def test_a_bundle_stays_valid_until_a_file_its_build_read_changes(tmp_path: Path, checkout: Path) -> None:
    entry = _entry(tmp_path, checkout)
    assert bundle_cache._still_valid(entry)
    (checkout / "compiler" / "unread.py").write_text("B = 2\n")  # the build never opened it
    assert bundle_cache._still_valid(entry)
    (checkout / "compiler" / "main.py").write_text("A = 2\n")
    assert not bundle_cache._still_valid(entry)


def test_a_read_file_gone_or_the_output_folder_gone_is_not_valid(tmp_path: Path, checkout: Path) -> None:
    entry = _entry(tmp_path, checkout)
    shutil.rmtree(entry / "bundle")
    assert not bundle_cache._still_valid(entry)
    entry = _entry(tmp_path / "again", checkout)
    (checkout / "compiler" / "main.py").unlink()
    assert not bundle_cache._still_valid(entry)
    assert not bundle_cache._still_valid(tmp_path / "never-built")


def test_a_bundle_is_not_valid_once_a_package_its_build_imported_has_another_version(
    tmp_path: Path, checkout: Path
) -> None:
    entry = _entry(tmp_path, checkout)
    deps = json.loads((entry / "deps.json").read_text())
    deps["distributions"]["numpy"] = "0.0.1"
    (entry / "deps.json").write_text(json.dumps(deps))
    assert not bundle_cache._still_valid(entry)
    deps["distributions"] = {"no-such-distribution": "1.0"}
    (entry / "deps.json").write_text(json.dumps(deps))
    assert not bundle_cache._still_valid(entry)


def test_a_file_under_site_packages_is_traced_to_its_distribution() -> None:
    import numpy

    assert bundle_cache._distribution(numpy.__file__) == "numpy"
    assert bundle_cache._distribution(str(bundle_cache.REPO / "compiler" / "main.py")) is None


def test_a_loaded_pyc_stands_for_its_source_and_installed_files_are_not_traced(checkout: Path) -> None:
    pyc = checkout / "compiler" / "__pycache__" / "main.cpython-311.pyc"
    assert bundle_cache._source(str(pyc)) == checkout / "compiler" / "main.py"
    (checkout / ".venv").mkdir()
    (checkout / ".venv" / "x.py").write_text("")
    assert bundle_cache._source(str(checkout / ".venv" / "x.py")) is None
    assert bundle_cache._source("/usr/lib/python3/os.py") is None
    assert bundle_cache._source(str(checkout / "compiler" / "gone.py")) is None


def test_an_input_file_is_its_name_and_contents_wherever_the_checkout_is(tmp_path: Path) -> None:
    for clone in ("a", "b"):
        (tmp_path / clone / "models").mkdir(parents=True)
        (tmp_path / clone / "models" / "m.tflite").write_bytes(b"model")
    a, b = (bundle_cache._input_digest(str(tmp_path / c / "models" / "m.tflite")) for c in ("a", "b"))
    assert a == b
    (tmp_path / "b" / "models" / "m.tflite").write_bytes(b"other")
    assert bundle_cache._input_digest(str(tmp_path / "b" / "models" / "m.tflite")) != a
    assert bundle_cache._input_digest(str(tmp_path / "a" / "models")) == bundle_cache._input_digest(
        str(tmp_path / "a" / "models")
    )
    assert bundle_cache._input_digest("--quiet") == "arg --quiet"


def test_an_input_is_rewritten_only_when_it_differs_and_never_beside_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_cache, "CACHE", tmp_path)
    image = bundle_cache.put(tmp_path / "calibration" / "m" / "a.bmp", b"pixels")
    inode = image.stat().st_ino
    assert bundle_cache.put(image, b"pixels").stat().st_ino == inode  # same bytes: left alone
    assert bundle_cache.put(image, b"other").read_bytes() == b"other"
    assert [p.name for p in image.parent.iterdir()] == ["a.bmp"]  # nothing else in the folder a build reads
    site_packages = Path(bundle_cache.SITE[0])
    assert bundle_cache._distribution(str(next(site_packages.glob("numpy-*.dist-info")) / "METADATA")) is None
    assert bundle_cache._input_digest("x" * 300 + "\nprint(1)") == "arg " + "x" * 300 + "\nprint(1)"  # a -c script
