"""Bundles: stored, checked and signed by the hub, registered as a model's next revision,
listed, and published in chunks (retained, once per bundle; repairs go through FetchRequest)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from protocol import planref
from protocol.bundle import ChunkPlan, Requirements
from protocol.messages import BundleRef
from protocol.signing import Envelope
from protocol.topics import Topic
from protocol.view import BundleView

from .errors import NotFound
from .fleet import Fleet
from .models import (
    Build,
    Bundle,
    ModelName,
)
from .store import split_archive
from .transport import Outgoing

log = logging.getLogger(__name__)


def bundle_public(b: Bundle) -> dict[str, Any]:
    return {
        "digest": b.digest,
        "name": b.name,
        "version": b.version,
        "revision": b.revision,
        "archive_sha256": b.archive_sha256,
        "size": b.size,
        "chunk_size": b.chunk_size,
        "chunks": len(b.chunks),
        "created": b.created,
        "uploaded": b.uploaded,
        "requirements": b.requirements,
        "model": b.model,
        "artifacts": b.artifacts,
    }


def bundle_ref(b: Bundle, view: BundleView | None = None) -> BundleRef:
    """``b`` in a desired document; ``view``: its device view, for an agent that installs one."""
    return BundleRef(b.digest, b.name, b.version, archive_plan(b), Requirements.from_dict(b.requirements), view)


def push_archive(fleet: Fleet, data: bytes, actor: str = "api") -> dict[str, Any]:
    env, arts = split_archive(data)
    return push(fleet, env, arts, actor)


def push(fleet: Fleet, env: Envelope, arts: dict[str, bytes], actor: str = "api") -> dict[str, Any]:
    stored = fleet.store.put(env, arts, fleet.keys.online)
    with fleet.rollout_lock:  # two pushes of the same new bundle must not race for its row
        out = _register(fleet, stored, actor)
    fleet.prepare_deltas(stored.digest)  # from the bases devices run now, before a rollout asks (hub.deltas)
    return out


def _register(fleet: Fleet, stored: Any, actor: str) -> dict[str, Any]:
    m = stored.manifest
    with fleet.session() as s:
        row = s.get(Bundle, stored.digest)
        if row is None:
            model = s.get(ModelName, m.name)
            if model is None:
                model = ModelName(name=m.name, latest_revision=0, created=fleet.clock())
            model.latest_revision += 1
            row = Bundle(
                digest=stored.digest,
                name=m.name,
                version=m.version,
                revision=model.latest_revision,
                created=m.created,
                uploaded=fleet.clock(),
                archive_sha256=stored.plan.sha256,
                size=stored.plan.size,
                chunk_size=stored.plan.chunk_size,
                chunks=list(stored.plan.chunks),
                requirements=m.requirements.to_dict(),
                model=m.model,
                artifacts=[a.to_dict() for a in m.artifacts],
            )
            s.add(model)
            s.add(row)
            s.add(
                Build(
                    digest=stored.digest,
                    report=_json_artifact(fleet, stored.digest, m, "report"),
                    model_card=(_artifact_text(fleet, stored.digest, m, "model_card") or "")[:200_000],
                )
            )
            fleet.audit(s, actor, "bundle.push", stored.digest, name=m.name, version=m.version)
            try:
                s.commit()
            except IntegrityError:  # another hub replica registered it first: same content
                s.rollback()
                row = get_row(fleet, s, stored.digest)
            else:
                log.info(
                    "stored bundle %s@%s %s (%d bytes, %d chunks)",
                    m.name,
                    m.version,
                    stored.digest[:12],
                    stored.plan.size,
                    len(stored.plan.chunks),
                )
        return {
            "digest": row.digest,
            "name": row.name,
            "version": row.version,
            "archive_sha256": row.archive_sha256,
            "size": row.size,
            "revision": row.revision,
        }


def _artifact_text(fleet: Fleet, digest: str, m: Any, role: str) -> str | None:
    a = m.artifact(role)
    data = fleet.store.artifact(digest, a.name) if a else None
    return data.decode("utf-8", "replace") if data is not None else None


def _json_artifact(fleet: Fleet, digest: str, m: Any, role: str) -> dict[str, Any]:
    import json

    text = _artifact_text(fleet, digest, m, role)
    try:
        obj = json.loads(text) if text else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def get_row(fleet: Fleet, s: Session, digest: str) -> Bundle:
    row = s.get(Bundle, digest)
    if row is None:
        raise NotFound("bundle", digest)
    return row


def listing(fleet: Fleet, limit: int = 50, offset: int = 0, name: str | None = None) -> dict[str, Any]:
    with fleet.session() as s:
        q = select(Bundle)
        if name:
            q = q.where(Bundle.name == name)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows = s.exec(q.order_by(col(Bundle.uploaded).desc(), col(Bundle.digest)).offset(offset).limit(limit)).all()
        return {"items": [bundle_public(b) for b in rows], "total": total, "limit": limit, "offset": offset}


def get(fleet: Fleet, digest: str) -> dict[str, Any]:
    with fleet.session() as s:
        b = get_row(fleet, s, digest)
        out = bundle_public(b)
        build = s.get(Build, digest)
        out["report"] = build.report if build else {}
        out["model_card"] = build.model_card if build else ""
        out["deltas_preparing"] = fleet.preparing_deltas(digest)
        return out


def archive_plan(b: Bundle) -> ChunkPlan:
    """How ``b``'s full archive is cut for transfer."""
    return ChunkPlan(b.size, b.archive_sha256, b.chunk_size, tuple(b.chunks))


def chunk_messages(fleet: Fleet, b: Bundle, indexes: Iterable[int] | None = None) -> list[Outgoing]:
    return plan_chunk_messages(fleet, archive_plan(b), indexes)


def plan_chunk_messages(fleet: Fleet, plan: ChunkPlan, indexes: Iterable[int] | None = None) -> list[Outgoing]:
    """The retained chunk messages of a stored archive (a bundle's, or a device view's:
    hub.views), all or those at ``indexes`` (out-of-range ones skipped)."""
    out = []
    idx = range(len(plan.chunks)) if indexes is None else sorted(set(indexes))
    for i in idx:
        if not 0 <= i < len(plan.chunks):
            continue
        data = fleet.store.chunk(plan.sha256, i, plan.chunk_size)
        out.append(Outgoing(str(Topic.chunk(plan.sha256, i)), data, retain=True, qos=1, kind="chunk"))
    return out


def plan_message(plan: ChunkPlan) -> Outgoing:
    """The archive's chunk list, retained, for agents that read it by reference (protocol.planref)."""
    return Outgoing(str(Topic.plan(plan.sha256)), planref.plan_bytes(plan), retain=True, qos=1, kind="plan")


def plan_messages(fleet: Fleet) -> list[Outgoing]:
    """Every published bundle's chunk plan, for each broker connect: a broker that lost its
    retained messages, or bundles published before plans were (one small message per bundle)."""
    with fleet.session() as s:
        return [plan_message(archive_plan(b)) for b in s.exec(select(Bundle).where(col(Bundle.published))).all()]


def ensure_published(fleet: Fleet, s: Session, b: Bundle) -> list[Outgoing]:
    """Chunks of ``b`` and its chunk plan retained on the broker, once per bundle (repairs, and
    a plan an agent never got, go through FetchRequest: hub.ingest)."""
    if b.published:
        return []
    b.published = True
    s.add(b)
    return [plan_message(archive_plan(b)), *chunk_messages(fleet, b)]


def models(fleet: Fleet, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    with fleet.session() as s:
        total = s.exec(select(func.count()).select_from(ModelName)).one()
        rows = s.exec(select(ModelName).order_by(col(ModelName.name)).offset(offset).limit(limit)).all()
        items = []
        for m in rows:
            latest = s.exec(select(Bundle).where(Bundle.name == m.name).order_by(col(Bundle.revision).desc())).first()
            items.append(
                {
                    "name": m.name,
                    "revisions": m.latest_revision,
                    "created": m.created,
                    "latest": bundle_public(latest) if latest else None,
                }
            )
        return {"items": items, "total": total, "limit": limit, "offset": offset}
