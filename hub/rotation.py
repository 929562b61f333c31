"""What the hub does when its online key changes (``edgefleet-hub keys rotate``).

Devices trust only the targets keys of their newest root. When the hub holds anything signed
by another key than its online key (:func:`stale`: checked when it loads rotated keys while
running and on every connect to the broker, so a hub restarted after the rotation does it
too), everything it signed with the old key must be signed again, or devices refuse it:

1. every stored bundle's manifest, signed by the new key alone (same payload, so same digest)
   and its archive rebuilt (new archive hash; the chunks are published again when a document
   names the bundle);
2. those manifests published retained on ``ef/v1/bundle/{digest}/manifest``: an agent replaces
   the manifest of a slot it holds, so the model it serves still verifies when it restarts;
3. the new root, retained on ``ef/v1/root``;
4. every device's unexpired desired document issued again under the next seq, signed by the
   new key; a rollout row that issued the old document follows it to the new seq.

Published in that order. An agent whose root changes its targets keys forgets the desired seq
and issued time it learnt under the old keys (``protocol.signing.targets_rotated``): this is how
the fleet recovers from a compromised online key that fast-forwarded them (checklist S11). Its
one step for the operator is the rotation itself.
"""

from __future__ import annotations

import logging

from sqlmodel import select

from protocol.messages import parse_desired_payload
from protocol.signing import Envelope
from protocol.topics import Topic

from . import bundles, desired
from .db import rollout_section
from .fleet import Fleet
from .keys import HubKeys
from .models import Bundle, DesiredDoc, Device, Rollout, RolloutDevice
from .transport import Outgoing

log = logging.getLogger(__name__)


def _signed_by(env: bytes, keyid: str) -> bool:
    return any(sig.get("keyid") == keyid for sig in Envelope.parse(env).signatures)


def stale(fleet: Fleet) -> bool:
    """Does any stored manifest or unexpired desired document lack the online key's signature?"""
    kid, now = fleet.keys.online.keyid, fleet.clock()
    with fleet.session() as s:
        for digest in s.exec(select(Bundle.digest)).all():
            try:
                if not _signed_by(fleet.store.envelope(digest), kid):
                    return True
            except Exception as exc:  # noqa: BLE001 - a bundle row without files is not ours to fix
                log.error("bundle %s: cannot read its manifest (%s)", digest[:12], exc)
        return any(
            not _signed_by(p, kid) for p in s.exec(select(DesiredDoc.payload).where(DesiredDoc.expires > now)).all()
        )


def manifest_messages(fleet: Fleet, digests: list[str]) -> list[Outgoing]:
    out = []
    for digest in digests:
        try:
            env = fleet.store.envelope(digest)
        except Exception as exc:  # noqa: BLE001 - a bundle row without files must not stop the others
            log.error("bundle %s: no stored manifest to publish (%s)", digest[:12], exc)
            continue
        out.append(Outgoing(str(Topic.manifest(digest)), env, retain=True, qos=1, kind="manifest"))
    return out


def resign_all(fleet: Fleet) -> list[Outgoing]:
    """Steps 1, 2 and 4 under the rollout lock, committed; returns the messages in publishing
    order with the root (step 3) before the desired documents. Caller publishes."""
    now = fleet.clock()
    with fleet.rollout_lock, fleet.session() as s:
        rollout_section(s)
        rows = s.exec(select(Bundle)).all()
        for b in rows:
            try:
                stored = fleet.store.resign(b.digest, fleet.keys.online)
            except Exception as exc:  # noqa: BLE001 - as in stale(): skip, logged
                log.error("bundle %s: cannot sign it again (%s)", b.digest[:12], exc)
                continue
            if stored.plan.sha256 != b.archive_sha256:
                b.archive_sha256, b.size = stored.plan.sha256, stored.plan.size
                b.chunk_size, b.chunks, b.published = stored.plan.chunk_size, list(stored.plan.chunks), False
                s.add(b)
        by_digest = {b.digest: b for b in rows}
        chunks: list[Outgoing] = []
        docs: list[Outgoing] = []
        for doc in s.exec(select(DesiredDoc).where(DesiredDoc.expires > now)).all():
            d = s.get(Device, doc.device)
            if d is None:
                continue
            old = parse_desired_payload(Envelope.parse(doc.payload).payload)
            named = by_digest.get(old.bundle.digest) if old.bundle else None
            if named is not None:
                chunks += bundles.ensure_published(fleet, s, named)
            docs.append(desired.issue(fleet, s, d, named, old.action, old.rollout))
            if old.rollout:
                row = s.get(RolloutDevice, (old.rollout, d.id))
                if row is not None and row.seq == old.seq:
                    row.seq = d.desired_seq
                    s.add(row)
                    ro = s.get(Rollout, old.rollout)
                    if ro is not None:  # its rows moved: a hub that kept them reads them again
                        ro.rows_version = (ro.rows_version or 0) + 1
                        s.add(ro)
        fleet.audit(s, "hub", "keys.online_rotated", fleet.keys.online.keyid, bundles=len(rows), documents=len(docs))
        s.commit()
    log.info(
        "online key %s: %d bundle manifests and %d desired documents signed again",
        fleet.keys.online.keyid[:8],
        len(rows),
        len(docs),
    )
    return manifest_messages(fleet, sorted(by_digest)) + [root_message(fleet)] + chunks + docs


def root_message(fleet: Fleet) -> Outgoing:
    return Outgoing(str(Topic.root()), fleet.keys.root_bytes, retain=True, qos=1, kind="root")


def reload_keys(fleet: Fleet) -> bool:
    """Pick up a root rotated by ``edgefleet-hub keys rotate`` and publish it (retained on
    ``ef/v1/root``) so devices walk to it with ``protocol.signing.rotate_root``."""
    fresh = HubKeys.load(fleet.config.keys)
    if fresh.root.version == fleet.keys.root.version and fresh.online.keyid == fleet.keys.online.keyid:
        return False
    with fleet.rollout_lock:
        fleet.keys = fresh
    log.info("trust root v%d loaded (online key %s); publishing it", fresh.root.version, fresh.online.keyid[:8])
    fleet.publish(resign_all(fleet) if stale(fleet) else [root_message(fleet)])
    return True


def republish_manifests(fleet: Fleet) -> None:
    """On every broker connect, once keys were ever rotated: every bundle's manifest retained
    again (a broker that lost its retained messages forgets the re-signed ones too)."""
    if fleet.keys.root.version > 1:
        with fleet.session() as s:
            digests = list(s.exec(select(Bundle.digest)).all())
        fleet.publish(manifest_messages(fleet, digests))
