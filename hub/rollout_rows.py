"""A rollout's state <-> its registry rows: :func:`load` builds the pure machine's
:class:`hub.rollout.RolloutState` from the ``rollout`` row, its ``rollout_device`` rows (as
plain dicts: a 10,000-device rollout is loaded every tick), its bundle's requirements and its
drift baseline; :func:`held_elsewhere` says which of its devices a newer rollout of its channel
holds (the machine's rule 1b); :func:`save` writes the machine's new state back, inserting new device rows and
bulk-updating only the changed ones. Used by :func:`hub.rollouts._run` (the thin shell).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import and_, bindparam, insert, update
from sqlmodel import Session, col, select

from protocol.bundle import Requirements
from protocol.sketch import DriftThresholds

from .fleet import Fleet
from .models import Bundle, Rollout, RolloutDevice
from .rollout import DeviceState, Elsewhere, GateResult, RolloutState


def baseline(fleet: Fleet, digest: str) -> tuple[dict[str, list[int]], DriftThresholds, dict[str, DriftThresholds]]:
    """The drift gate's inputs: reference counts, the model's thresholds and each feature's."""
    base = fleet.store.baseline_of(digest)  # a missing or malformed baseline only disables the drift gate
    if base is None:
        return {}, DriftThresholds(), {}
    return base.refs(), base.thresholds_for(""), {k: base.thresholds_for(k) for k in base.features()}


ROW_FIELDS = (
    "device_id",
    "state",
    "cohort",
    "attempts",
    "issued_at",
    "from_bundle",
    "reason",
    "online",
    "seq",
    "updated",
    "stage",
    "stages",
)
Rows = dict[str, dict[str, Any]]


def load(fleet: Fleet, s: Session, r: Rollout) -> tuple[RolloutState, Rows]:
    """Rollout rows as plain dicts (a 10,000-device rollout is loaded every tick)."""
    t = RolloutDevice
    q = select(*(getattr(t, f) for f in ROW_FIELDS)).where(t.rollout_id == r.id).order_by(col(t.device_id))
    s.flush()  # the read below goes through Core (plain tuples, no ORM rows built), which does not flush
    rows: Rows = {x[0]: dict(zip(ROW_FIELDS, x, strict=True)) for x in s.connection().execute(q)}
    b = s.get(Bundle, r.bundle)
    req = Requirements.from_dict(b.requirements) if b else Requirements()
    refs, th, feature_th = baseline(fleet, r.bundle)
    devices = tuple(
        DeviceState(
            x["device_id"],
            x["state"],
            x["cohort"],
            x["attempts"],
            x["issued_at"],
            x["from_bundle"],
            x["reason"],
            x["online"],
            x["stage"] or "",
            x["stages"] or {},
        )
        for x in rows.values()
    )
    gates = tuple(
        GateResult(g["name"], g["status"], g.get("value"), g.get("limit"), g.get("detail", "")) for g in (r.gates or [])
    )
    st = RolloutState(
        r.bundle,
        req,
        r.phase,
        r.cohort,
        r.cohort_started,
        r.soak_started,
        devices,
        r.reason,
        gates,
        r.gate_floor,
        refs,
        th,
        feature_th,
    )
    return st, rows


def save(s: Session, r: Rollout, rows: Rows, st: RolloutState, seqs: dict[str, int], now: int) -> None:
    r.phase, r.cohort, r.cohort_started, r.soak_started = st.phase, st.cohort, st.cohort_started, st.soak_started
    r.reason, r.gate_floor = st.reason[:1000], st.gate_floor
    r.gates = [g.to_dict() for g in st.gates]
    r.updated = now
    s.add(r)
    inserts, updates = [], []
    for d in st.devices:
        new = {
            "state": d.state,
            "cohort": d.cohort,
            "attempts": d.attempts,
            "issued_at": d.issued_at,
            "from_bundle": d.from_bundle,
            "reason": d.reason[:500],
            "online": d.online,
            "stage": d.stage,
            "stages": dict(d.stages),
        }
        if d.id in seqs:
            new["seq"] = seqs[d.id]
        old = rows.get(d.id)
        if old is None:
            inserts.append({"rollout_id": r.id, "device_id": d.id, "seq": 0, **new, "updated": now})
            continue
        if any(old[k] != v for k, v in new.items()):
            moved = any(old[k] != new[k] for k in ("state", "cohort", "attempts", "reason", "stage"))
            updates.append(
                {
                    "b_rid": r.id,
                    "b_dev": d.id,
                    **{k: old.get(k) for k in ("seq",)},
                    **new,
                    "updated": now if moved else old["updated"],
                }
            )
    t = RolloutDevice.__table__  # type: ignore[attr-defined]
    if inserts:
        s.execute(insert(t), inserts)
    if updates:
        stmt = (
            update(t)
            .where(and_(t.c.rollout_id == bindparam("b_rid"), t.c.device_id == bindparam("b_dev")))
            .values({k: bindparam(k) for k in ROW_FIELDS if k != "device_id"})
        )
        s.connection().execute(stmt, updates)


def held_elsewhere(s: Session, r: Rollout, ids: Collection[str]) -> list[Elsewhere]:
    """Those of ``ids`` (devices of ``r``) that a newer rollout of ``r``'s channel holds: it
    issued them a document, or has a row for them it may still issue (any row but one cancelled
    or found incompatible before anything was issued). The newest such rollout is named. One
    query when there is no newer rollout of the channel, as almost always."""
    newer = dict(
        s.exec(select(Rollout.id, Rollout.serial).where(Rollout.channel == r.channel, Rollout.serial > r.serial)).all()
    )
    if not newer or not ids:
        return []
    t = RolloutDevice
    q = select(t.device_id, t.rollout_id).where(
        col(t.rollout_id).in_(sorted(newer)),
        (col(t.attempts) > 0) | col(t.state).notin_(("cancelled", "incompatible")),
    )
    held: dict[str, str] = {}
    for device, rid in s.connection().execute(q):
        if device in ids and (device not in held or newer[rid] > newer[held[device]]):
            held[device] = rid
    return [Elsewhere(d, rid) for d, rid in sorted(held.items())]
