"""MQTT messages -> registry rows, in batches.

Every message is parsed once, here, with :mod:`protocol.messages` (the payload's device must
match the topic's), and judged on its own: JSON nesting, 64-bit integers, finite floats, the
registry's 32-bit columns, a telemetry window's parts against its own inference count, and a
per-device message rate. A message that fails is quarantined: counted
(``edgefleet_hub_messages_total{outcome="malformed"|"implausible"|"throttled"}``), logged with
the reason, kept in :attr:`Ingest.quarantine` (the last 200; no API route shows them yet) and
dropped; the batch goes on. A throttled message is not acked, so the device sends it again
later. Telemetry and reports are deduplicated by
``(device, seq)``: a replay is counted as ``duplicate``, not stored again, and acked again (the
agent resends until it sees an ack). One transaction per batch; if it fails the batch is
retried message by message so one poison message cannot block the others.

Replicas (``--shared-group``) ingest side by side into one database, each getting some of every
device's messages. A batch locks its devices' rows first (``SELECT ... FOR UPDATE``): the
running totals are never a lost update, and a window both replicas hold (one got the resend of
what the other was storing) is looked up only once the other's batch has committed, so it is a
duplicate, not a second row. (A device new to both at once: one insert fails on the unique key,
that batch is retried message by message and finds the row.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select as columns
from sqlmodel import Session, col, select

from protocol import codec
from protocol.commands import Result, parse_result
from protocol.errors import BadPayload, Implausible
from protocol.messages import (
    COUNT_KEYS,
    ESCALATION_COUNT_KEYS,
    Ack,
    FetchRequest,
    Report,
    Status,
    Telemetry,
    parse_fetch,
    parse_report,
    parse_status,
    parse_telemetry,
)
from protocol.samples import Receipt, SampleChunk, parse_sample
from protocol.sketch import LatencySketch
from protocol.topics import Kind, Topic

from . import bundles, commands, desired, hardexamples, views
from .fleet import Fleet
from .followups import FollowUps
from .metrics import UNKNOWN, cohort_label, install_result
from .models import Bundle, Device, ReportRecord, Rollout, RolloutDevice, TelemetryWindow
from .rollout import ACTIVE_PHASES
from .totals import ADD_TOTALS, SEEN, STORED, Fold, Sketches, insert_reports, insert_windows, report_row
from .transport import Outgoing

log = logging.getLogger(__name__)

# every message is parsed here: orjson where its answer is json's (protocol.codec.use_fast_loads)
codec.use_fast_loads(orjson.loads, orjson.JSONDecodeError)

Message = Status | Report | Telemetry | FetchRequest | Result | SampleChunk
MAX_REPAIR_CHUNKS = 2048
REPAIR_INTERVAL_S = 5.0
PLAN_INDEX = -1  # the chunk plan's slot in the repair throttle (a fetch request naming no chunk)

INT32, INT64 = 2**31 - 1, 2**63 - 1
_KINDS = {k.value for k in Kind}


def _bounded(what: str, name: str, value: int, limit: int) -> None:
    """Numbers must fit the registry's columns (PostgreSQL integers are 32/64-bit)."""
    if value > limit:
        raise BadPayload(what, f"{name} {value} exceeds {limit}")


@dataclass(frozen=True)
class Parsed:
    kind: Kind
    device: str
    message: Message
    sketch: LatencySketch | None = None  # a telemetry window's latency, parsed once here


def parse(topic: str, payload: bytes) -> Parsed:
    """Bytes off the wire -> one typed message, or :class:`BadPayload` naming the problem."""
    t = Topic.parse(topic)
    msg: Message
    sketch = None
    if t.kind is Kind.STATUS:
        msg = parse_status(payload)
    elif t.kind is Kind.REPORT:
        msg = parse_report(payload)
    elif t.kind is Kind.TELEMETRY:
        msg = parse_telemetry(payload)
        sketch = LatencySketch.from_dict(msg.latency)  # validate the sketch at the edge too
    elif t.kind is Kind.FETCH:
        msg = parse_fetch(payload)
    elif t.kind is Kind.RESULT:
        msg = parse_result(payload)  # remote diagnostics: stored on its command's row (hub.commands)
    elif t.kind is Kind.SAMPLE:
        msg = parse_sample(payload)  # a hard example's chunk (hub.hardexamples)
    else:
        raise BadPayload("topic", f"{topic!r}: the hub does not consume {t.kind.value!r} messages")
    if isinstance(msg, (Telemetry, Report)):
        _bounded(t.kind.value, "seq", msg.seq, INT64)
    if isinstance(msg, (Status, Report)):
        _bounded(t.kind.value, "ts", msg.ts, INT32)
        _bounded(t.kind.value, "desired_seq", msg.desired_seq, INT32)
    if isinstance(msg, Telemetry):
        _bounded("telemetry", "window_start", msg.window_start, INT32)
        _bounded("telemetry", "window_end", msg.window_end, INT32)
        for k, v in msg.counts.items():
            _bounded("telemetry", f"counts.{k}", v, INT32)
    if msg.device != t.device:
        raise BadPayload(t.kind.value, f"payload device {msg.device!r} does not match topic device {t.device!r}")
    return Parsed(t.kind, msg.device, msg, sketch)


# the bundles of running rollouts, a query built once (hub.totals.STORED says why)
_RUNNING = columns(Rollout.__table__.c.bundle).where(Rollout.__table__.c.phase.in_(ACTIVE_PHASES))  # type: ignore[attr-defined]

RATE_PER_S = 20.0  # messages one device may send per second, sustained...
RATE_BURST = 2000.0  # ...after a burst (a backlog resent after an offline day is ~9000 windows)


@dataclass(frozen=True)
class Quarantined:
    topic: str
    outcome: str
    reason: str
    at: float


class Ingest:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.metrics = fleet.metrics
        self._last_warning = 0.0
        self._suppressed = 0
        self._repaired: dict[tuple[str, int], float] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, at)
        self.quarantine: deque[Quarantined] = deque(maxlen=200)
        self._names: dict[str, tuple[str, str]] = {}  # bundle digest -> (name, version): immutable
        self._sketches = Sketches()  # each device's running latency sketch as last written
        self.followups = FollowUps(fleet)

    def _allowed(self, device: str, now: float) -> bool:
        """Token bucket per device: a flood from one device cannot crowd out the others."""
        tokens, at = self._buckets.get(device, (RATE_BURST, now))
        tokens = min(RATE_BURST, tokens + (now - at) * RATE_PER_S)
        if tokens < 1.0:
            self._buckets[device] = (tokens, now)
            return False
        if len(self._buckets) > 1_000_000:
            self._buckets.clear()
        self._buckets[device] = (tokens - 1.0, now)
        return True

    def _quarantine(self, topic: str, outcome: str, exc: Exception) -> None:
        kind = topic.rsplit("/", 1)[-1] if topic.startswith("ef/v1/dev/") else "unknown"
        self.metrics.messages.labels(kind if kind in _KINDS else "unknown", outcome).inc()
        self.quarantine.append(Quarantined(topic[:200], outcome, str(exc)[:300], time.time()))
        self._warn(topic, exc)

    def _warn(self, topic: str, exc: Exception) -> None:
        # one line per bad message, but never a log flood from a misbehaving device
        now = time.monotonic()
        if now - self._last_warning >= 1.0:
            extra = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
            log.warning("dropped message on %s: %s%s", topic, exc, extra)
            self._last_warning, self._suppressed = now, 0
        else:
            self._suppressed += 1

    def _throttle(self, archive: str, missing: Sequence[int]) -> list[int]:
        """A re-published chunk is retained and fans out to every subscriber, so one chunk is
        repaired at most once per ``REPAIR_INTERVAL_S`` however many devices ask for it."""
        now = time.monotonic()
        if len(self._repaired) > 100_000:
            self._repaired = {k: t for k, t in self._repaired.items() if now - t < REPAIR_INTERVAL_S}
        out = []
        for i in sorted(set(missing)):
            if now - self._repaired.get((archive, i), -1e9) >= REPAIR_INTERVAL_S:
                self._repaired[(archive, i)] = now
                out.append(i)
        return out

    def handle(self, batch: Sequence[tuple[str, bytes]]) -> None:
        parsed: list[Parsed] = []
        now = time.monotonic()
        for topic, payload in batch:
            try:
                p = parse(topic, payload)
            except Implausible as exc:
                self._quarantine(topic, "implausible", exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one message, never the batch
                self._quarantine(topic, "malformed", exc)
                continue
            if p.kind is not Kind.STATUS and not self._allowed(p.device, now):
                self._quarantine(topic, "throttled", ValueError(f"{p.device} sends over {RATE_PER_S:g} msg/s"))
                continue
            parsed.append(p)
        if not parsed:
            return self.followups.run_if_due()
        self.metrics.batch_size.observe(len(parsed))
        with self.metrics.batch_seconds.time():
            try:
                out, touched, reports = self._store(parsed)
            except Exception as exc:  # noqa: BLE001 - retried one by one: only the bad one is lost
                log.error("batch of %d failed (%s); retrying one by one", len(parsed), exc.__class__.__name__)
                out, touched, reports = [], set(), []
                for p in parsed:
                    try:
                        o, t, r = self._store([p])
                        out += o
                        touched |= t
                        reports += r
                    except Exception as exc2:  # noqa: BLE001
                        self.metrics.messages.labels(p.kind.value, "error").inc()
                        self.quarantine.append(
                            Quarantined(f"ef/v1/dev/{p.device}/{p.kind.value}", "error", str(exc2)[:300], time.time())
                        )
                        log.error("could not store %s from %s: %s", p.kind.value, p.device, exc2)
        self.fleet.publish(out)  # acks only after the commit: an acked message is stored
        self.followups.add(reports, touched)  # the rollouts hear of them (held while behind)

    def _store(self, parsed: Sequence[Parsed]) -> tuple[list[Outgoing], set[str], list[Report]]:
        now = self.fleet.clock()
        out: list[Outgoing] = []
        touched: set[str] = set()
        acks: dict[tuple[str, str], list[int]] = {}
        counted: list[tuple[str, str]] = []
        reports: list[Report] = []
        receipts: list[Receipt] = []
        windows: list[dict[str, Any]] = []
        folds: dict[str, Fold] = {}
        fed: list[tuple[str, str | None, LatencySketch, dict[str, int]]] = []  # for the fleet metrics
        with self.fleet.session() as s:
            ids = sorted({p.device for p in parsed})
            # locked until commit (PostgreSQL; SQLite has one writer): the totals below are
            # read-modify-write, and a replica (--shared-group) may be storing another window of
            # the same device at this moment. In id order: two batches queue, never deadlock.
            stored: dict[str, tuple[str | None, dict[str, Any]]] = {
                did: (bundle, dict(latency or {}))
                for did, bundle, latency in s.exec(
                    select(Device.id, Device.latency_bundle, Device.latency)
                    .where(col(Device.id).in_(ids))
                    .order_by(col(Device.id))
                    .with_for_update()
                ).all()
            }
            # rows the batch changes beyond the totals are loaded as ORM objects; a device the
            # batch only has telemetry from gets its totals in one statement (hub.totals.ADD_TOTALS)
            whole = sorted({p.device for p in parsed if p.kind in (Kind.STATUS, Kind.REPORT) and p.device in stored})
            devices = {d.id: d for d in s.exec(select(Device).where(col(Device.id).in_(whole))).all()} if whole else {}
            seen_only: set[str] = set()  # telemetry-only devices: last_seen moves

            def device(did: str) -> Device:
                d = devices.get(did)
                if d is None:
                    d = devices[did] = Device(id=did, created=now)
                    s.add(d)
                    touched.add(did)
                return d

            seen_t = self._existing(s, TelemetryWindow, [p for p in parsed if p.kind is Kind.TELEMETRY])
            seen_r = self._existing(s, ReportRecord, [p for p in parsed if p.kind is Kind.REPORT])
            for p in parsed:
                m = p.message
                if isinstance(m, Status):
                    d = device(p.device)
                    before = (d.online, d.active_digest, d.inventory, d.channels)
                    self._apply_status(d, m, now)
                    if (d.online, d.active_digest, d.inventory, d.channels) != before:
                        touched.add(d.id)
                        out.extend(desired.reissue_inline(self.fleet, s, d, before[2]))  # agent downgraded
                    counted.append(("status", "stored"))
                elif isinstance(m, Telemetry):
                    did = p.device
                    if did in devices or did not in stored:
                        d = device(did)
                        if d.last_seen != now:
                            d.last_seen = now
                        base = (d.latency_bundle, d.latency)
                    else:
                        seen_only.add(did)
                        base = stored[did]
                    acks.setdefault((did, "telemetry"), []).append(m.seq)
                    if (did, m.seq) in seen_t:
                        counted.append(("telemetry", "duplicate"))
                        continue
                    seen_t.add((did, m.seq))
                    assert p.sketch is not None  # parse() gives every telemetry message its sketch
                    fed.append(self._apply_telemetry(windows, folds, did, base, m, p.sketch, now))
                    counted.append(("telemetry", "stored"))
                elif isinstance(m, Report):
                    d = device(p.device)
                    d.last_seen = now
                    acks.setdefault((d.id, "report"), []).append(m.seq)
                    if (d.id, m.seq) in seen_r:
                        counted.append(("report", "duplicate"))
                        continue
                    seen_r.add((d.id, m.seq))
                    if m.desired_seq > d.reported_desired_seq and m.status == "ok":
                        d.reported_desired_seq = m.desired_seq
                    reports.append(m)
                    counted.append(("report", "stored"))
                    result = install_result(m.stage, m.status)
                    if result is not None:
                        counted.append(("install", f"{result}:{m.reason}"))
                elif isinstance(m, FetchRequest):
                    b = s.exec(select(Bundle).where(Bundle.archive_sha256 == m.archive)).first()
                    # a bundle's full archive, else a device view's (hub.views)
                    plan = bundles.archive_plan(b) if b is not None else views.plan_of_archive(self.fleet, m.archive)
                    if plan is None:
                        counted.append(("fetch", "rejected"))
                        self._warn(f"ef/v1/dev/{m.device}/fetch", ValueError(f"unknown archive {m.archive}"))
                        continue
                    if not m.missing:  # an agent waiting for the chunk plan it reads by reference
                        if again := bool(self._throttle(m.archive, [PLAN_INDEX])):
                            out.append(bundles.plan_message(plan))
                        counted.append(("fetch", "stored" if again else "throttled"))
                        continue
                    wanted = self._throttle(m.archive, m.missing[:MAX_REPAIR_CHUNKS])
                    out.extend(bundles.plan_chunk_messages(self.fleet, plan, wanted))
                    counted.append(("fetch", "stored" if wanted else "throttled"))
                elif isinstance(m, Result):
                    counted.append(("result", "stored" if commands.record(s, m, now) else "rejected"))
                elif isinstance(m, SampleChunk):
                    receipt, outcome = hardexamples.record(self.fleet, s, m, now)
                    receipts.append(receipt)
                    counted.append(("sample", outcome))
            totals = []
            for did, f in folds.items():
                if did in devices:
                    f.apply(devices[did], self._sketches)
                else:
                    totals.append(f.params(did, stored[did][1], now, self._sketches))
                    seen_only.discard(did)
            for d in devices.values():
                s.add(d)
            s.flush()
            if totals:
                s.connection().execute(ADD_TOTALS, totals)
            if seen_only:
                s.connection().execute(SEEN, [{"b_id": did, "b_seen": now} for did in sorted(seen_only)])
            if windows:
                insert_windows(s, windows)
            if reports:  # one statement, after the flush (hub.totals.report_row)
                insert_reports(s, [report_row(m, now) for m in reports])
            labels = self._fleet_labels(s, fed)
            s.commit()
        for (kind, outcome), n in Counter(counted).items():  # one increment a label set, not a message
            if kind == "install":
                self.metrics.installs.labels(*outcome.split(":", 1)).inc(n)
            else:
                self.metrics.messages.labels(kind, outcome).inc(n)
        self.metrics.fleet.add_batch((key, sketch, c) for (_, _, sketch, c), key in zip(fed, labels, strict=True))
        for r in receipts:  # after the commit, like the acks: a receipt says stored
            out.append(Outgoing(str(Topic.for_device(Kind.SAMPLED, r.device)), r.to_bytes(), False, 1, "sampled"))
        # QoS 0: a lost ack only means the device sends the window again, stored once and acked
        # again; at QoS 1 the acks filled the hub's queue ahead of chunks and desired documents
        # at 10,000 devices (docs/scale.md)
        for (did, kind), seqs in acks.items():
            out.append(
                Outgoing(
                    str(Topic.for_device(Kind.ACK, did)),
                    Ack(kind, tuple(sorted(set(seqs)))).to_bytes(),
                    retain=False,
                    qos=0,
                    kind="ack",
                )
            )
        return out, touched, reports

    def _fleet_labels(
        self, s: Session, fed: Sequence[tuple[str, str | None, LatencySketch, dict[str, int]]]
    ) -> list[tuple[str, str, str]]:
        """(model, version, cohort) of each stored window (:mod:`hub.metrics`): at most three
        small queries per batch with telemetry, none without. A window has a cohort only if it ran
        the bundle of a running rollout (few): the devices' rollout rows are looked up only then."""
        if not fed:
            return []
        digests = {b for _, b, _, _ in fed if b is not None and b not in self._names}
        if digests:
            for digest, name, version in s.exec(
                select(Bundle.digest, Bundle.name, Bundle.version).where(col(Bundle.digest).in_(sorted(digests)))
            ).all():
                self._names[digest] = (name, version)
            if len(self._names) > 10_000:  # bundles are few; never grow without bound
                self._names.clear()
        cohorts: dict[tuple[str, str], int | None] = {}
        running = set(s.connection().execute(_RUNNING).scalars())
        ids = sorted({d for d, ran, _, _ in fed if ran in running})
        if ids:
            q = (
                select(RolloutDevice.device_id, Rollout.bundle, RolloutDevice.cohort)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .where(col(Rollout.phase).in_(ACTIVE_PHASES), col(RolloutDevice.device_id).in_(ids))
                .order_by(col(Rollout.serial))  # the newest rollout owns a device: last one wins
            )
            for did, target, cohort in s.exec(q).all():
                cohorts[(did, target)] = cohort
        out = []
        for did, ran, _, _ in fed:
            model, version = self._names.get(ran or "", (UNKNOWN, UNKNOWN))
            out.append((model, version, cohort_label(cohorts.get((did, ran or "")))))
        return out

    @staticmethod
    def _existing(
        s: Session, table: type[TelemetryWindow] | type[ReportRecord], items: Sequence[Parsed]
    ) -> set[tuple[str, int]]:
        """(device, seq) pairs of ``items`` already stored: one query per batch."""
        pairs = {(p.device, p.message.seq) for p in items}  # type: ignore[union-attr]
        if not pairs:
            return set()
        devs = sorted({d for d, _ in pairs})
        seqs = sorted({q for _, q in pairs})
        rows = s.connection().execute(STORED[table], {"devs": devs, "seqs": seqs}).all()
        return {(dv, sq) for dv, sq in rows if (dv, sq) in pairs}

    @staticmethod
    def _apply_status(d: Device, m: Status, now: int) -> None:
        d.online = m.online
        d.last_seen = now
        d.status_ts = max(d.status_ts, m.ts)
        if m.agent_version:
            d.agent_version = m.agent_version
        inventory = m.inventory.to_dict()
        if inventory and (m.online or not d.inventory):  # a last will names the board only: features kept
            d.inventory = inventory
        if m.online or m.active is not None:
            d.active_digest = m.active.digest if m.active else None
            d.active_name = m.active.name if m.active else None
            d.active_version = m.active.version if m.active else None
            d.staged_digest = m.staged.digest if m.staged else None
            d.channels = {k: v.to_dict() for k, v in m.channels.items()}  # the other model channels
        d.state = m.state if m.online else "offline"
        if m.desired_seq > d.reported_desired_seq:
            d.reported_desired_seq = m.desired_seq

    @staticmethod
    def _apply_telemetry(
        rows: list[dict[str, Any]],
        folds: dict[str, Fold],
        did: str,
        base: tuple[str | None, dict[str, Any]],
        m: Telemetry,
        sketch: LatencySketch,
        now: int,
    ) -> tuple[str, str | None, LatencySketch, dict[str, int]]:
        """Queue the window row (bulk-inserted per batch) and fold it into the device's batch
        totals (:class:`hub.totals.Fold`) from ``base``, its stored (latency bundle, sketch);
        return what the fleet metrics count of it once the batch commits."""
        c = {k: int(m.counts.get(k, 0)) for k in COUNT_KEYS}
        health = m.health.to_dict()
        # the device's own state rides in the window's health column, where the device page reads it
        acc = m.accelerator.to_dict() if m.accelerator is not None else None
        health.update((k, v) for k, v in (("backlog", m.backlog), ("accelerator", acc), ("usage", m.usage)) if v)
        esc = {k: int(m.counts[k]) for k in ESCALATION_COUNT_KEYS if m.counts.get(k)}
        if esc:  # escalation to the cloud (agent.escalation): not a rolled-up column, kept with the window
            health["escalation"] = esc
        if m.channel != "default":  # another model channel (protocol.channels): its rows name it
            health["channel"] = m.channel
        rows.append(
            {
                "device": did,
                "seq": m.seq,
                "window_start": m.window_start,
                "window_end": m.window_end,
                "bundle": m.bundle,
                "latency": m.latency,
                "drift": m.drift,
                "shadow": m.shadow.to_dict() if m.shadow is not None else None,
                "health": health,
                "received": now,
                **c,
            }
        )
        if m.channel != "default":  # the device's totals and latency describe its default channel
            return did, m.bundle, sketch, c
        f = folds.get(did)
        if f is None:
            f = folds[did] = Fold(base[0], bool(base[1]))
        f.add(m.bundle, c, sketch)
        return did, m.bundle, sketch, c
