"""Crash-safe file writes: write a temp file, fsync it, rename over the target, fsync the dir.

A power cut leaves either the old or the new content, never a torn file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, sort_keys=True, indent=1).encode())


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` if it is missing or unreadable (logged by callers)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return default


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
