"""Desired documents: the next seq for a device, signed by the online key, stored byte for byte
(hub.models.DesiredDoc) and published retained; republished on every broker connect. An install
names a delta from the device's active bundle when there is one worth sending (hub.deltas)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session, select

from protocol.messages import Desired
from protocol.topics import Kind, Topic

from . import deltas
from .bundles import bundle_ref
from .fleet import Fleet
from .models import (
    Bundle,
    DesiredDoc,
    Device,
)
from .transport import Outgoing

log = logging.getLogger(__name__)


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
) -> Outgoing:
    """Allocate the next seq for ``d``, sign a Desired, record it; caller commits then
    publishes the returned message (retained). ``shadow``/``shadow_sample``/``extra``: a rollout
    stage's candidate beside ``b`` and its request (hub.stages)."""
    now = fleet.clock()
    seq = max(d.desired_seq, d.reported_desired_seq) + 1
    delta, chunks = deltas.for_device(fleet, d, b) if b is not None and action == "install" else (None, [])
    fleet.publish(chunks)  # retained before the document that names them (content-addressed: safe early)
    desired = Desired(
        device=d.id,
        seq=seq,
        issued=now,
        expires=now + fleet.config.desired_ttl,
        action=action,
        bundle=bundle_ref(b) if b is not None else None,
        rollout=rollout,
        shadow=bundle_ref(shadow) if shadow is not None else None,
        shadow_sample=shadow_sample,
        delta=delta,
        extra=dict(extra or {}),
    )
    payload = desired.seal([fleet.keys.online])
    s.merge(DesiredDoc(device=d.id, seq=seq, expires=desired.expires, payload=payload))
    d.desired_seq = seq
    d.desired_bundle = b.digest if b is not None else None
    d.desired_action = action
    s.add(d)
    return Outgoing(str(Topic.for_device(Kind.DESIRED, d.id)), payload, retain=True, qos=1, kind="desired")


def republish(fleet: Fleet) -> int:
    """Every device's last desired document, unexpired, retained again (same bytes, same
    seq: a device that has it sees a replay and ignores it). Called on every connect to
    the broker: a broker restarted without its retained messages forgets them, and a device
    that was offline then would otherwise never hear of its rollout."""
    now = fleet.clock()
    out: list[Outgoing] = []
    with fleet.session() as s:
        for doc in s.exec(select(DesiredDoc).where(DesiredDoc.expires > now)).all():
            out.append(
                Outgoing(
                    str(Topic.for_device(Kind.DESIRED, doc.device)), doc.payload, retain=True, qos=1, kind="desired"
                )
            )
    fleet.publish(out)
    if out:
        log.info("republished %d desired documents (retained)", len(out))
    return len(out)
