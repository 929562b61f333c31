"""Message schemas of protocol v1 (JSON, ``"v": 1``), parsed once at the edge.

Every ``parse_*`` takes the raw payload bytes and returns a frozen dataclass or raises
:class:`BadPayload` naming the field. Unknown fields sent by a newer peer are kept in
``extra`` and written back by ``to_bytes`` so nothing a newer peer said is lost.

The desired-state document is *signed* (payload type ``desired``): the agent verifies the
envelope bytes against its pinned root (targets role) before it parses anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field, fields, replace
from typing import Any

from . import planref
from .bundle import ChunkPlan, Requirements
from .channels import DEFAULT, MAX_CHANNELS, ChannelStatus, channel_of, check_channel, parse_channel_statuses
from .codec import canonical, extra_fields, field, int_list, load_object, nonneg_int
from .delta import DeltaRef
from .device import Health, Inventory, Shadow
from .errors import BadPayload, Implausible, Reason, VerificationError
from .signing import Envelope, Root, SigningKey, seal
from .topics import check_device_id, check_digest
from .view import BundleView

SCHEMA = 1
MAX_MESSAGE_BYTES = 256 * 1024

STAGES = ("verify", "download", "stage", "selftest", "switch", "commit", "rollback", "shadow", "idle")
STATUSES = ("progress", "ok", "failed")
ACTIONS = ("install", "rollback", "idle")


def _head(data: bytes, what: str) -> dict[str, Any]:
    obj = load_object(data, what, MAX_MESSAGE_BYTES)
    v = field(obj, "v", int, what)
    if v < 1:
        raise BadPayload(what, f"schema version {v} is invalid")
    return obj


def _encode(obj: Any, extra: dict[str, Any]) -> bytes:
    doc = dict(extra)
    for f in fields(obj):
        if f.name == "extra":
            continue
        value = getattr(obj, f.name)
        if (f.name == "channel" and value == DEFAULT) or (f.name == "channels" and not value):
            continue  # absent means default (protocol.channels): single-model documents keep their bytes
        if f.name == "channels":
            value = {k: v.to_dict() for k, v in value.items()}
        doc[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    doc["v"] = SCHEMA
    return canonical(doc)


@dataclass(frozen=True)
class BundleRef:
    """Which bundle, and how its archive is cut for transfer.

    ``view``: a device-view archive of the same bundle (protocol.view), named only to agents that
    announced the feature; an older agent ignores the key and fetches ``archive``.
    :meth:`fetched` is the reference as a device-view agent downloads it."""

    digest: str
    name: str
    version: str
    archive: ChunkPlan
    requirements: Requirements = Requirements()
    view: BundleView | None = None
    plan_ref: str | None = None  # the chunk list by reference (protocol.planref), for agents that announced it

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "digest": self.digest,
            "name": self.name,
            "version": self.version,
            "size": self.archive.size,
            "sha256": self.archive.sha256,
            "chunk_size": self.archive.chunk_size,
            "requirements": self.requirements.to_dict(),
        }
        if self.plan_ref is None:
            doc["chunks"] = list(self.archive.chunks)
        else:  # the hashes in a retained plan message once per archive, its hash here
            doc["plan"] = self.plan_ref
        if self.view is not None:  # absent, not null: references without one keep their bytes
            doc["view"] = self.view.to_dict()
        return doc

    def by_reference(self) -> BundleRef:
        """This reference with its chunk list named by hash (:mod:`protocol.planref`)."""
        return replace(self, plan_ref=planref.plan_ref(self.archive))

    @property
    def unresolved(self) -> bool:
        """Whether the chunk list is still to be read from the plan message."""
        return self.plan_ref is not None and not planref.resolved(self.archive)

    def resolve(self, payload: bytes) -> BundleRef:
        """The reference with the chunk list of plan message ``payload``, checked against the
        signed hash (raises :class:`VerificationError`)."""
        assert self.plan_ref is not None
        return replace(self, archive=planref.resolve(self.archive, self.plan_ref, payload))

    def fetched(self) -> BundleRef:
        """The archive to download: the device view when there is one (``archive`` = its plan)."""
        if self.view is None or self.view.plan == self.archive:
            return self
        return replace(self, archive=self.view.plan)

    @property
    def members(self) -> tuple[str, ...] | None:
        """The artifacts in the archive ``archive`` describes: None for all (the full archive),
        the view's names once :meth:`fetched` made ``archive`` the view's."""
        return self.view.artifacts if self.view is not None and self.view.plan == self.archive else None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> BundleRef:
        what = "bundle reference"
        ref = obj.get("plan")
        if ref is not None and "chunks" not in obj:
            plan, ref = planref.stub(obj, what), check_digest(field(obj, "plan", str, what))
        else:
            plan, ref = ChunkPlan.from_fields(obj, what, empty_ok=True), None
        raw_view = obj.get("view")
        return cls(
            check_digest(field(obj, "digest", str, what)),
            field(obj, "name", str, what),
            field(obj, "version", str, what),
            plan,
            Requirements.from_dict(field(obj, "requirements", dict, what, {})),
            BundleView.from_dict(raw_view) if raw_view is not None else None,
            ref,
        )


@dataclass(frozen=True)
class Desired:
    """Signed "what you should run" for one device.

    ``seq`` grows with every document the hub issues for the device; the agent persists the
    highest it accepted and refuses anything not above it (replays, downgrades). A rollback is
    a *new* document with a higher ``seq`` naming the older bundle.
    """

    device: str
    seq: int
    issued: int
    expires: int
    action: str
    bundle: BundleRef | None
    rollout: str | None = None
    shadow: BundleRef | None = None
    shadow_sample: float = 0.0
    delta: DeltaRef | None = None  # a delta from the device's active bundle to ``bundle`` (protocol.delta)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)
    # channels (protocol.channels): the fields above are the ``default`` channel's; ``since`` is the
    # seq of the document that last changed them (None: this one; 0: the hub never issued the
    # default channel anything, so it has no entry); ``channels`` holds the other channels
    since: int | None = None
    channels: dict[str, ChannelDesired] = dc_field(default_factory=dict, hash=False)

    def channel(self, name: str) -> Desired | None:
        """What channel ``name`` should run, as a single-channel document whose ``seq`` is the
        seq that last changed it (reports name it, so the hub matches them to that channel's
        rollout); None when the document does not name the channel."""
        if name == DEFAULT:
            if self.since == 0:
                return None
            return replace(self, seq=self.seq if self.since is None else self.since, since=None, channels={})
        e = self.channels.get(name)
        if e is None:
            return None
        return Desired(
            self.device,
            e.seq,
            self.issued,
            self.expires,
            e.action,
            e.bundle,
            e.rollout,
            e.shadow,
            e.shadow_sample,
            e.delta,
            dict(e.extra),
        )

    def signed_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "_type": "desired",
                "v": SCHEMA,
                "device": self.device,
                "seq": self.seq,
                "issued": self.issued,
                "expires": self.expires,
                "action": self.action,
                "bundle": self.bundle.to_dict() if self.bundle else None,
                "rollout": self.rollout,
                "shadow": self.shadow.to_dict() if self.shadow else None,
                "shadow_sample": self.shadow_sample,
            }
        )
        if self.delta is not None:  # absent, not null: documents without one keep their bytes
            doc["delta"] = self.delta.to_dict()
        if self.since is not None:
            doc["since"] = self.since
        if self.channels:
            doc["channels"] = {k: v.to_dict() for k, v in self.channels.items()}
        return doc

    def seal(self, keys: list[SigningKey]) -> bytes:
        return seal("desired", self.signed_dict(), keys).to_bytes()


_DESIRED_KNOWN = {
    "_type",
    "v",
    "device",
    "seq",
    "issued",
    "expires",
    "action",
    "bundle",
    "rollout",
    "shadow",
    "shadow_sample",
    "delta",
    "since",
    "channels",
}


@dataclass(frozen=True)
class ChannelDesired:
    """One non-default channel's entry in a desired document: the default channel's fields,
    and ``seq``: the document seq that last changed this entry (not above the document's)."""

    seq: int
    action: str
    bundle: BundleRef | None
    rollout: str | None = None
    shadow: BundleRef | None = None
    shadow_sample: float = 0.0
    delta: DeltaRef | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "seq": self.seq,
                "action": self.action,
                "bundle": self.bundle.to_dict() if self.bundle else None,
                "rollout": self.rollout,
                "shadow": self.shadow.to_dict() if self.shadow else None,
                "shadow_sample": self.shadow_sample,
            }
        )
        if self.delta is not None:
            doc["delta"] = self.delta.to_dict()
        return doc


_ENTRY_KNOWN = {"seq", "action", "bundle", "rollout", "shadow", "shadow_sample", "delta"}


def _entry_fields(
    obj: dict[str, Any], what: str
) -> tuple[str, BundleRef | None, str | None, BundleRef | None, float, DeltaRef | None]:
    """action, bundle, rollout, shadow, sample, delta: checked alike for every channel."""
    action = field(obj, "action", str, what)
    if action not in ACTIONS:
        raise BadPayload(what, f"action must be one of {ACTIONS}, got {action!r}")
    raw_bundle = field(obj, "bundle", dict, what, None, allow_none=True)
    bundle = BundleRef.from_dict(raw_bundle) if raw_bundle is not None else None
    if action != "idle" and bundle is None:
        raise BadPayload(what, f"action {action!r} needs a bundle")
    raw_shadow = field(obj, "shadow", dict, what, None, allow_none=True)
    raw_delta = field(obj, "delta", dict, what, None, allow_none=True)
    if raw_delta is not None and bundle is None:
        raise BadPayload(what, "a delta needs a bundle to patch into")
    sample = float(field(obj, "shadow_sample", float, what, 0.0))
    if not 0.0 <= sample <= 1.0:
        raise BadPayload(what, f"shadow_sample must be within 0..1, got {sample}")
    return (
        action,
        bundle,
        field(obj, "rollout", str, what, None, allow_none=True),
        BundleRef.from_dict(raw_shadow) if raw_shadow is not None else None,
        sample,
        DeltaRef.from_dict(raw_delta) if raw_delta is not None else None,
    )


def _channels(obj: dict[str, Any], seq: int, what: str) -> dict[str, ChannelDesired]:
    raw = field(obj, "channels", dict, what, {})
    if len(raw) > MAX_CHANNELS:
        raise BadPayload(what, f"{len(raw)} channels exceeds {MAX_CHANNELS}")
    out: dict[str, ChannelDesired] = {}
    for name, entry in raw.items():
        w = f"{what} channel {name!r:.40}"
        if check_channel(name) == DEFAULT:
            raise BadPayload(w, "the default channel is the document's own fields, not an entry")
        if not isinstance(entry, dict):
            raise BadPayload(w, f"must be an object, got {entry!r:.60}")
        since = nonneg_int(entry, "seq", w)
        if since > seq:
            raise BadPayload(w, f"seq {since} is above the document's {seq}")
        out[name] = ChannelDesired(since, *_entry_fields(entry, w), extra=extra_fields(entry, _ENTRY_KNOWN))
    return out


def parse_desired_payload(payload: bytes) -> Desired:
    what = "desired"
    obj = _head(payload, what)
    if obj.get("_type") != "desired":
        raise BadPayload(what, f"_type must be 'desired', got {obj.get('_type')!r}")
    action, bundle, rollout, shadow, sample, delta = _entry_fields(obj, what)
    seq = nonneg_int(obj, "seq", what)
    since = field(obj, "since", int, what, None, allow_none=True)
    if since is not None and not 0 <= since <= seq:
        raise BadPayload(what, f"since {since} must be within 0..{seq} (the document's seq)")
    return Desired(
        device=check_device_id(field(obj, "device", str, what)),
        seq=seq,
        issued=nonneg_int(obj, "issued", what),
        expires=nonneg_int(obj, "expires", what),
        action=action,
        bundle=bundle,
        rollout=rollout,
        shadow=shadow,
        shadow_sample=sample,
        delta=delta,
        extra=extra_fields(obj, _DESIRED_KNOWN),
        since=since,
        channels=_channels(obj, seq, what),
    )


def verify_desired(env_bytes: bytes, root: Root, device: str, trusted_seq: int, now: int) -> Desired:
    """Gatekeeper for the agent: signature, then parse, then device, freshness and expiry.

    Equal ``seq`` raises ``REPLAYED`` (the caller treats it as "nothing new"); lower raises
    ``DOWNGRADE``; a past ``expires`` raises ``EXPIRED``.
    """
    env = Envelope.parse(env_bytes, "desired envelope")
    desired = parse_desired_payload(root.verify(env, "targets", "desired"))
    if desired.device != device:
        raise VerificationError(Reason.WRONG_DEVICE, f"document is for {desired.device!r}, this is {device!r}")
    if desired.seq == trusted_seq:
        raise VerificationError(Reason.REPLAYED, f"seq {desired.seq} was already accepted")
    if desired.seq < trusted_seq:
        raise VerificationError(Reason.DOWNGRADE, f"expected seq > {trusted_seq}, got {desired.seq}")
    if desired.expires <= now:
        raise VerificationError(Reason.EXPIRED, f"expired at {desired.expires}, now {now}")
    return desired


@dataclass(frozen=True)
class BundleInfo:
    digest: str
    name: str
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "name": self.name, "version": self.version}

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> BundleInfo | None:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise BadPayload(what, f"bundle info must be an object, got {obj!r:.60}")
        return cls(
            check_digest(field(obj, "digest", str, what)),
            field(obj, "name", str, what),
            field(obj, "version", str, what),
        )


@dataclass(frozen=True)
class Status:
    """Retained per device. The last will is the same message with ``online=False``."""

    device: str
    online: bool
    ts: int
    agent_version: str = ""
    inventory: Inventory = dc_field(default_factory=Inventory, hash=False)
    active: BundleInfo | None = None
    staged: BundleInfo | None = None
    state: str = "idle"
    desired_seq: int = 0
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)
    channels: dict[str, ChannelStatus] = dc_field(default_factory=dict, hash=False)  # non-default ones

    def to_bytes(self) -> bytes:
        return _encode(self, self.extra)


def parse_status(data: bytes) -> Status:
    what = "status"
    obj = _head(data, what)
    known = {
        "v",
        "device",
        "online",
        "ts",
        "agent_version",
        "inventory",
        "active",
        "staged",
        "state",
        "desired_seq",
        "channels",
    }
    return Status(
        device=check_device_id(field(obj, "device", str, what)),
        online=field(obj, "online", bool, what),
        ts=nonneg_int(obj, "ts", what),
        agent_version=field(obj, "agent_version", str, what, ""),
        inventory=Inventory.from_dict(field(obj, "inventory", dict, what, {}), "status inventory"),
        active=BundleInfo.from_dict(obj.get("active"), what),
        staged=BundleInfo.from_dict(obj.get("staged"), what),
        state=field(obj, "state", str, what, "idle"),
        desired_seq=nonneg_int(obj, "desired_seq", what, 0),
        extra=extra_fields(obj, known),
        channels=parse_channel_statuses(obj.get("channels"), what),
    )


HOLD_CODES = ("app_hold",)


@dataclass(frozen=True)
class Hold:
    """An app on the device holds the switch to a new bundle until ``until`` (unix seconds),
    through the agent's local API; ``code`` says who holds it, ``reason`` is the app's words."""

    until: int
    reason: str = ""
    code: str = "app_hold"

    def to_dict(self) -> dict[str, Any]:
        return {"until": self.until, "reason": self.reason, "code": self.code}

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Hold | None:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise BadPayload(what, f"hold must be an object, got {obj!r:.60}")
        code = field(obj, "code", str, what, "app_hold")
        if code not in HOLD_CODES:
            raise BadPayload(what, f"hold code must be one of {HOLD_CODES}, got {code!r:.40}")
        return cls(nonneg_int(obj, "until", what), field(obj, "reason", str, what, "")[:200], code)


@dataclass(frozen=True)
class Report:
    """Install progress or result. ``seq`` is per device and lets the hub drop replays."""

    device: str
    seq: int
    ts: int
    stage: str
    status: str
    reason: str = Reason.OK.value
    detail: str = ""
    desired_seq: int = 0
    bundle: str | None = None
    progress: float | None = None
    metrics: dict[str, Any] = dc_field(default_factory=dict, hash=False)
    hold: Hold | None = None  # set on a switch/progress report while an app holds the switch
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)
    channel: str = DEFAULT  # the model channel the install is for (protocol.channels)

    def to_bytes(self) -> bytes:
        return _encode(self, self.extra)


def parse_report(data: bytes) -> Report:
    what = "report"
    obj = _head(data, what)
    stage = field(obj, "stage", str, what)
    if stage not in STAGES:
        raise BadPayload(what, f"stage must be one of {STAGES}, got {stage!r}")
    status = field(obj, "status", str, what)
    if status not in STATUSES:
        raise BadPayload(what, f"status must be one of {STATUSES}, got {status!r}")
    reason = field(obj, "reason", str, what, Reason.OK.value)
    if reason not in {r.value for r in Reason}:
        raise BadPayload(what, f"unknown reason code {reason!r}")
    bundle = field(obj, "bundle", str, what, None, allow_none=True)
    progress = field(obj, "progress", float, what, None, allow_none=True)
    known = {
        "v",
        "device",
        "seq",
        "ts",
        "stage",
        "status",
        "reason",
        "detail",
        "desired_seq",
        "bundle",
        "progress",
        "metrics",
        "hold",
        "channel",
    }
    return Report(
        device=check_device_id(field(obj, "device", str, what)),
        seq=nonneg_int(obj, "seq", what),
        ts=nonneg_int(obj, "ts", what),
        stage=stage,
        status=status,
        reason=reason,
        detail=field(obj, "detail", str, what, "")[:2000],
        desired_seq=nonneg_int(obj, "desired_seq", what, 0),
        bundle=check_digest(bundle) if bundle is not None else None,
        progress=float(progress) if progress is not None else None,
        metrics=field(obj, "metrics", dict, what, {}),
        hold=Hold.from_dict(obj.get("hold"), what),
        extra=extra_fields(obj, known),
        channel=channel_of(obj, what),
    )


ACCELERATOR_RUNTIMES = ("tpu", "cpu")


@dataclass(frozen=True)
class Accelerator:
    """The Edge TPU watchdog's state when a window closed (``Telemetry.accelerator``; a device
    serving an Edge TPU bundle sends it, others leave it null): ``runtime`` serving (``tpu`` or
    ``cpu``), ``reason`` why serving left the TPU (``timeout``, ``errors``, ``load_failed``; an
    agent may send codes this version does not know), ``failovers`` since the model loaded, and
    ``temp_c``: the TPU's temperature in °C, ``"invalid"`` for a reading no working chip gives
    (-87.9 °C after a failure), null when the device has no sensor file."""

    runtime: str
    reason: str | None = None
    failovers: int = 0
    temp_c: float | str | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "runtime": self.runtime,
            "reason": self.reason,
            "failovers": self.failovers,
            "temp_c": self.temp_c,
        }

    @classmethod
    def from_dict(cls, obj: Any, what: str = "telemetry accelerator") -> Accelerator:
        if not isinstance(obj, dict):
            raise BadPayload(what, f"expected an object, got {obj!r:.60}")
        runtime = field(obj, "runtime", str, what)
        if runtime not in ACCELERATOR_RUNTIMES:
            raise BadPayload(what, f"runtime must be one of {ACCELERATOR_RUNTIMES}, got {runtime!r:.40}")
        temp = obj.get("temp_c")
        if isinstance(temp, bool) or not (temp is None or temp == "invalid" or isinstance(temp, (int, float))):
            raise BadPayload(what, f"temp_c must be a number, 'invalid' or null, got {temp!r:.40}")
        return cls(
            runtime,
            field(obj, "reason", str, what, None, allow_none=True),
            nonneg_int(obj, "failovers", what, 0),
            float(temp) if isinstance(temp, (int, float)) else temp,
            extra_fields(obj, {"runtime", "reason", "failovers", "temp_c"}),
        )


@dataclass(frozen=True)
class Telemetry:
    """One telemetry window. ``latency`` is a :class:`protocol.sketch.LatencySketch` dict,
    ``drift`` maps ``"inputs"``/``"outputs"`` to ``{feature: [bin counts]}`` on the bundle's
    baseline edges, ``counts`` has inferences/errors/tpu/cpu/cloud; ``shadow`` and ``health`` are
    :mod:`protocol.device` types."""

    device: str
    seq: int
    window_start: int
    window_end: int
    bundle: str | None = None
    counts: dict[str, int] = dc_field(default_factory=dict, hash=False)
    latency: dict[str, Any] = dc_field(default_factory=dict, hash=False)
    drift: dict[str, dict[str, list[int]]] = dc_field(default_factory=dict, hash=False)
    shadow: Shadow | None = dc_field(default=None, hash=False)
    health: Health = dc_field(default_factory=Health, hash=False)
    backlog: dict[str, Any] = dc_field(default_factory=dict, hash=False)
    accelerator: Accelerator | None = dc_field(default=None, hash=False)
    usage: dict[str, Any] = dc_field(default_factory=dict, hash=False)  # bytes today (agent.budget)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)
    channel: str = DEFAULT  # the model channel that served the window (protocol.channels)

    def to_bytes(self) -> bytes:
        return _encode(self, self.extra)


COUNT_KEYS = ("inferences", "errors", "tpu", "cpu", "cloud")
# escalation to the cloud by confidence (agent.escalation): in a window's counts once nonzero; every
# escalation follows a local inference (which may be counted in the next window: it is recorded after the answer)
ESCALATION_COUNT_KEYS = ("escalated", "escalation_failed", "escalation_breaker_open", "escalation_budget")
MAX_RATE_PER_S = 100_000  # inferences a window may claim per second it spans (an Edge TPU does ~400)
DRIFT_CARRY = 256  # drift samples binned after the window that counted them (the agent's queue)


def check_plausible(t: Telemetry) -> None:
    """A window's parts must agree with its own inference count, so one device cannot claim
    2 inferences and a latency sketch of 10**30 samples (which moved fleet p95 and raised a
    drift alert). Raises :class:`BadPayload` naming the first figure that does not fit."""
    what = "telemetry"
    c = t.counts
    n = c.get("inferences", 0)
    cap = MAX_RATE_PER_S * (t.window_end - t.window_start + 1)
    if n > cap:
        raise Implausible(what, f"{n} inferences in a {t.window_end - t.window_start} s window exceeds {cap}")
    for k in ("errors", "tpu", "cpu", "cloud"):
        if c.get(k, 0) > n:
            raise Implausible(what, f"count {k!r} {c[k]} exceeds the window's {n} inferences")
    for k in ESCALATION_COUNT_KEYS:  # counted as decided; the local inference may land in the next window
        if c.get(k, 0) > n + DRIFT_CARRY:
            raise Implausible(what, f"count {k!r} {c[k]} does not fit the window's {n} inferences")
    if sum(c.get(k, 0) for k in ("tpu", "cpu", "cloud")) > n:
        raise Implausible(what, f"tpu+cpu+cloud exceed the window's {n} inferences")
    sketch_n = t.latency.get("n", 0) if t.latency else 0
    if not isinstance(sketch_n, int) or isinstance(sketch_n, bool) or sketch_n > n:
        raise Implausible(what, f"latency sketch holds {sketch_n!r} samples, the window has {n} inferences")
    for side, feats in t.drift.items():
        for name, bins in feats.items():
            total = sum(bins)
            if total > n + DRIFT_CARRY:
                raise Implausible(
                    what, f"drift[{side}][{name}] bins hold {total} samples, the window has {n} inferences"
                )
    if t.shadow is not None and t.shadow.samples > n + DRIFT_CARRY:
        raise Implausible(what, f"shadow samples {t.shadow.samples} do not fit the window's {n} inferences")


_TELEMETRY_KEYS = frozenset(
    {
        "v",
        "device",
        "seq",
        "window_start",
        "window_end",
        "bundle",
        "counts",
        "latency",
        "drift",
        "shadow",
        "health",
        "backlog",
        "accelerator",
        "usage",
        "channel",
    }
)


def parse_telemetry(data: bytes) -> Telemetry:
    what = "telemetry"
    obj = _head(data, what)
    start = nonneg_int(obj, "window_start", what)
    end = nonneg_int(obj, "window_end", what)
    if end < start:
        raise Implausible(what, f"window_end {end} is before window_start {start}")
    counts = field(obj, "counts", dict, what, {})
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise Implausible(what, f"count {k!r} must be an int >= 0, got {v!r:.40}")
    drift = field(obj, "drift", dict, what, {})
    for side, feats in drift.items():
        if not isinstance(feats, dict):
            raise Implausible(what, f"drift[{side!r}] must be an object")
        for name in feats:
            int_list(feats, name, f"telemetry drift[{side}]")
    bundle = field(obj, "bundle", str, what, None, allow_none=True)
    shadow = field(obj, "shadow", dict, what, None, allow_none=True)
    accelerator = field(obj, "accelerator", dict, what, None, allow_none=True)
    t = Telemetry(
        device=check_device_id(field(obj, "device", str, what)),
        seq=nonneg_int(obj, "seq", what),
        window_start=start,
        window_end=end,
        bundle=check_digest(bundle) if bundle is not None else None,
        counts=counts,
        latency=field(obj, "latency", dict, what, {}),
        drift=drift,
        shadow=Shadow.from_dict(shadow, "telemetry shadow") if shadow is not None else None,
        health=Health.from_dict(field(obj, "health", dict, what, {}), "telemetry health"),
        backlog=field(obj, "backlog", dict, what, {}),
        accelerator=Accelerator.from_dict(accelerator) if accelerator is not None else None,
        usage=field(obj, "usage", dict, what, {}),
        extra=extra_fields(obj, _TELEMETRY_KEYS),
        channel=channel_of(obj, what),
    )
    check_plausible(t)
    return t


@dataclass(frozen=True)
class Ack:
    """Hub -> agent: these report/telemetry sequence numbers are stored; drop them."""

    kind: str
    seqs: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return canonical({"v": SCHEMA, "kind": self.kind, "seqs": list(self.seqs)})


def parse_ack(data: bytes) -> Ack:
    what = "ack"
    obj = _head(data, what)
    kind = field(obj, "kind", str, what)
    if kind not in ("telemetry", "report"):
        raise BadPayload(what, f"kind must be telemetry or report, got {kind!r}")
    return Ack(kind, tuple(int_list(obj, "seqs", what)))


@dataclass(frozen=True)
class FetchRequest:
    """Agent -> hub: chunks of an archive it has not received; the hub re-publishes them."""

    device: str
    archive: str
    missing: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return canonical({"v": SCHEMA, "device": self.device, "archive": self.archive, "missing": list(self.missing)})


def parse_fetch(data: bytes) -> FetchRequest:
    what = "fetch request"
    obj = _head(data, what)
    missing = int_list(obj, "missing", what)
    if len(missing) > 100_000:
        raise BadPayload(what, f"{len(missing)} missing chunks exceeds 100000")
    return FetchRequest(
        check_device_id(field(obj, "device", str, what)), check_digest(field(obj, "archive", str, what)), tuple(missing)
    )


__all__ = [
    "Ack",
    "BundleInfo",
    "BundleRef",
    "ChannelDesired",
    "ChannelStatus",
    "Desired",
    "FetchRequest",
    "Health",
    "Inventory",
    "Report",
    "Shadow",
    "Status",
    "Telemetry",
    "parse_ack",
    "parse_desired_payload",
    "parse_fetch",
    "parse_report",
    "parse_status",
    "parse_telemetry",
    "verify_desired",
    "replace",
    "STAGES",
    "Hold",
    "STATUSES",
    "ACTIONS",
    "COUNT_KEYS",
    "ESCALATION_COUNT_KEYS",
]
