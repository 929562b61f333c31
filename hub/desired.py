"""Desired documents: the next seq for a device, signed by the online key, stored byte for byte
(hub.models.DesiredDoc) and published retained; republished on every broker connect. An install
names a delta from the device's active bundle when there is one worth sending (hub.deltas), and
every bundle it names carries its device view (hub.views) when the device's agent announced it
installs one; the delta then goes from the active bundle's view to the target's. An agent that
announced it reads chunk plans by reference gets each full archive's chunk list as a hash
(protocol.planref): its document shrinks from ~6.5 kB to ~1 kB for a 4 MB bundle.

Model channels (protocol.channels): a document is issued for one channel; every other channel's
entry is copied from the device's previous document unchanged (the same seq, so the device starts
no job for them), and the default channel's fields keep their ``since``. A device that only ever
had default-channel rollouts gets the same documents as before channels existed. Deltas are
computed against the device's active default bundle, so only default-channel installs carry one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlmodel import Session, col, select

from protocol import planref
from protocol.channels import DEFAULT
from protocol.errors import ProtocolError
from protocol.messages import BundleRef, ChannelDesired, Desired, parse_desired_payload
from protocol.signing import Envelope
from protocol.topics import Kind, Topic

from . import bundles, deltas, views
from .bundles import bundle_ref
from .fleet import Fleet
from .models import (
    Bundle,
    DesiredDoc,
    Device,
)
from .transport import Outgoing

log = logging.getLogger(__name__)

# Session.info: each device preload() read -> its document, or None where it has none. Held
# here, not looked up again: the session's identity map keeps an object only while something
# refers to it
_HELD = "edgefleet.desired.held"


def issue(
    fleet: Fleet,
    s: Session,
    d: Device,
    b: Bundle | None,
    action: str,
    rollout: str | None,
    shadow: Bundle | None = None,
    shadow_sample: float = 0.0,
    extra: Mapping[str, Any] | None = None,
    channel: str = DEFAULT,
) -> Outgoing:
    """Allocate the next seq for ``d``, sign a Desired, record it; caller commits then
    publishes the returned message (retained). ``shadow``/``shadow_sample``/``extra``: a rollout
    stage's candidate beside ``b`` and its request (hub.stages). ``channel``: the model channel
    the entry is for; the others are carried over from the previous document."""
    now = fleet.clock()
    seq = max(d.desired_seq, d.reported_desired_seq) + 1
    prev = _previous(s, d.id)
    entries = dict(prev.channels) if prev is not None else {}
    view, chunks = views.for_device(fleet, d, b) if b is not None else (None, [])
    shadow_view, more = views.for_device(fleet, d, shadow) if shadow is not None else (None, [])
    fleet.publish(chunks + more)  # retained before the document that names them (content-addressed: safe early)
    ref = bundle_ref(b, view) if b is not None else None
    shadow_ref = bundle_ref(shadow, shadow_view) if shadow is not None else None
    if views.announced(d, planref.FEATURE):  # the chunk list once on the broker, its hash here
        ref = ref.by_reference() if ref is not None else None
        shadow_ref = shadow_ref.by_reference() if shadow_ref is not None else None
    if channel == DEFAULT:
        delta, chunks = deltas.for_device(fleet, d, b, view) if b is not None and action == "install" else (None, [])
        fleet.publish(chunks)
        desired = Desired(
            device=d.id,
            seq=seq,
            issued=now,
            expires=now + fleet.config.desired_ttl,
            action=action,
            bundle=ref,
            rollout=rollout,
            shadow=shadow_ref,
            shadow_sample=shadow_sample,
            delta=delta,
            extra=dict(extra or {}),
            channels=entries,
        )
    else:
        entries[channel] = ChannelDesired(seq, action, ref, rollout, shadow_ref, shadow_sample, None, dict(extra or {}))
        old = prev.channel(DEFAULT) if prev is not None else None
        base = old if old is not None else Desired(d.id, 0, now, now, "idle", None)
        desired = Desired(
            device=d.id,
            seq=seq,
            issued=now,
            expires=now + fleet.config.desired_ttl,
            action=base.action,
            bundle=base.bundle,
            rollout=base.rollout,
            shadow=base.shadow,
            shadow_sample=base.shadow_sample,
            delta=base.delta,
            extra=dict(base.extra),
            since=base.seq,  # 0 when the default channel never had an entry
            channels=entries,
        )
    if channel == DEFAULT:  # the device row's desired_* describe the default channel
        d.desired_bundle = b.digest if b is not None else None
        d.desired_action = action
    return _record(fleet, s, d, desired)


def preload(s: Session, device_ids: Sequence[str]) -> None:
    """Before issuing to many devices in ``s``: their last documents in a query a page (kept in
    the session, where :func:`issue` finds them) and which of them have none, instead of two
    lookups a device (a rollout issuing to 1,000 new devices made 2,000)."""
    ids = sorted(set(device_ids))
    held: dict[str, DesiredDoc | None] = s.info.setdefault(_HELD, {})
    for i in range(0, len(ids), 1000):
        page = ids[i : i + 1000]
        held.update((d, None) for d in page if d not in held)
        held.update((doc.device, doc) for doc in s.exec(select(DesiredDoc).where(col(DesiredDoc.device).in_(page))))


def _record(fleet: Fleet, s: Session, d: Device, desired: Desired) -> Outgoing:
    """Sign ``desired`` with the online key, store it byte for byte as the device's document and
    its seq on the device row; the message to publish once the caller commits."""
    doc = DesiredDoc(device=d.id, seq=desired.seq, expires=desired.expires, payload=desired.seal([fleet.keys.online]))
    held: dict[str, DesiredDoc | None] = s.info.get(_HELD, {})
    if d.id not in held:  # not preloaded: looked up
        s.merge(doc)
    elif (old := held[d.id]) is None:  # preload() found none: an insert
        held[d.id] = doc
        s.add(doc)
    else:  # preload() read it: changed in place
        old.seq, old.expires, old.payload = doc.seq, doc.expires, doc.payload
        s.add(old)
    d.desired_seq = desired.seq
    s.add(d)
    return _message(doc)


def reissue_inline(fleet: Fleet, s: Session, d: Device, before: Mapping[str, Any] | None) -> list[Outgoing]:
    """A device whose agent announced :data:`protocol.planref.FEATURE` in inventory ``before``
    and no longer does (downgraded): an agent older than the feature refuses a document that
    names a chunk plan by reference as malformed, so its last document, when it names one, is
    issued again with every list inline. Each channel keeps the seq that last changed it (the
    default's as ``since``): the reports the agent sends name the seqs its rollouts issued, and a
    device that had accepted them starts nothing again. Caller commits, then publishes."""
    if views.announced(d, planref.FEATURE) or not views.lists(before, planref.FEATURE):
        return []
    prev = _previous(s, d.id)
    refs = (
        [prev.bundle, prev.shadow, *(r for e in prev.channels.values() for r in (e.bundle, e.shadow))] if prev else []
    )
    if prev is None or not any(r is not None and r.plan_ref is not None for r in refs):
        return []
    plans = {
        b.archive_sha256: bundles.archive_plan(b)
        for b in s.exec(
            select(Bundle).where(col(Bundle.archive_sha256).in_({r.archive.sha256 for r in refs if r is not None}))
        ).all()
    }

    def inline(r: BundleRef | None) -> BundleRef | None:
        if r is None or r.plan_ref is None:
            return r
        plan = plans.get(r.archive.sha256)
        if plan is None:  # the bundle row is gone (deleted): the reference stays, the agent reports it
            log.error("desired document of %s names archive %s, no bundle holds it", d.id, r.archive.sha256[:12])
            return r
        return replace(r, archive=plan, plan_ref=None)

    now = fleet.clock()
    seq = max(d.desired_seq, d.reported_desired_seq, prev.seq) + 1
    desired = replace(
        prev,
        seq=seq,
        issued=now,
        expires=now + fleet.config.desired_ttl,
        bundle=inline(prev.bundle),
        shadow=inline(prev.shadow),
        since=prev.seq if prev.since is None else prev.since,
        channels={k: replace(e, bundle=inline(e.bundle), shadow=inline(e.shadow)) for k, e in prev.channels.items()},
    )
    log.warning(
        "device %s no longer reads chunk plans by reference (agent %s): desired seq %d issued again inline as seq %d",
        d.id,
        d.agent_version or "?",
        prev.seq,
        seq,
    )
    return [_record(fleet, s, d, desired)]


def _previous(s: Session, device: str) -> Desired | None:
    """The device's last document as issued (our own signed bytes), for its channel entries."""
    held: dict[str, DesiredDoc | None] = s.info.get(_HELD, {})
    doc = held[device] if device in held else s.get(DesiredDoc, device)
    if doc is None:
        return None
    try:
        return parse_desired_payload(Envelope.parse(doc.payload).payload)
    except ProtocolError as exc:  # written by this hub; unreadable means a bug, not an attack
        log.error("previous desired document of %s unreadable, its channel entries are dropped: %s", device, exc)
        return None


def _message(doc: DesiredDoc) -> Outgoing:
    """A stored document as it is published: its own signed bytes, retained."""
    return Outgoing(str(Topic.for_device(Kind.DESIRED, doc.device)), doc.payload, retain=True, qos=1, kind="desired")


REPUBLISH_PAGE = 1_000  # documents read and handed to the broker at a time on a connect


def republish(fleet: Fleet, go_on: Callable[[], bool] | None = None, pause_s: float = 0.1) -> int:
    """Every device's last desired document, unexpired, retained again (same bytes, same
    seq: a device that has it sees a replay and ignores it). Called on every connect to
    the broker that did not find the hub's session kept: a broker restarted without its
    retained messages forgets them, and a device that was offline then would otherwise never
    hear of its rollout.

    In pages of :data:`REPUBLISH_PAGE` (by device id). Before each page after the first it
    waits while the hub is over :data:`PENDING_HOLD_BACKLOG` messages behind, as the pending
    resend does: at 10,000 devices a reconnect sent 10,000 documents into a queue already
    behind, on a broker that was the bottleneck (docs/scale.md). ``go_on`` is asked while
    waiting and between pages; False stops it (a newer connection took over, or the hub
    stops), and what was not sent is left to the next connect or the pending resend."""
    now = fleet.clock()
    sent, after = 0, ""

    def may_go() -> bool:  # False once told to stop; waits while the hub is behind (not before the first page)
        while go_on is None or go_on():
            if not sent or fleet.publisher.backlog() <= PENDING_HOLD_BACKLOG:
                return True
            time.sleep(pause_s)
        log.info("republish stopped after %d desired documents", sent)
        return False

    while may_go():
        q = (
            select(DesiredDoc)
            .where(DesiredDoc.expires > now, col(DesiredDoc.device) > after)
            .order_by(col(DesiredDoc.device))
            .limit(REPUBLISH_PAGE)
        )
        with fleet.session() as s:
            docs = s.exec(q).all()
            out = [_message(doc) for doc in docs]
            after = docs[-1].device if docs else after
        if not out:
            break
        fleet.publish(out)
        sent += len(out)
        if len(out) < REPUBLISH_PAGE:
            break
    if sent:
        log.info("republished %d desired documents (retained)", sent)
    return sent


PENDING_AFTER_S = 10  # a document no device acknowledged this long after it was issued is sent again
PENDING_MAX_RESENDS = 3  # ... at most this many times (a device that refuses it says so in a report)
PENDING_HOLD_BACKLOG = 1_000  # ... and not while the hub itself is this many messages behind
PENDING_MAX_PER_SCAN = 1_000  # ... and at most this many a scan, the least resent and oldest first


def republish_pending(fleet: Fleet) -> int:
    """Documents an online device has not acknowledged (neither a report nor its status names
    their seq) though they were issued over :data:`PENDING_AFTER_S` ago, published again: same
    bytes, retained. A rollout transaction commits its documents, then publishes them
    (hub.rollouts), so a hub replica killed -9 between the two leaves them in the database only,
    and the device would hear nothing until its install timed out. Each (device, seq) is sent
    again at most :data:`PENDING_MAX_RESENDS` times by this process. Run by the ticker.

    Held while the hub is over :data:`PENDING_HOLD_BACKLOG` messages behind (its ingest queue
    plus what waits to be published): the acknowledgements it looks for may be in that queue
    unread, and the documents it issued may not have gone out yet. A 10,000-device run sent
    each document four times that way (docs/scale.md). At most :data:`PENDING_MAX_PER_SCAN` a
    scan: a fleet too busy to acknowledge (its devices or the broker behind, which the hub cannot
    see) is not sent every document again at once; the scan reads keys, then only the payloads
    it sends."""
    behind = fleet.publisher.backlog()
    if behind > PENDING_HOLD_BACKLOG:
        log.info("unacknowledged desired documents not sent again yet: the hub is %d messages behind", behind)
        return 0
    now = fleet.clock()
    issued_before = now - PENDING_AFTER_S + fleet.config.desired_ttl  # expires = issued + desired_ttl
    q = (
        select(DesiredDoc.device, DesiredDoc.seq, DesiredDoc.expires)
        .join(Device, col(Device.id) == col(DesiredDoc.device))
        .where(
            col(Device.online),
            col(Device.reported_desired_seq) < col(DesiredDoc.seq),
            col(DesiredDoc.expires) > now,
            col(DesiredDoc.expires) <= issued_before,
        )
    )
    out: list[Outgoing] = []
    with fleet.session() as s:
        due = [
            (fleet.pending_resent.get((device, seq), 0), expires, device, seq)
            for device, seq, expires in s.exec(q).all()
            if fleet.pending_resent.get((device, seq), 0) < PENDING_MAX_RESENDS
        ]
        due.sort()
        if len(due) > PENDING_MAX_PER_SCAN:
            log.info("%d desired documents unacknowledged: %d sent again this scan", len(due), PENDING_MAX_PER_SCAN)
            due = due[:PENDING_MAX_PER_SCAN]
        want = {(device, seq) for _, _, device, seq in due}
        docs = s.exec(select(DesiredDoc).where(col(DesiredDoc.device).in_([d for d, _ in want]))).all()
        for doc in docs:
            key = (doc.device, doc.seq)
            if key not in want:  # a newer document was issued since the keys were read
                continue
            fleet.pending_resent[key] = fleet.pending_resent.get(key, 0) + 1
            out.append(_message(doc))
    if len(fleet.pending_resent) > 100_000:  # forget the oldest half: a bound, not a schedule
        for k in list(fleet.pending_resent)[:50_000]:
            del fleet.pending_resent[k]
    fleet.publish(out)
    if out:
        log.info(
            "published %d unacknowledged desired documents again: %s", len(out), ", ".join(m.topic for m in out[:5])
        )
    return len(out)
