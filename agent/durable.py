"""Crash-safe file writes: write a temp file, fsync it, rename over the target, fsync the dir.

A power cut leaves either the old or the new content, never a torn file: the rename is the
commit, and both the data (before it) and the directory entry (after it) are on disk when
:func:`write_atomic` returns. Every piece of agent state goes through here (``slots.json``,
``job.json``, ``trust.json``, ``commands.json``, the rotated ``root.json``, ``http.port``, a
slot's refreshed manifest); slot directories are staged and renamed the same way
(:mod:`agent.slots`), downloads fsync each chunk before its bitmap byte (:mod:`agent.download`)
and the backlog is SQLite with ``synchronous=FULL`` (:mod:`agent.backlog`).

Filesystems and SD cards do not always keep their promises (a card that acknowledges a write
it has not made, ext4 mounted ``data=writeback``), so a state file may still come back torn.
``keep_previous`` (every JSON state file) keeps the content it replaces as ``<name>.prev`` (a
hard link, no copy), and :func:`read_json` / :func:`read_checked` fall back to it when the file
exists but does not parse, logging which one they used: an older state, never none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous(path: Path) -> Path:
    """Where :func:`write_atomic` keeps the content ``path`` had before its last write."""
    return path.with_name(f"{path.name}.prev")


def write_atomic(path: Path, data: bytes, keep_previous: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        link = path.with_name(f".{path.name}.prev.tmp")
        try:
            link.unlink(missing_ok=True)
            os.link(path, link)  # the old inode under a second name, then renamed into place
            os.replace(link, previous(path))
        except OSError as exc:  # a filesystem without hard links: no fallback copy, still atomic
            log.debug("cannot keep the previous %s: %s", path.name, exc)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, sort_keys=True, indent=1).encode(), keep_previous=True)


def read_checked(path: Path, parse: Callable[[bytes], T], errors: tuple[type[Exception], ...] = (ValueError,)) -> T:
    """``parse(path's bytes)``; when the file exists but does not parse (a torn write), the
    previous content (``<name>.prev``) instead. Raises what ``parse`` or the read raised when
    neither works (OSError for a missing file: a missing file never falls back)."""
    data = path.read_bytes()
    try:
        return parse(data)
    except errors as exc:
        prev = previous(path)
        either: tuple[type[Exception], ...] = (OSError, *errors)
        try:
            got = parse(prev.read_bytes())
        except either:
            raise exc from None
        log.error("%s is unreadable (%s; torn by a power cut?): using its previous content", path, exc)
        return got


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path`` (or its previous content if ``path`` is torn), or ``default`` if it
    is missing or neither parses."""
    try:
        return read_checked(path, json.loads)
    except (OSError, ValueError):
        return default


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
