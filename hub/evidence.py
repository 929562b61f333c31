"""The rollout gates' evidence: what each device's telemetry says about the bundle it was
issued, beside the bundle it ran before. Read by :func:`hub.rollouts._run` before every
decision that can open a cohort; the judging itself is pure (:func:`hub.rollout.evaluate_gates`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from .models import Rollout, TelemetryRollup, TelemetryWindow
from .rollout import Health, RolloutState
from .rollups import MINUTE
from .telemetry import merge

HEALTH_WINDOWS = 500  # newest windows per device and bundle that count
PREVIOUS_WINDOW_S = 3600  # how far back before the rollout the previous bundle's windows count
Rows = dict[str, dict[str, Any]]


def health(
    s: Session, r: Rollout, st: RolloutState, rows: Rows, reporting: set[str], recovery: Sequence[tuple[int, int]] = ()
) -> list[Health]:
    """Per installed device (and any device reporting in this run, which the run may install
    before the gates are judged): merged telemetry of the target bundle since the rollout
    began, and of the bundle it ran before (the hour before) for the latency comparison.
    Windows overlapping a ``recovery`` period (:meth:`Fleet.note_recovery`) are counted, not
    merged."""
    ids = [
        d.id
        for d in st.devices
        if d.cohort is not None
        and d.cohort >= st.gate_floor
        and (d.state == "installed" or (d.id in reporting and d.state in ("issued", "installing")))
    ]
    if not ids:
        return []
    prevs = {rows[i]["from_bundle"] for i in ids if rows[i]["from_bundle"]}
    t = TelemetryWindow
    # a window that began before the device switched can mix the old model's samples into the
    # new one's (agents label a window by the bundle active when it closes): judge only windows
    # that started after the hub saw the device installed
    since = {i: rows[i]["updated"] if rows[i]["state"] == "installed" else 0 for i in ids}
    q = (
        select(
            t.device,
            t.bundle,
            t.latency,
            t.inferences,
            t.errors,
            t.tpu,
            t.cpu,
            t.cloud,
            t.drift,
            t.shadow,  # type: ignore[call-overload]
            t.window_start,
            t.window_end,
        )
        .where(
            col(t.device).in_(ids), col(t.bundle).in_([st.bundle, *prevs]), t.received >= r.created - PREVIOUS_WINDOW_S
        )
        .order_by(col(t.window_end).desc())
    )
    # which windows count (the merging is hub.telemetry.merge): per device, the newest
    # HEALTH_WINDOWS of the target bundle since the switch or of the bundle it ran before
    new: dict[str, list[Any]] = {i: [] for i in ids}
    old: dict[str, list[Any]] = {i: [] for i in ids}
    left_out = dict.fromkeys(ids, 0)
    for w in s.exec(q).all():
        device = w.device
        if any(w.window_start <= up and w.window_end >= down for down, up in recovery):
            left_out[device] += 1
            continue
        is_new = w.bundle == st.bundle
        if not is_new and w.bundle != rows[device]["from_bundle"]:
            continue
        if is_new and w.window_start < since[device]:
            continue
        if len(new[device]) + len(old[device]) >= HEALTH_WINDOWS:
            continue
        (new if is_new else old)[device].append(w)
    _previous_from_rollups(s, r, rows, old, left_out, recovery)
    out = []
    for i in ids:
        m, before = merge(new[i]), merge(old[i])
        prev = before.sketch
        out.append(
            Health(
                i,
                m.counts["inferences"],
                m.counts["errors"],
                m.counts["cloud"],
                m.sketch.to_dict() if m.sketch.count else {},
                prev.to_dict() if prev.count else {},
                {k: c for k, ref in st.baseline.items() if (c := m.drift_counts(k, len(ref))) is not None},
                m.shadow_agree,
                m.shadow_total,
                left_out[i],
                before.counts["inferences"],
                before.counts["errors"],
                before.counts["cloud"],
            )
        )
    return out


def _previous_from_rollups(
    s: Session,
    r: Rollout,
    rows: Rows,
    old: dict[str, list[Any]],
    left_out: dict[str, int],
    recovery: Sequence[tuple[int, int]],
) -> None:
    """A rollout soaking past the raw retention (:mod:`hub.rollups`) has lost the raw windows of
    the hour before it: a device with none of its previous bundle's raw windows left gets its
    1-minute rollups of that hour instead (never both, so no window counts twice)."""
    missing = [i for i, ws in old.items() if not ws and rows[i]["from_bundle"]]
    if not missing:
        return
    t = TelemetryRollup
    q = select(t).where(
        t.resolution == MINUTE,
        col(t.device).in_(missing),
        col(t.bundle).in_(sorted({rows[i]["from_bundle"] for i in missing})),
        t.bucket >= r.created - PREVIOUS_WINDOW_S,
        t.bucket < r.created + MINUTE,
    )
    for w in s.exec(q.order_by(col(t.bucket).desc())).all():
        if w.bundle != rows[w.device]["from_bundle"] or sum(x.windows for x in old[w.device]) >= HEALTH_WINDOWS:
            continue
        if any(w.window_start <= up and w.window_end >= down for down, up in recovery):
            left_out[w.device] += w.windows
            continue
        old[w.device].append(w)
