"""Hard examples, the hub's room: chunks from devices become files and rows; listing, fetching
and exporting them as a dataset folder for relabelling (issue 18 part 4).

Layout under the store (``--store``)::

    hard-examples/{model}/{version}/{device}-{sample id}.{ext}   one input, as the device sent it
    hard-examples/.parts/{device}/{sample id}/head.json, {index}  chunks of one not yet complete

Ingest (:func:`record`, inside the ingest batch's transaction), per chunk
(:class:`protocol.samples.SampleChunk`):

* a row for (device, sample id) exists: receipt ``done``, nothing stored (exactly once);
* its bundle is not one the hub knows: receipt ``refused`` naming it (the device drops it);
* the chunk is written to ``.parts`` (a head that differs from the stored one restarts the
  parts: a new input under an old id is never mixed with the old one's chunks);
* every chunk present: the parts are joined and checked against ``sha256`` (a mismatch drops
  them all and answers ``have: []``: the device sends them again), the file is written under
  the model's name and version (the hub's, looked up from the bundle digest, not the device's
  word), the row added, the parts removed; receipt ``done``. Otherwise: ``have``.

Chunks of an example nobody finishes (a device wiped before it sent the rest) are removed
:data:`PARTS_MAX_AGE_S` after their last chunk (:func:`prune_parts`, from the ticker).

Replicas (``--shared-group``) must share the store directory (they already share the bundles):
the chunks of one example may reach different replicas.

Reading the inputs needs the ``operator`` role (they may show people or places); the listing
(metadata, no bytes) needs ``viewer``. Retention: kept until an operator deletes them
(:func:`delete`: ``DELETE /api/v1/hard-examples``, ``hard-examples delete``; audited).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from protocol.samples import CONTENT_TYPES, Receipt, SampleChunk

from .errors import NotFound
from .fleet import Fleet
from .models import Bundle, HardExample

log = logging.getLogger(__name__)

DIR = "hard-examples"
PARTS_MAX_AGE_S = 7 * 86400  # an agent resends within seconds; a week of silence means never
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(part: str) -> str:
    """A model name or version as one path level (never ``..`` or a separator)."""
    s = _UNSAFE.sub("_", part)[:100].lstrip(".")
    return s or "_"


def root(fleet: Fleet) -> Path:
    return Path(fleet.store.root) / DIR


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _head(c: SampleChunk) -> dict[str, Any]:
    return {"bundle": c.bundle, "size": c.size, "sha256": c.sha256, "count": c.count, "content_type": c.content_type}


def record(fleet: Fleet, s: Session, c: SampleChunk, now: int) -> tuple[Receipt, str]:
    """Store one chunk (rules in the module docstring): (the receipt, an outcome for the metrics:
    ``stored`` | ``duplicate`` | ``rejected``)."""
    done = s.exec(select(HardExample.id).where(HardExample.device == c.device, HardExample.sample_id == c.id)).first()
    if done is not None:
        return Receipt(c.device, c.id, tuple(range(c.count)), True), "duplicate"
    bundle = s.get(Bundle, c.bundle)
    if bundle is None:
        why = f"bundle {c.bundle} is not known to this hub"
        log.warning("hard example %s from %s refused: %s", c.id, c.device, why)
        return Receipt(c.device, c.id, refused=why), "rejected"
    parts = root(fleet) / ".parts" / c.device / c.id
    head = _head(c)
    head_file = parts / "head.json"
    try:
        old = json.loads(head_file.read_bytes()) if head_file.exists() else None
    except ValueError:
        old = None
    if old != head:
        shutil.rmtree(parts, ignore_errors=True)
        _write(head_file, json.dumps(head).encode())
    _write(parts / str(c.index), c.data)
    have = sorted(int(p.name) for p in parts.iterdir() if p.name.isdigit() and int(p.name) < c.count)
    if len(have) < c.count:
        return Receipt(c.device, c.id, tuple(have)), "stored"
    data = b"".join((parts / str(i)).read_bytes() for i in range(c.count))
    if len(data) != c.size or hashlib.sha256(data).hexdigest() != c.sha256:
        log.warning("hard example %s from %s: joined chunks do not match its sha256; asking again", c.id, c.device)
        shutil.rmtree(parts, ignore_errors=True)
        return Receipt(c.device, c.id, ()), "rejected"
    rel = Path(_safe(bundle.name)) / _safe(bundle.version) / file_name(c.device, c.id, c.content_type)
    _write(root(fleet) / rel, data)
    conf = c.meta.get("confidence")
    measure = c.meta.get("measure")
    answer = c.meta.get("answer")
    s.add(
        HardExample(
            device=c.device,
            sample_id=c.id,
            bundle=c.bundle,
            model=bundle.name,
            version=bundle.version,
            ts=c.ts,
            received=now,
            content_type=c.content_type,
            size=c.size,
            sha256=c.sha256,
            path=rel.as_posix(),
            confidence=float(conf) if isinstance(conf, int | float) and not isinstance(conf, bool) else None,
            measure=measure[:32] if isinstance(measure, str) else "",
            answer=answer if isinstance(answer, dict) else {},
        )
    )
    shutil.rmtree(parts, ignore_errors=True)
    return Receipt(c.device, c.id, tuple(range(c.count)), True), "stored"


def prune_parts(fleet: Fleet, now: float, max_age_s: float = PARTS_MAX_AGE_S) -> int:
    """Remove the chunks of examples whose newest chunk is older than ``max_age_s`` (file times,
    ``now`` in the same clock); returns how many examples' chunks went."""
    gone = 0
    for folder in (root(fleet) / ".parts").glob("*/*"):
        try:
            newest = max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
        except OSError:
            continue
        if now - newest > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            gone += 1
    return gone


# reading -------------------------------------------------------------------------------------
def public(h: HardExample) -> dict[str, Any]:
    return {
        "id": h.id,
        "device": h.device,
        "sample_id": h.sample_id,
        "bundle": h.bundle,
        "model": h.model,
        "version": h.version,
        "ts": h.ts,
        "received": h.received,
        "content_type": h.content_type,
        "size": h.size,
        "sha256": h.sha256,
        "confidence": h.confidence,
        "measure": h.measure,
        "answer": h.answer,
    }


def _query(model: str | None, version: str | None, device: str | None) -> Any:
    q = select(HardExample)
    if model:
        q = q.where(HardExample.model == model)
    if version:
        q = q.where(HardExample.version == version)
    if device:
        q = q.where(HardExample.device == device)
    return q


def listing(
    fleet: Fleet,
    limit: int = 50,
    offset: int = 0,
    model: str | None = None,
    version: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Newest first."""
    with fleet.session() as s:
        q = _query(model, version, device)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows: Sequence[HardExample] = s.exec(q.order_by(col(HardExample.id).desc()).offset(offset).limit(limit)).all()
        return {"items": [public(h) for h in rows], "total": total, "limit": limit, "offset": offset}


def versions(fleet: Fleet) -> list[dict[str, Any]]:
    """Every (model, version) with hard examples and how many: the dashboard's index."""
    with fleet.session() as s:
        rows = s.exec(
            select(HardExample.model, HardExample.version, func.count(), func.max(HardExample.received))
            .group_by(col(HardExample.model), col(HardExample.version))
            .order_by(col(HardExample.model), col(HardExample.version))
        ).all()
    return [{"model": m, "version": v, "count": n, "last": last} for m, v, n, last in rows]


def get(fleet: Fleet, ident: int) -> dict[str, Any]:
    with fleet.session() as s:
        h = s.get(HardExample, ident)
        if h is None:
            raise NotFound("hard example", str(ident))
        return public(h)


def content(fleet: Fleet, ident: int) -> tuple[str, bytes]:
    """(content type, the input's bytes)."""
    with fleet.session() as s:
        h = s.get(HardExample, ident)
        if h is None:
            raise NotFound("hard example", str(ident))
        path, ctype = root(fleet) / h.path, h.content_type
    try:
        return ctype, path.read_bytes()
    except FileNotFoundError:
        raise NotFound("hard example file", h.path) from None


def delete(fleet: Fleet, model: str, version: str | None, actor: str) -> int:
    """Delete a model's (or one version's) hard examples, rows and files, in the audit log;
    returns how many. The rows go first: a file left by a crash is never listed again."""
    with fleet.session() as s:
        rows = s.exec(_query(model, version, None)).all()
        paths = [root(fleet) / h.path for h in rows]
        for h in rows:
            s.delete(h)
        fleet.audit(s, actor, "hard_examples.delete", f"{model} {version or '*'}", deleted=len(rows))
        s.commit()
    for p in paths:
        p.unlink(missing_ok=True)
    return len(paths)


# export: a dataset folder for relabelling --------------------------------------------------
LABEL_COLUMNS = (
    "file",
    "label",
    "predicted",
    "confidence",
    "measure",
    "device",
    "ts",
    "model",
    "version",
    "bundle",
    "sha256",
)


def predicted(answer: dict[str, Any]) -> str:
    """The model's own answer in one cell: a classifier's top label (or index), else the task."""
    top = answer.get("top")
    if isinstance(top, list) and top and isinstance(top[0], dict):
        first = top[0]
        return str(first.get("label") or first.get("index", ""))
    return str(answer.get("task", ""))


def export_rows(items: Sequence[dict[str, Any]]) -> tuple[bytes, bytes]:
    """(labels.csv, metadata.jsonl) for listed items whose file is ``images/{device}-{sample_id}.{ext}``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_COLUMNS)
    lines = []
    for it in items:
        name = export_name(it)
        w.writerow(
            [
                name,
                "",
                predicted(it["answer"]),
                "" if it["confidence"] is None else it["confidence"],
                it["measure"],
                it["device"],
                it["ts"],
                it["model"],
                it["version"],
                it["bundle"],
                it["sha256"],
            ]
        )
        lines.append(json.dumps({"file": name, **it}, sort_keys=True))
    return buf.getvalue().encode(), ("\n".join(lines) + "\n" if lines else "").encode()


def file_name(device: str, sample_id: str, content_type: str) -> str:
    """One example's file name: ``@`` is in neither a device id nor a sample id, so two devices'
    examples never share a name (with ``-``, device ``a-b`` sample ``cdefghij`` and device ``a``
    sample ``b-cdefghij`` did)."""
    return f"{device}@{sample_id}.{CONTENT_TYPES.get(content_type, 'bin')}"


def export_name(item: dict[str, Any]) -> str:
    return "images/" + file_name(item["device"], item["sample_id"], item["content_type"])
