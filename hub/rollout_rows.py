"""A rollout's state <-> its registry rows: :func:`load` builds the pure machine's
:class:`hub.rollout.RolloutState` from the ``rollout`` row, its ``rollout_device`` rows (as
plain dicts), its bundle's requirements and its drift baseline; :func:`save` writes the
machine's new state back, inserting new device rows and bulk-updating only the changed ones;
:func:`held_elsewhere` says which of its devices a newer rollout of its channel holds (the
machine's rule 1b). Used by :func:`hub.rollouts._run` (the thin shell).

A 10,000-device rollout is run after every ingest batch that reports on it, and reading its
rows was most of a run (~9 us a row: ~90 ms at 10,000). So each process keeps the rows it last
read or wrote (:class:`Kept`, on the fleet, handed over only after the transaction commits) and
reads them again only when ``rollout.rows_version`` moved: every writer of a rollout's rows
bumps it in the same transaction (:func:`save`, a newer rollout superseding rows in
:func:`hub.rollouts.create`, the key rotation's new seqs in :mod:`hub.rotation`), a replica's
writes included, and runs read it under the rollout lock. A write that forgets to bump it would
leave a process deciding on rows it no longer has: tests/hub/test_rollout_rows.py compares the
kept rows with a fresh read after each kind of write.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
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


def _device(x: dict[str, Any]) -> DeviceState:
    return DeviceState(
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


@dataclass(frozen=True)
class Kept:
    """A rollout's rows as this process last read or wrote them, at ``version``
    (``Rollout.rows_version``): reused while the row says the same version."""

    version: int
    rows: Rows
    devices: tuple[DeviceState, ...]


KEPT_MAX = 8  # rollouts whose rows a process keeps (the most recently run)
KEPT_KEY = "edgefleet.kept_rows"  # where a session holds what its runs saved until it commits


def commit_kept(fleet: Fleet, s: Session) -> None:
    """After ``s`` committed: keep what its runs saved (never before: a rolled-back run's rows
    were never written)."""
    done: dict[str, Kept] = s.info.pop(KEPT_KEY, {})
    if not done:
        return
    into = fleet.kept_rows
    for rid, k in done.items():
        into.pop(rid, None)
        into[rid] = k  # the newest last
    while len(into) > KEPT_MAX:
        into.pop(next(iter(into)))


def load(fleet: Fleet, s: Session, r: Rollout) -> tuple[RolloutState, Rows]:
    """Rollout rows as plain dicts, read again only when another writer moved them: a
    10,000-device rollout is run after every ingest batch that reports on it, and reading its
    rows was most of a run's cost (~9 us a row here)."""
    k = fleet.kept_rows.get(r.id)
    if k is not None and k.version == (r.rows_version or 0):
        rows, devices = k.rows, k.devices
    else:
        t = RolloutDevice
        q = select(*(getattr(t, f) for f in ROW_FIELDS)).where(t.rollout_id == r.id).order_by(col(t.device_id))
        s.flush()  # the read below goes through Core (plain tuples, no ORM rows built), which does not flush
        rows = {x[0]: dict(zip(ROW_FIELDS, x, strict=True)) for x in s.connection().execute(q)}
        devices = tuple(_device(x) for x in rows.values())
    b = s.get(Bundle, r.bundle)
    req = Requirements.from_dict(b.requirements) if b else Requirements()
    refs, th, feature_th = baseline(fleet, r.bundle)
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


def save(
    s: Session,
    r: Rollout,
    rows: Rows,
    st: RolloutState,
    seqs: dict[str, int],
    now: int,
    before: RolloutState | None = None,
) -> None:
    """Write the machine's new state ``st``; a device the machine left as it was in ``before``
    (the same object) and issued nothing is not compared again."""
    r.phase, r.cohort, r.cohort_started, r.soak_started = st.phase, st.cohort, st.cohort_started, st.soak_started
    r.reason, r.gate_floor = st.reason[:1000], st.gate_floor
    r.gates = [g.to_dict() for g in st.gates]
    r.updated = now
    s.add(r)
    inserts, updates = [], []
    same = {d.id: d for d in before.devices} if before is not None else {}
    for d in st.devices:
        if d is same.get(d.id) and d.id not in seqs:
            continue
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
    if inserts or updates:
        r.rows_version = (r.rows_version or 0) + 1
    s.info.setdefault(KEPT_KEY, {})[r.id] = _keep(r.rows_version or 0, rows, st, inserts, updates)


def _keep(
    version: int, rows: Rows, st: RolloutState, inserts: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> Kept:
    """The rows as they now stand in the database, and the machine's devices as :func:`load`
    would build them from those rows. ``rows`` is not changed (a rolled-back run leaves it as
    it was)."""
    if not inserts and not updates:
        return Kept(version, rows, st.devices)
    now_rows = dict(rows)
    for u in updates:
        now_rows[u["b_dev"]] = {"device_id": u["b_dev"], **{k: u[k] for k in ROW_FIELDS if k != "device_id"}}
    for i in inserts:
        now_rows[i["device_id"]] = {k: i[k] for k in ROW_FIELDS}
    if inserts:
        now_rows = dict(sorted(now_rows.items()))  # in device id order, as a read gives them
    changed = {u["b_dev"] for u in updates} | {i["device_id"] for i in inserts}
    by_id = {d.id: d for d in st.devices}
    devices = tuple(_device(x) if i in changed else by_id[i] for i, x in now_rows.items())
    return Kept(version, now_rows, devices)


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
