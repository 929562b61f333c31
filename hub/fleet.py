"""The hub's operations over the registry: bundles, devices, desired documents, rollouts.

:class:`Fleet` is what the API, the ingest worker and the CLI-run server share. It owns no
thread; callers (API request threads, the ingest worker, the ticker) call it and it does its
I/O (database, bundle store, publisher) inline. Decisions live in pure modules
(:mod:`hub.compat`, :mod:`hub.rollout`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import delete, func, or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from protocol.bundle import ChunkPlan, Requirements
from protocol.messages import BundleRef, Desired
from protocol.signing import Envelope
from protocol.sketch import LatencySketch, merge_counts
from protocol.topics import Kind, Topic, check_device_id, check_digest
from protocol.errors import BadPayload

from . import alerts, compat, credentials, drift, rotation
from .config import HubConfig
from .db import has_tag, session
from .errors import Denied, Invalid, NotFound
from .keys import HubKeys
from .metrics import HubMetrics
from .models import (Alert, AuditEntry, Build, Bundle, DesiredDoc, Device, EnrollToken, ModelName, ReportRecord, Rollout,
                     RolloutDevice, TelemetryWindow)
from .store import BundleStore, split_archive
from .transport import Outgoing, Publisher

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1", "localhost")

ACTIVE_PHASES = ("running", "paused", "awaiting_approval")
ALERT_SCAN_S = 30      # how often the ticker scans for offline / latency / drift alerts
RECOVERY_GRACE_S = 60  # after the broker connection is back, agents reconnect and resend
RECENT_S = 900         # "recent" telemetry for alerts


def now_s() -> int:
    return int(time.time())


def bundle_ref(b: Bundle) -> BundleRef:
    plan = ChunkPlan(b.size, b.archive_sha256, b.chunk_size, tuple(b.chunks))
    return BundleRef(b.digest, b.name, b.version, plan, Requirements.from_dict(b.requirements))


def bundle_public(b: Bundle) -> dict[str, Any]:
    return {"digest": b.digest, "name": b.name, "version": b.version, "revision": b.revision,
            "archive_sha256": b.archive_sha256, "size": b.size, "chunk_size": b.chunk_size,
            "chunks": len(b.chunks), "created": b.created, "uploaded": b.uploaded,
            "requirements": b.requirements, "model": b.model, "artifacts": b.artifacts}


def latency_summary(sketch: dict[str, Any]) -> dict[str, float | None]:
    try:
        s = LatencySketch.from_dict(sketch or {})
    except BadPayload:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None}
    p50, p95 = s.quantile(0.5), s.quantile(0.95)
    return {"p50_ms": p50 * 1000 if p50 is not None else None,
            "p95_ms": p95 * 1000 if p95 is not None else None,
            "mean_ms": s.mean * 1000 if s.mean is not None else None}


def device_public(d: Device, rollout_state: str | None = None) -> dict[str, Any]:
    active = ({"digest": d.active_digest, "name": d.active_name, "version": d.active_version}
              if d.active_digest else None)
    lat = latency_summary(d.latency)  # merged over the windows of d.latency_bundle
    return {
        "device_id": d.id, "online": d.online, "last_seen": d.last_seen, "state": d.state,
        "agent_version": d.agent_version, "group": d.group, "tags": list(d.tags or []),
        "inventory": d.inventory, "active_bundle": active,
        "staged_bundle": d.staged_digest,
        "desired": {"seq": d.desired_seq, "bundle": d.desired_bundle, "action": d.desired_action},
        "reported_desired_seq": d.reported_desired_seq,
        "rollout_state": rollout_state,
        "telemetry": {"windows": d.windows, "inferences": d.inferences, "errors": d.errors,
                      "tpu": d.tpu, "cpu": d.cpu, "cloud": d.cloud, **lat},
    }


@dataclass(frozen=True)
class Target:
    """Which devices a rollout names. Exactly one of the fields is set."""

    all: bool = False
    devices: tuple[str, ...] = ()
    group: str | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, obj: Any) -> "Target":
        if not isinstance(obj, dict):
            raise Invalid("target", f"must be an object like {{\"all\": true}}, got {obj!r:.80}")
        keys = {k for k, v in obj.items() if v not in (None, False, [], "")}
        if len(keys) != 1 or not keys <= {"all", "devices", "group", "tag"}:
            raise Invalid("target", f"needs exactly one of all/devices/group/tag, got {sorted(obj)}")
        if obj.get("all") is True:
            return cls(all=True)
        if "devices" in keys:
            devs = obj["devices"]
            if not isinstance(devs, list) or not all(isinstance(x, str) for x in devs):
                raise Invalid("target", "devices must be a list of device ids")
            try:
                return cls(devices=tuple(dict.fromkeys(check_device_id(x) for x in devs)))
            except BadPayload as exc:
                raise Invalid("target", str(exc)) from None
        if "group" in keys and isinstance(obj["group"], str):
            return cls(group=obj["group"])
        if "tag" in keys and isinstance(obj["tag"], str):
            return cls(tag=obj["tag"])
        raise Invalid("target", f"{obj!r:.80} is not a valid target")

    def to_dict(self) -> dict[str, Any]:
        if self.all:
            return {"all": True}
        if self.devices:
            return {"devices": list(self.devices)}
        if self.group is not None:
            return {"group": self.group}
        return {"tag": self.tag}

    def matches(self, d: Device) -> bool:
        if self.all:
            return True
        if self.devices:
            return d.id in self.devices
        if self.group is not None:
            return d.group == self.group
        return self.tag in (d.tags or [])


class Fleet:
    def __init__(self, config: HubConfig, engine: Engine, keys: HubKeys, store: BundleStore,
                 publisher: Publisher, metrics: HubMetrics, clock: Callable[[], int] = now_s) -> None:
        self.config = config
        self.engine = engine
        self.keys = keys
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self._last_scan = 0
        self.rollout_lock = threading.RLock()  # seq allocation and rollout state are read-modify-write
        self._recovery: deque[tuple[int, int]] = deque(maxlen=32)

    def note_recovery(self, down: int, up: int) -> None:
        """The hub's broker connection was down from ``down`` to ``up``: telemetry windows
        overlapping it (and the grace after) say more about the recovery than about a model,
        and rollout gates leave them out (hub.rollout, rule 6)."""
        self._recovery.append((down, up + RECOVERY_GRACE_S))
        log.info("broker connection was down %ds; rollout gates leave out windows from %d to %d",
                 up - down, down, up + RECOVERY_GRACE_S)

    def recovery_periods(self) -> list[tuple[int, int]]:
        return list(self._recovery)

    def session(self) -> Session:
        return session(self.engine)

    # ---- audit ---------------------------------------------------------------------------
    def audit(self, s: Session, actor: str, action: str, target: str, **detail: Any) -> None:
        s.add(AuditEntry(ts=self.clock(), actor=actor, action=action, target=target, detail=detail))

    # ---- bundles -------------------------------------------------------------------------
    def push_archive(self, data: bytes, actor: str = "api") -> dict[str, Any]:
        env, arts = split_archive(data)
        return self.push_bundle(env, arts, actor)

    def push_bundle(self, env: Envelope, arts: dict[str, bytes], actor: str = "api") -> dict[str, Any]:
        stored = self.store.put(env, arts, self.keys.online)
        with self.rollout_lock:  # two pushes of the same new bundle must not race for its row
            return self._register(stored, actor)

    def _register(self, stored: Any, actor: str) -> dict[str, Any]:
        m = stored.manifest
        with self.session() as s:
            row = s.get(Bundle, stored.digest)
            if row is None:
                model = s.get(ModelName, m.name)
                if model is None:
                    model = ModelName(name=m.name, latest_revision=0, created=self.clock())
                model.latest_revision += 1
                row = Bundle(digest=stored.digest, name=m.name, version=m.version,
                             revision=model.latest_revision, created=m.created, uploaded=self.clock(),
                             archive_sha256=stored.plan.sha256, size=stored.plan.size,
                             chunk_size=stored.plan.chunk_size, chunks=list(stored.plan.chunks),
                             requirements=m.requirements.to_dict(), model=m.model,
                             artifacts=[a.to_dict() for a in m.artifacts])
                s.add(model)
                s.add(row)
                s.add(Build(digest=stored.digest, report=self._json_artifact(stored.digest, m, "report"),
                            model_card=(self._artifact_text(stored.digest, m, "model_card") or "")[:200_000]))
                self.audit(s, actor, "bundle.push", stored.digest, name=m.name, version=m.version)
                try:
                    s.commit()
                except IntegrityError:  # another hub replica registered it first: same content
                    s.rollback()
                    row = self.bundle_row(s, stored.digest)
                else:
                    log.info("stored bundle %s@%s %s (%d bytes, %d chunks)", m.name, m.version,
                             stored.digest[:12], stored.plan.size, len(stored.plan.chunks))
            return {"digest": row.digest, "name": row.name, "version": row.version,
                    "archive_sha256": row.archive_sha256, "size": row.size, "revision": row.revision}

    def _artifact_text(self, digest: str, m: Any, role: str) -> str | None:
        a = m.artifact(role)
        data = self.store.artifact(digest, a.name) if a else None
        return data.decode("utf-8", "replace") if data is not None else None

    def _json_artifact(self, digest: str, m: Any, role: str) -> dict[str, Any]:
        import json
        text = self._artifact_text(digest, m, role)
        try:
            obj = json.loads(text) if text else {}
        except ValueError:
            return {}
        return obj if isinstance(obj, dict) else {}

    def bundle_row(self, s: Session, digest: str) -> Bundle:
        row = s.get(Bundle, digest)
        if row is None:
            raise NotFound("bundle", digest)
        return row

    def list_bundles(self, limit: int = 50, offset: int = 0, name: str | None = None) -> dict[str, Any]:
        with self.session() as s:
            q = select(Bundle)
            if name:
                q = q.where(Bundle.name == name)
            total = s.exec(select(func.count()).select_from(q.subquery())).one()
            rows = s.exec(q.order_by(col(Bundle.uploaded).desc(), col(Bundle.digest))
                          .offset(offset).limit(limit)).all()
            return {"items": [bundle_public(b) for b in rows], "total": total, "limit": limit, "offset": offset}

    def get_bundle(self, digest: str) -> dict[str, Any]:
        with self.session() as s:
            b = self.bundle_row(s, digest)
            out = bundle_public(b)
            build = s.get(Build, digest)
            out["report"] = build.report if build else {}
            out["model_card"] = build.model_card if build else ""
            return out

    def chunk_messages(self, b: Bundle, indexes: Iterable[int] | None = None) -> list[Outgoing]:
        out = []
        idx = range(len(b.chunks)) if indexes is None else sorted(set(indexes))
        for i in idx:
            if not 0 <= i < len(b.chunks):
                continue
            data = self.store.chunk(b.archive_sha256, i, b.chunk_size)
            out.append(Outgoing(str(Topic.chunk(b.archive_sha256, i)), data, retain=True, qos=1, kind="chunk"))
        return out

    # ---- devices -------------------------------------------------------------------------
    def list_devices(self, limit: int = 50, offset: int = 0, online: bool | None = None,
                     q: str | None = None, group: str | None = None, tag: str | None = None,
                     bundle: str | None = None) -> dict[str, Any]:
        with self.session() as s:
            query = select(Device)
            if online is not None:
                query = query.where(Device.online == online)
            if q:
                like = f"%{q}%"
                query = query.where(or_(col(Device.id).like(like), col(Device.active_name).like(like)))
            if group is not None:
                query = query.where(Device.group == group)
            if bundle:
                query = query.where(Device.active_digest == bundle)
            if tag:
                query = query.where(has_tag(s.get_bind().dialect.name, tag))
            total = s.exec(select(func.count()).select_from(query.subquery())).one()
            rows: Sequence[Device] = s.exec(query.order_by(col(Device.id)).offset(offset).limit(limit)).all()
            states = self._rollout_states(s, [d.id for d in rows])
            return {"items": [device_public(d, states.get(d.id)) for d in rows], "total": total,
                    "limit": limit, "offset": offset}

    def _rollout_states(self, s: Session, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        q = (select(RolloutDevice.device_id, RolloutDevice.state, Rollout.serial)
             .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
             .where(col(RolloutDevice.device_id).in_(ids)).order_by(col(Rollout.serial)))
        return {dev: state for dev, state, _ in s.exec(q).all()}

    def get_device(self, device_id: str, windows: int = 30) -> dict[str, Any]:
        with self.session() as s:
            d = s.get(Device, device_id)
            if d is None:
                raise NotFound("device", device_id)
            out = device_public(d, self._rollout_states(s, [d.id]).get(d.id))
            rows = s.exec(select(TelemetryWindow).where(TelemetryWindow.device == device_id)
                          .order_by(col(TelemetryWindow.window_end).desc()).limit(windows)).all()
            out["recent"] = self.summarise(s, rows, d.active_digest)
            out["rollouts"] = [
                {"rollout": r.rollout_id, "state": r.state, "seq": r.seq, "attempts": r.attempts,
                 "reason": r.reason, "cohort": r.cohort}
                for r in s.exec(select(RolloutDevice).where(RolloutDevice.device_id == device_id)).all()]
            return out

    def summarise(self, s: Session, rows: Sequence[TelemetryWindow], bundle: str | None) -> dict[str, Any]:
        """Merge telemetry windows of one bundle: counts, latency quantiles, drift verdicts."""
        rows = [r for r in rows if bundle is None or r.bundle == bundle]
        sketch = LatencySketch()
        counts = {"inferences": 0, "errors": 0, "tpu": 0, "cpu": 0, "cloud": 0}
        drift: dict[str, dict[str, list[list[int]]]] = {}
        for r in rows:
            try:
                sketch = sketch.merge(LatencySketch.from_dict(r.latency or {}))
            except BadPayload:
                pass
            for k in counts:
                counts[k] += getattr(r, k)
            for side, feats in (r.drift or {}).items():
                for name, bins in feats.items():
                    drift.setdefault(side, {}).setdefault(name, []).append(bins)
        out: dict[str, Any] = {"windows": len(rows), **counts,
                               **latency_summary(sketch.to_dict()), "drift": {}}
        if bundle:
            out["drift"] = self.drift_verdicts(s, bundle, drift)
        return out

    def drift_verdicts(self, s: Session, digest: str,
                       windows: dict[str, dict[str, list[list[int]]]]) -> dict[str, Any]:
        """Per-feature verdicts (:mod:`hub.drift`) of merged windows vs the bundle's baseline."""
        try:
            baseline = self.store.baseline(digest, self.store.manifest(digest))
        except (NotFound, OSError, BadPayload):
            baseline = None
        if not baseline:
            return {}
        merged = [{side: {name: merge_counts(*wins) for name, wins in feats.items()
                          if len({len(w) for w in wins}) == 1}
                   for side, feats in windows.items()}]
        try:
            report = drift.assess(baseline, merged)
        except BadPayload as exc:
            return {"error": str(exc)}
        return {k: v for k, v in report.to_dict()["features"].items()}

    def telemetry_summary(self, bundle: str | None = None, device: str | None = None, group: str | None = None,
                          since: int | None = None, until: int | None = None,
                          max_windows: int = 20_000) -> dict[str, Any]:
        """Merged windows matching the filters (bundle, device, group, window_end range):
        counts, latency quantiles and, for one bundle, drift verdicts. Sketches and bin counts
        merge exactly, so a fleet, a cohort or a device is summarised the same way."""
        with self.session() as s:
            q = select(TelemetryWindow)
            if bundle:
                q = q.where(TelemetryWindow.bundle == bundle)
            if device:
                q = q.where(TelemetryWindow.device == device)
            if group is not None:
                ids = select(Device.id).where(Device.group == group)
                q = q.where(col(TelemetryWindow.device).in_(ids))
            if since is not None:
                q = q.where(TelemetryWindow.window_end >= since)
            if until is not None:
                q = q.where(TelemetryWindow.window_end <= until)
            rows = s.exec(q.order_by(col(TelemetryWindow.window_end).desc()).limit(max_windows)).all()
            out = self.summarise(s, rows, bundle)
            out.update({"devices": len({r.device for r in rows}), "truncated": len(rows) >= max_windows,
                        "since": min((r.window_start for r in rows), default=None),
                        "until": max((r.window_end for r in rows), default=None)})
            return out

    def prune(self, retention_s: int) -> int:
        """Drop telemetry windows and reports older than ``retention_s`` (device totals stay)."""
        cutoff = self.clock() - retention_s
        with self.session() as s:
            tw, rr = TelemetryWindow.__table__, ReportRecord.__table__  # type: ignore[attr-defined]
            n = s.connection().execute(delete(tw).where(tw.c.received < cutoff)).rowcount
            s.connection().execute(delete(rr).where(rr.c.received < cutoff))
            s.commit()
        return int(n or 0)

    def set_device_meta(self, device_id: str, group: str | None, tags: list[str] | None,
                        actor: str) -> dict[str, Any]:
        with self.session() as s:
            d = s.get(Device, device_id)
            if d is None:
                raise NotFound("device", device_id)
            if group is not None:
                d.group = group
            if tags is not None:
                d.tags = list(dict.fromkeys(tags))
            s.add(d)
            self.audit(s, actor, "device.update", device_id, group=group, tags=tags)
            s.commit()
        self.converge([device_id])
        return self.get_device(device_id)

    # ---- enrollment and broker credentials --------------------------------------------------
    def create_enrollment(self, device_id: str, group: str = "", tags: Sequence[str] = (),
                          actor: str = "api") -> dict[str, Any]:
        """A one-time token the device trades for its identity (see hub.credentials)."""
        try:
            check_device_id(device_id)
        except BadPayload as exc:
            raise Invalid("device id", str(exc)) from None
        token = credentials.new_secret()
        now = self.clock()
        with self.session() as s:
            s.add(EnrollToken(token_hash=credentials.token_hash(token), device=device_id, group=group,
                              tags=list(dict.fromkeys(tags)), created=now, expires=now + self.config.enroll_ttl,
                              created_by=actor))
            self.audit(s, actor, "device.enroll", device_id, group=group, tags=list(tags))
            s.commit()
        return {"device_id": device_id, "token": token, "expires": now + self.config.enroll_ttl}

    def redeem_enrollment(self, token: str) -> dict[str, Any]:
        now = self.clock()
        password = credentials.new_secret()
        with self.session() as s:
            row = s.get(EnrollToken, credentials.token_hash(token))
            if row is None or row.used or row.expires <= now:
                raise Denied("enrollment token is unknown, already used or expired")
            row.used = now
            d = s.get(Device, row.device) or Device(id=row.device, created=now)
            d.enrolled = True
            d.mqtt_username = row.device
            d.mqtt_password_hash = credentials.password_hash(password)
            if row.group:
                d.group = row.group
            if row.tags:
                d.tags = list(row.tags)
            s.add(row)
            s.add(d)
            self.audit(s, f"device:{row.device}", "device.enrolled", row.device)
            s.commit()
            device_id = row.device
        self.write_broker_auth()
        return {"device_id": device_id, "broker": self.config.broker_for_devices,
                "mqtt": {"username": device_id, "password": password},
                "root": self.keys.root_bytes.decode()}

    def write_broker_auth(self) -> bool:
        """Rewrite passwd + acl from the registry and SIGHUP the broker. False if not configured."""
        if self.config.mqtt_auth_dir is None:
            return False
        url = self.config.broker_url
        with self.session() as s:
            users = [(d.mqtt_username, d.mqtt_password_hash) for d in
                     s.exec(select(Device).where(col(Device.mqtt_password_hash).is_not(None))).all()
                     if d.mqtt_username and d.mqtt_password_hash]
        if url.username and url.password:
            users.append((url.username, credentials.password_hash(url.password)))
        # over TLS the listener is the operator's (its certificates are not the hub's to name):
        # no edgefleet.conf, whose plain listener would take the TLS port
        conf = None if url.tls else credentials.render_broker_conf(
            self.config.mqtt_auth_dir, self.config.chunk_size, url.port, url.host if url.host in LOOPBACK else None)
        credentials.write_files(self.config.mqtt_auth_dir, credentials.render_passwd(users),
                                credentials.render_acl(url.username), conf)
        reloaded = credentials.reload_broker(self.config.broker_pid_file)
        log.info("broker credentials written for %d users%s", len(users), " (broker reloaded)" if reloaded else "")
        return True

    # ---- desired documents ---------------------------------------------------------------
    def issue(self, s: Session, d: Device, b: Bundle | None, action: str,
              rollout: str | None) -> Outgoing:
        """Allocate the next seq for ``d``, sign a Desired, record it; caller commits then
        publishes the returned message (retained)."""
        now = self.clock()
        seq = max(d.desired_seq, d.reported_desired_seq) + 1
        desired = Desired(device=d.id, seq=seq, issued=now, expires=now + self.config.desired_ttl,
                          action=action, bundle=bundle_ref(b) if b is not None else None, rollout=rollout)
        payload = desired.seal([self.keys.online])
        s.merge(DesiredDoc(device=d.id, seq=seq, expires=desired.expires, payload=payload))
        d.desired_seq = seq
        d.desired_bundle = b.digest if b is not None else None
        d.desired_action = action
        s.add(d)
        return Outgoing(str(Topic.for_device(Kind.DESIRED, d.id)), payload, retain=True, qos=1, kind="desired")

    def republish_desired(self) -> int:
        """Every device's last desired document, unexpired, retained again (same bytes, same
        seq: a device that has it sees a replay and ignores it). Called on every connect to
        the broker: a broker restarted without its retained messages forgets them, and a device
        that was offline then would otherwise never hear of its rollout."""
        now = self.clock()
        out: list[Outgoing] = []
        with self.session() as s:
            if self.keys.root.version > 1:  # manifests signed again since: see hub.rotation
                out += rotation.manifest_messages(self, list(s.exec(select(Bundle.digest)).all()))
            for doc in s.exec(select(DesiredDoc).where(DesiredDoc.expires > now)).all():
                out.append(Outgoing(str(Topic.for_device(Kind.DESIRED, doc.device)), doc.payload,
                                    retain=True, qos=1, kind="desired"))
        self.publish(out)
        if out:
            log.info("republished %d desired documents (retained)", len(out))
        return len(out)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if messages:
            self.publisher.publish(messages)
            for m in messages:
                self.metrics.published.labels(m.kind or "other").inc()

    def ensure_published(self, s: Session, b: Bundle) -> list[Outgoing]:
        """Chunks of ``b`` retained on the broker, once per bundle (repairs use FetchRequest)."""
        if b.published:
            return []
        b.published = True
        s.add(b)
        return self.chunk_messages(b)

    # ---- rollouts ------------------------------------------------------------------------
    def create_rollout(self, bundle: str, target: Any, policy: dict[str, Any] | None = None,
                       actor: str = "api") -> dict[str, Any]:
        from . import rollouts
        try:
            check_digest(bundle)
        except BadPayload as exc:
            raise Invalid("bundle", str(exc)) from None
        tgt = Target.parse(target)
        return rollouts.create(self, bundle, tgt, policy or {}, actor)

    def rollout_status(self, rid: str, limit: int = 1000, offset: int = 0,
                       state: str | None = None) -> dict[str, Any]:
        from . import rollouts
        return rollouts.status(self, rid, limit, offset, state)

    def list_rollouts(self, limit: int = 50, offset: int = 0, phase: str | None = None) -> dict[str, Any]:
        from . import rollouts
        return rollouts.listing(self, limit, offset, phase)

    def rollout_command(self, rid: str, command: str, actor: str) -> dict[str, Any]:
        from . import rollouts
        return rollouts.command(self, rid, command, actor)

    def converge(self, device_ids: Sequence[str]) -> None:
        from . import rollouts
        rollouts.converge(self, device_ids)

    def root_message(self) -> Outgoing:
        return Outgoing(str(Topic.root()), self.keys.root_bytes, retain=True, qos=1, kind="root")

    def reload_keys(self) -> bool:
        """Pick up a root rotated by ``edgefleet-hub keys rotate`` and publish it (retained on
        ``ef/v1/root``) so devices walk to it with ``protocol.signing.rotate_root``."""
        fresh = HubKeys.load(self.config.keys)
        if fresh.root.version == self.keys.root.version and fresh.online.keyid == self.keys.online.keyid:
            return False
        with self.rollout_lock:
            self.keys = fresh
        log.info("trust root v%d loaded (online key %s); publishing it", fresh.root.version, fresh.online.keyid[:8])
        self.publish(rotation.resign_all(self) if rotation.stale(self) else [self.root_message()])
        return True

    def tick(self) -> None:
        from . import rollouts
        try:
            self.reload_keys()
        except Exception as exc:  # a half-written keys dir must not stop rollouts
            log.error("could not reload keys from %s: %s", self.config.keys, exc)
        rollouts.tick(self)
        now = self.clock()
        if now - self._last_scan >= ALERT_SCAN_S:
            self._last_scan = now
            self.scan_alerts()
            self.prune(self.config.retention)

    def scan_alerts(self, rules: alerts.AlertRules | None = None) -> list[alerts.Raise | alerts.Resolve]:
        """Offline / latency-regression / drift alerts over recent telemetry (see hub.alerts)."""
        rules = rules or alerts.AlertRules(offline_after=self.config.offline_after)
        now = self.clock()
        with self.session() as s:
            devices = s.exec(select(Device)).all()
            recent: dict[str, list[TelemetryWindow]] = {}
            for w in s.exec(select(TelemetryWindow).where(TelemetryWindow.received >= now - RECENT_S)).all():
                recent.setdefault(w.device, []).append(w)
            open_rows = s.exec(select(Alert).where(Alert.resolved == 0, col(Alert.device).is_not(None))).all()
            open_keys = {(a.kind, a.device or "") for a in open_rows}
            facts = []
            for d in devices:
                wins = [w for w in recent.get(d.id, []) if w.bundle == d.active_digest]
                sk = LatencySketch()
                drift_wins: dict[str, dict[str, list[list[int]]]] = {}
                for w in wins:
                    try:
                        sk = sk.merge(LatencySketch.from_dict(w.latency or {}))
                    except BadPayload:
                        continue
                    for side, feats in (w.drift or {}).items():
                        for name, counts in (feats or {}).items():
                            drift_wins.setdefault(side, {}).setdefault(name, []).append(counts)
                trailing = latency_summary(d.latency) if d.latency_bundle == d.active_digest else {}
                verdicts = self.drift_verdicts(s, d.active_digest, drift_wins) if d.active_digest and drift_wins else {}
                worst = max((v.get("status", "insufficient_data") for v in verdicts.values()),
                            key=lambda x: ("insufficient_data", "invalid", "ok", "warn", "alert").index(x)
                            if x in ("insufficient_data", "invalid", "ok", "warn", "alert") else 0,
                            default="insufficient_data")
                p95 = sk.quantile(0.95)
                facts.append(alerts.DeviceFacts(
                    d.id, d.online, d.last_seen, d.active_digest, p95 * 1000 if p95 is not None else None, sk.count,
                    trailing.get("p95_ms"), int((d.latency or {}).get("n", 0)), worst,
                    {k: v for k, v in verdicts.items() if v.get("status") == "alert"}))
            decisions = alerts.evaluate(facts, open_keys, now, rules)
            for dec in decisions:
                if isinstance(dec, alerts.Raise):
                    s.add(Alert(kind=dec.kind, severity=dec.severity, device=dec.device, bundle=dec.bundle,
                                message=dec.message[:1000], detail=dict(dec.detail), created=now))
                    self.metrics.alerts.labels(dec.kind).inc()
                else:
                    for a in open_rows:
                        if a.kind == dec.kind and a.device == dec.device:
                            a.resolved = now
                            s.add(a)
            s.commit()
        return decisions

    def list_alerts(self, limit: int = 50, offset: int = 0, kind: str | None = None,
                    device: str | None = None, open_only: bool = False) -> dict[str, Any]:
        with self.session() as s:
            q = select(Alert)
            if kind:
                q = q.where(Alert.kind == kind)
            if device:
                q = q.where(Alert.device == device)
            if open_only:
                q = q.where(Alert.resolved == 0)
            total = s.exec(select(func.count()).select_from(q.subquery())).one()
            rows = s.exec(q.order_by(col(Alert.id).desc()).offset(offset).limit(limit)).all()
            return {"items": [a.model_dump() for a in rows], "total": total, "limit": limit, "offset": offset}

    def list_audit(self, limit: int = 50, offset: int = 0, action: str | None = None) -> dict[str, Any]:
        with self.session() as s:
            q = select(AuditEntry)
            if action:
                q = q.where(AuditEntry.action == action)
            total = s.exec(select(func.count()).select_from(q.subquery())).one()
            rows = s.exec(q.order_by(col(AuditEntry.id).desc()).offset(offset).limit(limit)).all()
            return {"items": [a.model_dump() for a in rows], "total": total, "limit": limit, "offset": offset}

    def list_models(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        with self.session() as s:
            total = s.exec(select(func.count()).select_from(ModelName)).one()
            rows = s.exec(select(ModelName).order_by(col(ModelName.name)).offset(offset).limit(limit)).all()
            items = []
            for m in rows:
                latest = s.exec(select(Bundle).where(Bundle.name == m.name)
                                .order_by(col(Bundle.revision).desc())).first()
                items.append({"name": m.name, "revisions": m.latest_revision, "created": m.created,
                              "latest": bundle_public(latest) if latest else None})
            return {"items": items, "total": total, "limit": limit, "offset": offset}

    def refresh_gauges(self) -> None:
        _refresh_gauges(self)


def new_id() -> str:
    return secrets.token_hex(6)


def _refresh_gauges(fleet: Fleet) -> None:
    with fleet.session() as s:
        for online, n in s.exec(select(Device.online, func.count()).group_by(col(Device.online))).all():
            fleet.metrics.devices.labels("true" if online else "false").set(n)
        fleet.metrics.rollout_devices.clear()
        q = (select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
             .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
             .where(col(Rollout.phase).in_(ACTIVE_PHASES))
             .group_by(RolloutDevice.rollout_id, RolloutDevice.state))
        for rid, state, n in s.exec(q).all():
            fleet.metrics.rollout_devices.labels(rid, state).set(n)
        # fleet latency per active bundle: merging sketches is exact, so this is the fleet's p95
        per: dict[str, LatencySketch] = {}
        counts: dict[str, int] = {}
        for digest, sketch, lat_bundle in s.exec(select(Device.active_digest, Device.latency, Device.latency_bundle)
                                                 .where(col(Device.active_digest).is_not(None))).all():
            if digest is None:
                continue
            counts[digest] = counts.get(digest, 0) + 1
            if sketch and lat_bundle == digest:
                try:
                    per[digest] = per.get(digest, LatencySketch()).merge(LatencySketch.from_dict(dict(sketch)))
                except BadPayload:
                    continue
        fleet.metrics.fleet_latency.clear()
        fleet.metrics.fleet_devices_on_bundle.clear()
        for digest, n in counts.items():
            fleet.metrics.fleet_devices_on_bundle.labels(digest[:12]).set(n)
        for digest, sk in per.items():
            for q_ in (0.5, 0.95, 0.99):
                v = sk.quantile(q_)
                if v is not None:
                    fleet.metrics.fleet_latency.labels(digest[:12], str(q_)).set(v)
        fleet.metrics.alerts_open.clear()
        for kind, n in s.exec(select(Alert.kind, func.count()).where(Alert.resolved == 0).group_by(Alert.kind)).all():
            fleet.metrics.alerts_open.labels(kind).set(n)

