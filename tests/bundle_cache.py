"""The compiler builds the tests use, each made once and kept under ``~/.cache/edgefleet/bundles``
(``$XDG_CACHE_HOME/edgefleet``), outside the checkout, so a fresh clone on the same machine (CI)
finds them too.

A cached bundle is used only while everything its build read is unchanged:

* its inputs: the arguments, with each one that names a file or folder taken by its name and its
  contents (not by where it is: the same model in another clone's ``shared/`` is the same input;
  so an imported bundle's description, "Imported from PATH", may name the path of the clone that
  built it: no test reads it);
* the code and data it read: every file of the checkout the build and its children opened
  (imports included), recorded as it ran (``tests/trace_deps/sitecustomize.py``), held by sha256;
* the installed packages (every distribution's name and version), Python's version and the
  ``edgetpu_compiler`` found, if any.

So a commit to a part of ``compiler/`` or ``protocol/`` that the build never loads keeps the
bundle, and a change to one it loads rebuilds it. Builds of one key are serialised with a lock
file, so two test processes never write over each other's build.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefleet"
BUNDLES = CACHE / "bundles"
TRACER = Path(__file__).resolve().parent / "trace_deps"


def put(path: Path, data: bytes) -> Path:
    """Write an input of a cached build (a calibration image, a labels file) under ``CACHE``:
    only when it differs, and by rename, so a test process hashing or reading it never sees it
    half-written (another one rewriting it once left a build keyed by a cut image)."""
    if path.is_file() and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".put-{os.getpid()}-{path.name}"  # not beside it: a build reads the whole folder
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _input_digest(arg: str) -> str:
    """An argument as the build sees it: a path by its name and contents, anything else as text."""
    p = Path(arg) if Path(arg).is_absolute() else REPO / arg  # the build runs in the checkout
    try:
        p.stat()
    except OSError:  # no such file, or no possible one (a script passed with -c: name too long)
        return f"arg {arg}"
    if p.is_file():
        return f"file {p.name} {_sha(p)}"
    if p.is_dir():
        inner = sorted(f"{q.relative_to(p).as_posix()} {_sha(q)}" for q in p.rglob("*") if q.is_file())
        return f"dir {p.name} [{', '.join(inner)}]"
    return f"arg {arg}"


@cache
def runtime() -> str:
    """Python's version and the Edge TPU compiler a build would find (the packages it imports are
    in each entry's deps.json, by name and version)."""
    tpu = os.environ.get("EDGEFLEET_EDGETPU_COMPILER") or shutil.which("edgetpu_compiler") or ""
    tpu_id = f"{tpu} {_sha(Path(tpu))}" if tpu and Path(tpu).is_file() else "none"
    return f"{sys.version}\n{tpu_id}"


@cache
def environment() -> str:
    """Python, the Edge TPU compiler and every installed distribution (for a cached file whose
    maker is not traced)."""
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    return "\n".join([runtime(), *dists])


SITE = tuple(Path(p).resolve() for p in site.getsitepackages())


@cache
def _owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(traced: str) -> str | None:
    """The installed distribution a traced file under site-packages belongs to (None: not one)."""
    p = Path(traced)
    for sp in SITE:
        if p.is_relative_to(sp) and p != sp:
            top = p.relative_to(sp).parts[0]
            if top.endswith((".dist-info", ".egg-info")):
                return None  # metadata read (entry points, every package's): not its code
            names = _owners().get(top.split(".")[0], [])
            return names[0] if names else None
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source(traced: str) -> Path | None:
    """A traced path as the checkout file it stands for (a ``.pyc`` as its ``.py``), or None for a
    file that is not an input (gone, or under .git, .venv or the egg-info: installed packages are
    keyed by name and version)."""
    p = Path(traced)
    if p.suffix == ".pyc" and p.parent.name == "__pycache__":
        p = p.parent.parent / (p.name.split(".")[0] + ".py")
    try:
        rel = p.relative_to(REPO)
    except ValueError:
        return None
    if rel.parts[0] in (".git", ".venv") or rel.parts[0].endswith(".egg-info") or not p.is_file():
        return None
    return p


def _still_valid(entry: Path) -> bool:
    try:
        deps = json.loads((entry / "deps.json").read_text())
    except (OSError, ValueError):
        return False
    for rel, digest in deps.get("files", {}).items():
        p = REPO / rel
        if not p.is_file() or _sha(p) != digest:
            return False
    for dist, version in deps.get("distributions", {}).items():
        if _version(dist) != version:
            return False
    return "files" in deps and (entry / "bundle").is_dir()


_checked: set[Path] = set()  # entries this process has found valid (or built): checked once
OUT = "{out}"  # in cached_output's arguments: the folder the command writes


def cached_bundle(key: str, argv: list[str], timeout: float = 900) -> Path:
    """``python -m compiler *argv --out DIR --quiet``: the bundle directory, built only when no
    build with the same inputs is cached or one of the files that build read has changed."""
    return _cached(key, argv, ["-m", "compiler", *argv, "--out", OUT, "--quiet"], timeout)


def cached_output(key: str, args: list[str], timeout: float = 900) -> Path:
    """``python *args`` with ``OUT`` in ``args`` standing for a fresh folder: that folder, made
    again only when an input or a file the command read has changed (e.g. a script that trains
    and saves models). Treat it as read-only: it is shared by every test process."""
    return _cached(key, [a for a in args if a != OUT], args, timeout)


def _cached(key: str, inputs: list[str], args: list[str], timeout: float) -> Path:
    h = hashlib.sha256(runtime().encode())
    for a in inputs:
        h.update(_input_digest(a).encode() + b"\0")
    entry = BUNDLES / f"{key}-{h.hexdigest()[:16]}"
    if entry in _checked:
        return entry / "bundle"
    BUNDLES.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same key: wait for it
        if not _still_valid(entry):
            _build(entry, args, timeout)
    _checked.add(entry)
    return entry / "bundle"


def _build(entry: Path, args: list[str], timeout: float) -> None:
    tmp = entry.with_name(entry.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = tmp / "opened.txt"
    pythonpath = os.pathsep.join(filter(None, [str(TRACER), os.environ.get("PYTHONPATH")]))
    roots = os.pathsep.join([str(REPO), *map(str, SITE)])
    env = {**os.environ, "PYTHONPATH": pythonpath, "EDGEFLEET_TRACE_DEPS": str(log), "EDGEFLEET_TRACE_ROOT": roots}
    proc = subprocess.run(
        [sys.executable, *(str(tmp / "bundle") if a == OUT else a for a in args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{entry.name} build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    traced = set(log.read_text().splitlines())
    opened = {p for line in traced if (p := _source(line)) is not None}
    if not opened:
        raise RuntimeError(f"{entry.name}: the build's trace names no file of the checkout ({log}): cannot key it")
    dists = {d for line in traced if (d := _distribution(line)) is not None}
    deps = {
        "files": {p.relative_to(REPO).as_posix(): _sha(p) for p in sorted(opened)},
        "distributions": {d: _version(d) for d in sorted(dists)},
    }
    (tmp / "deps.json").write_text(json.dumps(deps, indent=1) + "\n")
    log.unlink()
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)
