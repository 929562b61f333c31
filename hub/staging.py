"""The I/O shell of a rollout's stages (:mod:`hub.stages` decides, :mod:`hub.rollout` moves the
devices): what staging devices sent, read back from the registry on every run, and the signed
document of each stage.

Evidence is read from stored rows, not from the message that brought it, so a report that came
while the rollout was paused (or while another hub replica held the lock) still counts when the
rollout runs again:

* benchmark stage: the device's ``shadow`` reports answering the stage's document (their
  ``desired_seq`` is the row's ``seq``); the newest carrying ``metrics.benchmark`` for the
  candidate is the figure, a failed one without it says the candidate never ran;
* shadow stage: the ``shadow`` record of every telemetry window on the rollout's channel the hub
  received since the stage began, summed (:class:`hub.stages.ShadowTally`), and failed ``shadow`` reports as above.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session, col, select

from protocol.channels import DEFAULT
from protocol.device import Shadow
from protocol.errors import BadPayload

from . import bundles, desired
from .fleet import Fleet
from .models import Bundle, Device, ReportRecord, Rollout, TelemetryWindow
from .rollout import IssueStage, Policy, RolloutState, StageEvidence
from .stages import ShadowTally, benchmark_of, desired_for
from .transport import Outgoing

log = logging.getLogger(__name__)
Rows = dict[str, dict[str, Any]]


def task_of(b: Bundle | None) -> str:
    """The bundle's task as its manifest's signature names it ("" when it names none)."""
    sig = (b.model or {}).get("signature") if b is not None else None
    return str(sig.get("task") or "") if isinstance(sig, Mapping) else ""


def evidence(s: Session, r: Rollout, st: RolloutState, rows: Rows) -> list[StageEvidence]:
    staging = [d for d in st.devices if d.state == "staging" and d.id in rows]
    if not staging:
        return []
    task = task_of(s.get(Bundle, r.bundle))
    seqs = {d.id: rows[d.id]["seq"] for d in staging}
    reports: dict[str, list[ReportRecord]] = {}
    q = select(ReportRecord).where(
        col(ReportRecord.device).in_(list(seqs)), ReportRecord.stage == "shadow", ReportRecord.received >= r.created
    )
    for rep in s.exec(q.order_by(col(ReportRecord.seq))).all():
        if rep.desired_seq == seqs[rep.device]:
            reports.setdefault(rep.device, []).append(rep)
    out = []
    for d in staging:
        report, failed = None, ""
        for rep in reports.get(d.id, []):
            try:
                found = benchmark_of(rep.metrics, r.bundle)
            except BadPayload as exc:
                failed = f"malformed benchmark report: {exc}"
                continue
            if found is not None:
                report = found
            elif rep.status == "failed" and not failed:
                failed = f"{rep.reason}: {rep.detail}"
        tally = _tally(s, d.id, d.issued_at, r.bundle, r.channel) if d.stage == "shadow" else None
        out.append(StageEvidence(d.id, report, tally, failed, task))
    return out


def _tally(s: Session, device: str, since: int, candidate: str, channel: str = DEFAULT) -> ShadowTally:
    """The shadow records of ``device``'s windows on ``channel`` received since ``since`` that
    compare ``candidate`` (a record naming another candidate - the one before, or a shadow the
    device still ran when the stage began - is not counted; an agent older than the ``bundle``
    field names none and is counted by time alone). A window's channel is in its health column
    (absent: default, hub.ingest)."""
    t = TelemetryWindow
    q = select(t.shadow, t.health).where(t.device == device, t.received >= since, col(t.shadow).is_not(None))
    tally = ShadowTally()
    for raw, health in s.exec(q).all():
        if not raw or (health or {}).get("channel", DEFAULT) != channel:
            continue
        try:
            rec = Shadow.from_dict(dict(raw), "telemetry shadow")
            if rec.bundle is None or rec.bundle == candidate:
                tally = tally.add(rec)
        except BadPayload as exc:  # ingest parsed it once; a row that no longer parses is skipped
            log.warning("shadow record of %s not counted: %s", device, exc)
    return tally


def issue(
    fleet: Fleet, s: Session, a: IssueStage, policy: Policy, rid: str, channel: str = DEFAULT
) -> tuple[list[Outgoing], int] | None:
    """Sign and record ``a``'s document on the rollout's ``channel``: the device keeps
    ``a.active`` (what it serves on that channel) and runs the candidate beside it as the stage
    says (``end``: without it). None: the device or its active bundle is unknown to the hub, so
    nothing can be sent (the stage then times out, naming why)."""
    dev = s.get(Device, a.device)
    active = s.get(Bundle, a.active) if a.active else None
    if dev is None or active is None:
        log.warning("rollout %s: no %s document for %s: active bundle %s unknown", rid, a.stage, a.device, a.active)
        return None
    out: list[Outgoing] = []
    if a.stage == "end":
        out.append(desired.issue(fleet, s, dev, active, "install", rid, channel=channel))
        return out, dev.desired_seq
    cand = s.get(Bundle, a.bundle)
    if cand is None:
        log.warning("rollout %s: candidate bundle %s unknown", rid, a.bundle)
        return None
    doc = desired_for(a.stage, a.bundle, policy.stages)
    out.extend(bundles.ensure_published(fleet, s, cand))
    out.append(
        desired.issue(fleet, s, dev, active, "install", rid, cand, doc.shadow_sample, doc.extra, channel=channel)
    )
    return out, dev.desired_seq
