"""The thin shell around :mod:`hub.rollout`: load state from the registry, gather events,
call ``advance``, carry out its actions (sign + publish desired docs, raise alerts), save.

When it runs:

* ``create`` (API/CLI): a new rollout row, then a full run (opens the canary cohort);
* ``on_reports`` (ingest worker, after a batch commits): install reports whose
  ``desired_seq`` matches a rollout row, as ``InstallReport`` events;
* ``converge`` (ingest worker, API): devices that appeared, came online or changed group/tags,
  as ``DeviceSeen`` events for the newest rollout whose target matches them;
* ``follow_up``: the ingest worker's way to do both in one run per rollout, for one batch or,
  while it is behind, several (:mod:`hub.followups`);
* ``tick`` (ticker thread, every ``config.tick`` s): every running/paused rollout with
  ``Health`` for its issued and installed devices (timeouts, soak, gates); this is also when a
  device waiting for its maintenance window is issued once the window opens (and at once
  after an operator sets or clears a window: the API runs a tick);
* ``command`` (API/CLI): approve / pause / resume / cancel / rollback.

Every entry point runs inside :func:`_exclusive`: ``fleet.rollout_lock`` so seq allocation and
state writes never interleave, a transaction opened with ``hub.db.rollout_section`` (the same
for hubs sharing a database), committed before its messages are published. Each calls the pure
machine one way, through :func:`_run` (load, gather events, ``advance``, carry out, save).
Every run adds a ``WindowClosed`` event for each of its devices whose group's maintenance
window (:mod:`hub.groups`) is closed now, unless the rollout's policy ignores windows.
A device follows one rollout at a time *per model channel* (protocol.channels; a rollout
targets one, ``default`` unless named): the newest non-terminal one of that channel that targets
it; creating a rollout cancels the device's row in older ones of its channel (``superseded``)
if it has not installed yet. A report of one of those rows still queued in ingest then (matched
by its ``desired_seq``) is still the older rollout's event: a committed install records the row
``installed`` (hub.rollout rule 3).
The rollout sees the device's active bundle on its channel and its documents change only that
channel's entry (hub.desired).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from protocol.channels import DEFAULT
from protocol.errors import BadPayload
from protocol.messages import Report
from protocol.topics import check_digest

from . import alerting, bundles, channels, desired, evidence, groups, rollout_rows, staging, tallies
from .compat import stored_inventory
from .db import rollout_section
from .errors import Conflict, Invalid, NotFound
from .fleet import Fleet, new_id
from .models import Bundle, Device, Rollout, RolloutDevice
from .rollout import (
    COMMAND_PHASES,
    COMMANDS,
    SUPERSEDED,
    TERMINAL_PHASES,
    Alert as AlertAction,
    Command,
    DeviceSeen,
    Event,
    InstallReport,
    Issue,
    IssueStage,
    Policy,
    PolicyError,
    RolloutState,
    WindowClosed,
    advance,
    cohort_sizes,
    command_applies,
    moved_by,
)
from .targets import Target
from .transport import Outgoing

log = logging.getLogger(__name__)


# ---- observations --------------------------------------------------------------------------------
def _seen(d: Device, channel: str = DEFAULT) -> DeviceSeen:
    inv = stored_inventory(d.id, d.inventory)
    return DeviceSeen(d.id, d.online, channels.active_on(d, channel), inv, d.agent_version)


def _owners(s: Session) -> list[tuple[Rollout, Target]]:
    """Non-terminal rollouts, newest first (the first whose target matches owns a device)."""
    rs = s.exec(
        select(Rollout).where(col(Rollout.phase).notin_(TERMINAL_PHASES)).order_by(col(Rollout.serial).desc())
    ).all()
    return [(r, Target.parse(r.target)) for r in rs]


# ---- the run -----------------------------------------------------------------------------------
@contextmanager
def _exclusive(fleet: Fleet) -> Iterator[tuple[Session, list[Outgoing]]]:
    """One rollout transaction: the lock (this process's, and on PostgreSQL every hub's), a
    session and the list the runs append their messages to; committed, then published. An
    exception rolls the transaction back and publishes nothing."""
    out: list[Outgoing] = []
    with fleet.rollout_lock, fleet.session() as s:
        rollout_section(s)
        yield s, out
        s.commit()
        rollout_rows.commit_kept(fleet, s)
    fleet.publish(out)


def _run(
    fleet: Fleet,
    s: Session,
    r: Rollout,
    events: Sequence[Event],
    out: list[Outgoing],
    observe: bool,
    owners: list[tuple[Rollout, Target]] | None = None,
) -> RolloutState:
    now = fleet.clock()
    policy = Policy.from_dict(r.policy)
    st, rows = rollout_rows.load(fleet, s, r)
    evs: list[Event] = [*events, *rollout_rows.held_elsewhere(s, r, rows)]
    if observe:
        owners = owners if owners is not None else _owners(s)
        tgt = Target.parse(r.target)
        for d in s.exec(select(Device)).all():
            if d.id in rows:
                evs.append(_seen(d, r.channel))
            elif r.phase not in TERMINAL_PHASES and tgt.matches(d) and channels.owner(owners, d, r.channel) is r:
                evs.append(_seen(d, r.channel))
    if not policy.ignore_windows:
        ids = [*rows, *(e.device for e in evs if isinstance(e, DeviceSeen))]
        evs.extend(WindowClosed(d, t) for d, t in groups.closed_for(s, ids, now).items())
    if r.phase == "running" or any(isinstance(e, Command) for e in evs):
        # every decision that can open a cohort sees the gates' evidence
        reporting = {e.device for e in evs if isinstance(e, InstallReport)}
        if fleet.gate_windows is None:
            fleet.gate_windows = evidence.WindowCache(on_count=fleet.metrics.gate_windows_held.set)
        evs.extend(evidence.health(s, r, st, rows, reporting, fleet.recovery_periods(), fleet.gate_windows))
        evs.extend(staging.evidence(s, r, st, rows))
    new, actions = advance(st, evs, now, policy)
    seqs: dict[str, int] = {}
    targets = [a.device for a in actions if isinstance(a, Issue)]
    devices = {
        d.id: d
        for i in range(0, len(targets), 5000)
        for d in s.exec(select(Device).where(col(Device.id).in_(targets[i : i + 5000]))).all()
    }
    desired.preload(s, [a.device for a in actions if isinstance(a, (Issue, IssueStage))])
    rows_of: dict[str, Bundle | None] = {}
    for a in actions:
        if isinstance(a, Issue):
            dev = devices.get(a.device)
            if dev is None:
                continue
            if a.bundle and a.bundle not in rows_of:
                rows_of[a.bundle] = s.get(Bundle, a.bundle)
            b = rows_of.get(a.bundle) if a.bundle else None
            action = a.action if b is not None or a.action == "idle" else "idle"
            if b is not None:
                out.extend(bundles.ensure_published(fleet, s, b))
            out.append(desired.issue(fleet, s, dev, b, action, r.id, channel=r.channel))
            seqs[a.device] = dev.desired_seq
        elif isinstance(a, IssueStage):
            sent = staging.issue(fleet, s, a, policy, r.id, r.channel)
            if sent is not None:
                out.extend(sent[0])
                seqs[a.device] = sent[1]
        elif isinstance(a, AlertAction):
            alerting.record(fleet, s, a.kind, a.severity, a.message, a.detail, now, bundle=r.bundle, rollout=r.id)
            log.warning("rollout %s: %s", r.id, a.message)
    s.flush()  # device rows (seq) before the bulk rollout-row writes
    rollout_rows.save(s, r, rows, new, seqs, now, before=st)
    if (new.phase in TERMINAL_PHASES or new.phase == "completed") and fleet.gate_windows is not None:
        fleet.gate_windows.forget(r.id)  # its gates judge no more (hub.rollout: the last judgement stands)
    return new


def create(
    fleet: Fleet,
    digest: str,
    target: Target | Any,
    policy: dict[str, Any] | None = None,
    actor: str = "api",
    channel: str = DEFAULT,
) -> dict[str, Any]:
    """A new rollout of bundle ``digest`` to ``target`` (a :class:`Target` or its JSON form) on
    model ``channel``, issued at once to its first cohort. Raises Invalid (bad digest, target,
    policy or channel)."""
    try:
        check_digest(digest)
    except BadPayload as exc:
        raise Invalid("bundle", str(exc)) from None
    target = target if isinstance(target, Target) else Target.parse(target)
    try:
        pol = Policy.from_dict(policy or {})
    except PolicyError as exc:
        raise Invalid("policy", str(exc)) from None
    channels.check(channel)
    with _exclusive(fleet) as (s, out):
        bundles.get_row(fleet, s, digest)
        now = fleet.clock()
        serial = (s.exec(select(func.max(Rollout.serial))).one() or 0) + 1
        r = Rollout(
            id=new_id(),
            serial=serial,
            bundle=digest,
            channel=channel,
            target=target.to_dict(),
            policy=pol.to_dict(),
            phase="running",
            cohort=-1,
            created=now,
            updated=now,
            created_by=actor,
            cohort_started=now,
        )
        s.add(r)
        ids = [d.id for d in s.exec(select(Device)).all() if target.matches(d)]
        t = RolloutDevice.__table__  # type: ignore[attr-defined]
        same = select(Rollout.id).where(Rollout.channel == channel)
        for i in range(0, len(ids), 5000):  # a device follows the newest rollout: older rows stop here
            s.connection().execute(
                update(t)
                .where(
                    t.c.device_id.in_(ids[i : i + 5000]),
                    t.c.rollout_id != r.id,
                    t.c.rollout_id.in_(same),  # of the same channel: the others go on
                    t.c.state.in_(("pending", "staging", "issued", "installing")),
                )
                .values(state="cancelled", reason=f"{SUPERSEDED} {r.id}", updated=now)
            )
        older = update(Rollout).where(col(Rollout.channel) == channel, col(Rollout.id) != r.id)
        s.connection().execute(older.values(rows_version=col(Rollout.rows_version) + 1))  # their rows moved
        s.flush()
        on = {"channel": channel} if channel != DEFAULT else {}
        fleet.audit(
            s, actor, "rollout.create", r.id, bundle=digest, devices=target.to_dict(), policy=pol.to_dict(), **on
        )
        _run(fleet, s, r, [], out, observe=True)
        rid = r.id
    log.info("rollout %s of %s created by %s: %d messages", rid, digest[:12], actor, len(out))
    return status(fleet, rid)


def command(fleet: Fleet, rid: str, cmd: str, actor: str, devices: Sequence[str] = ()) -> dict[str, Any]:
    """``devices``: for ``retry`` only, the devices to retry (none: every failed one)."""
    if cmd not in COMMANDS:
        raise Invalid("command", f"{cmd!r} is not one of {COMMANDS}")
    with _exclusive(fleet) as (s, out):
        r = s.get(Rollout, rid)
        if r is None:
            raise NotFound("rollout", rid)
        if not command_applies(cmd, r.phase):
            raise Conflict(f"rollout {rid} is {r.phase}; {cmd} needs one of {COMMAND_PHASES[cmd]}")
        _refuse_if_all_held_elsewhere(s, r, cmd, devices)
        fleet.audit(s, actor, f"rollout.{cmd}", rid, **({"devices": list(devices)} if devices else {}))
        _run(fleet, s, r, [Command(cmd, actor, tuple(devices))], out, observe=False)
    tallies.forget(fleet)  # the answer shows what the command changed, not a count kept from before it
    return status(fleet, rid)


def _refuse_if_all_held_elsewhere(s: Session, r: Rollout, cmd: str, devices: Sequence[str]) -> None:
    """A rollback or retry whose every device a newer rollout of the channel holds would do
    nothing but say it did (rule 1b leaves them alone): refused, naming the newer rollout."""
    if cmd not in ("rollback", "retry"):
        return
    t = RolloutDevice
    q = select(t.device_id, t.state, t.attempts).where(t.rollout_id == r.id)
    moved = {d for d, state, attempts in s.exec(q).all() if moved_by(cmd, state, attempts)}
    if cmd == "retry" and devices:
        moved &= set(devices)
    held = rollout_rows.held_elsewhere(s, r, moved)
    if moved and len(held) == len(moved):
        newer = ", ".join(sorted({e.rollout for e in held}))
        raise Conflict(
            f"rollout {r.id}: all {len(moved)} device(s) a {cmd} would move are held by newer rollout {newer}"
            f" of channel {r.channel!r}; {cmd} that rollout instead"
        )


def on_reports(fleet: Fleet, reports: Sequence[Report]) -> None:
    """Install reports matched to the rollout row that issued their ``desired_seq``."""
    follow_up(fleet, reports, ())


def converge(fleet: Fleet, device_ids: Sequence[str]) -> None:
    """Devices that appeared, came back or changed group/tags: tell the rollout that owns them."""
    follow_up(fleet, (), device_ids)


def follow_up(fleet: Fleet, reports: Sequence[Report], device_ids: Sequence[str]) -> None:
    """Both of the above in one transaction and one run per rollout, the reports' events first
    (ingest after a batch, or after several while it is behind: hub.followups)."""
    if not reports and not device_ids:
        return
    with _exclusive(fleet) as (s, out):
        per = _report_events(s, reports)
        for rid, evs in _seen_events(s, device_ids).items():
            per.setdefault(rid, []).extend(evs)
        for rid, evs in per.items():
            r = s.get(Rollout, rid)
            if r is not None:
                _run(fleet, s, r, evs, out, observe=False)


def _report_events(s: Session, reports: Sequence[Report]) -> dict[str, list[Event]]:
    """Each report whose (device, desired_seq) a rollout row issued, as that rollout's event: the
    rows are read in pages of keys, not one query a report (the ingest worker's hot path)."""
    keys = sorted({(rep.device, rep.desired_seq) for rep in reports if rep.desired_seq > 0})
    owner: dict[tuple[str, int], str] = {}
    t = RolloutDevice
    for i in range(0, len(keys), 500):
        page = keys[i : i + 500]
        q = select(t.device_id, t.seq, t.rollout_id).where(
            col(t.device_id).in_(sorted({d for d, _ in page})), col(t.seq).in_(sorted({sq for _, sq in page}))
        )
        owner.update({(d, sq): rid for d, sq, rid in s.exec(q).all()})
    by_rollout: dict[str, list[Event]] = {}
    for rep in reports:
        rid = owner.get((rep.device, rep.desired_seq))
        if rid is None:
            continue
        by_rollout.setdefault(rid, []).append(
            InstallReport(
                rep.device,
                rep.stage,
                rep.status,
                rep.reason,
                rep.detail,
                rep.hold.until if rep.hold else 0,
                rep.hold.reason if rep.hold else "",
            )
        )
    return by_rollout


def _seen_events(s: Session, device_ids: Sequence[str]) -> dict[str, list[Event]]:
    """Each device as an event of every rollout it belongs to or whose target it matches (the
    newest owner per channel), and of a finished rollout still rolling it back. A few queries
    for the whole list, not two a device (a batch of new devices touches hundreds at once)."""
    if not device_ids:
        return {}
    ids = sorted(set(device_ids))
    owners = _owners(s)
    devices: dict[str, Device] = {}
    members: set[tuple[str, str]] = set()  # (rollout, device)
    rolling_back: dict[str, list[str]] = {}  # device -> rollouts rolling it back
    for i in range(0, len(ids), 500):
        page = ids[i : i + 500]
        devices.update((d.id, d) for d in s.exec(select(Device).where(col(Device.id).in_(page))).all())
        rows = s.exec(
            select(RolloutDevice.rollout_id, RolloutDevice.device_id, RolloutDevice.state).where(
                col(RolloutDevice.device_id).in_(page)
            )
        ).all()
        members.update((rid, did) for rid, did, _ in rows)
        for rid, did, state in rows:
            if state == "rolling_back":
                rolling_back.setdefault(did, []).append(rid)
    per: dict[str, list[Event]] = {}
    for did in device_ids:
        d = devices.get(did)
        if d is None:
            continue
        owned: set[str] = set()  # channels whose owner is found (owners are newest first)
        for r, tgt in owners:
            if r.channel in owned:
                continue
            matches = tgt.matches(d)
            if (r.id, d.id) in members or matches:
                per.setdefault(r.id, []).append(_seen(d, r.channel))
            if matches:
                owned.add(r.channel)
        # a finished (rolled back) rollout still settles the devices it is rolling back
        for rid in rolling_back.get(did, []):
            evs = per.setdefault(rid, [])
            if not any(isinstance(e, DeviceSeen) and e.device == did for e in evs):
                ro = s.get(Rollout, rid)
                evs.append(_seen(d, ro.channel if ro is not None else DEFAULT))
    return per


def tick(fleet: Fleet) -> None:
    with _exclusive(fleet) as (s, out):
        owners = _owners(s)
        for r, _ in owners:
            # device changes arrive through converge() (status, group/tag edits) as they happen;
            # the tick only drives time (timeouts, soak) and the gates' evidence
            if r.phase in ("running", "paused", "awaiting_approval"):
                _run(fleet, s, r, [], out, observe=False, owners=owners)


# ---- read side -----------------------------------------------------------------------------------
def counts(s: Session, rid: str) -> dict[str, int]:
    q = select(RolloutDevice.state, func.count()).where(RolloutDevice.rollout_id == rid).group_by(RolloutDevice.state)
    return {state: n for state, n in s.exec(q).all()}


def _public(r: Rollout, c: dict[str, int]) -> dict[str, Any]:
    policy = r.policy or {}
    eligible = sum(n for k, n in c.items() if k != "incompatible")
    try:
        sizes = cohort_sizes(policy.get("cohorts") or ["100%"], eligible)
    except PolicyError:
        sizes = []
    return {
        "id": r.id,
        "bundle": r.bundle,
        "channel": r.channel,
        "target": r.target,
        "policy": policy,
        "phase": r.phase,
        "cohort": r.cohort,
        "cohort_sizes": sizes,
        "soak_started": r.soak_started,
        "gates": r.gates,
        "reason": r.reason,
        "created": r.created,
        "updated": r.updated,
        "created_by": r.created_by,
        "counts": c,
        "total": sum(c.values()),
    }


def status(
    fleet: Fleet, rid: str, limit: int = 1000, offset: int = 0, state: str | None = None, after: str | None = None
) -> dict[str, Any]:
    """The rollout, its counts (:func:`hub.tallies.tally`: a few seconds old from 5,000
    devices, ``counted_at`` says when) and one page of its devices by id, after ``after``."""

    def count() -> dict[str, int]:
        with fleet.session() as s:
            return counts(s, rid)

    with fleet.session() as s:
        r = s.get(Rollout, rid)
        if r is None:
            raise NotFound("rollout", rid)
        q = select(RolloutDevice).where(RolloutDevice.rollout_id == rid)
        if state:
            q = q.where(RolloutDevice.state == state)
        if after is not None:
            q = q.where(col(RolloutDevice.device_id) > after)
        rows = s.exec(q.order_by(col(RolloutDevice.device_id)).offset(offset).limit(limit + 1)).all()
        more, rows = len(rows) > limit, rows[:limit]
        c = tallies.tally(fleet, ("rollout", rid), count, lambda c: sum(c.values()))
        out = _public(r, c.value)
        out["has_more"], out["counted_at"] = more, int(c.counted_at)
        out["next_after"] = rows[-1].device_id if more else None
        out["devices"] = [
            {
                "device_id": x.device_id,
                "state": x.state,
                "cohort": x.cohort,
                "seq": x.seq,
                "attempts": x.attempts,
                "reason": x.reason,
                "updated": x.updated,
                "online": x.online,
                "from_bundle": x.from_bundle,
                "stage": x.stage,
                "stages": x.stages or {},
            }
            for x in rows
        ]
        out["limit"], out["offset"] = limit, offset
        out["waiting"] = _waiting(fleet, s, rid)
        return out


def _waiting(fleet: Fleet, s: Session, rid: str) -> list[dict[str, Any]]:
    """The rollout's devices waiting for their maintenance window, with when it opens (None:
    the window was cleared or opened; the next tick issues the device)."""
    q = select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == rid, RolloutDevice.state == "waiting")
    ids = list(s.exec(q.order_by(col(RolloutDevice.device_id))).all())
    if not ids:
        return []
    now = fleet.clock()
    closed = groups.closed_for(s, ids, now)
    group_of = groups.groups_of(s, ids)
    return [{"device_id": d, "group": group_of.get(d, ""), "opens_at": closed.get(d)} for d in ids]


def listing(fleet: Fleet, limit: int = 50, offset: int = 0, phase: str | None = None) -> dict[str, Any]:
    with fleet.session() as s:
        q = select(Rollout)
        if phase:
            q = q.where(Rollout.phase == phase)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows = s.exec(q.order_by(col(Rollout.serial).desc()).offset(offset).limit(limit)).all()
        return {"items": [_public(r, counts(s, r.id)) for r in rows], "total": total, "limit": limit, "offset": offset}
