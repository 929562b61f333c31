"""What the API says: one ``…Public`` model per resource and one generic :class:`Page`.

Tables (:mod:`hub.models`) never go on the wire; the operations in :mod:`hub.fleet` and
:mod:`hub.rollouts` return plain data that FastAPI validates against these models on the way
out (``response_model=``), so the OpenAPI document says exactly what a client gets and a field
the code forgets to fill is a 500 in the tests, not a silent gap. Request bodies live here too.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

DIGEST_RE = r"^[0-9a-f]{64}$"
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a listing: ``items`` from ``offset``, ``total`` over every page."""

    items: list[T]
    total: int
    limit: int
    offset: int


class KeysetPage(Page[T], Generic[T]):
    """A page of a listing that grows with the fleet. ``?after=<next_after>`` fetches the next
    page by key (an index seek at any depth, where ``offset`` reads every row it skips).
    ``total`` is exact under 5,000 rows; from there it is a count at most a few seconds old,
    made at ``counted_at`` (hub.tallies); ``has_more`` is always exact."""

    has_more: bool = Field(description="more rows follow this page")
    next_after: str | None = Field(description="pass as ?after= for the next page; null on the last")
    counted_at: int = Field(description="unix time ``total`` was counted")


class ErrorPublic(BaseModel):
    """Every error: one line naming the thing and the problem (422 adds FastAPI's ``detail``)."""

    error: str
    detail: list[dict[str, Any]] | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route (``responses=``)."""
    what = {
        400: "bad input (names the field and the value)",
        401: "missing or unknown bearer token",
        403: "the token's role may not do this",
        404: "no such resource",
        409: "state conflict",
        413: "body too large",
        422: "request does not match the schema",
        429: "too many requests: the error says which limit; Retry-After says when to try again",
    }
    return {c: {"model": ErrorPublic, "description": what[c]} for c in codes}


# ---- ops ------------------------------------------------------------------------------------
class HealthPublic(BaseModel):
    """What the hub depends on, as ``/healthz`` (liveness: always 200 while the process answers)
    and ``/readyz`` (readiness: 503 unless ``ready``) both report it."""

    status: Literal["ok", "degraded"] = Field(description="ok: everything the hub needs is up; degraded: see `down`")
    ready: bool = Field(description="the database answers and the broker session is up (or there is no broker)")
    db: Literal["ok", "unreachable"]
    broker: Literal["connected", "disconnected", "none"] = Field(
        description="the hub's broker session (subscriptions confirmed); none: the hub runs without a broker"
    )
    mqtt: bool | None = Field(description="broker session up; null when the hub runs without a broker")
    down: list[str] = Field(description="one line per dependency that is down, naming it and why")


# ---- bundles --------------------------------------------------------------------------------
class BundlePushed(BaseModel):
    digest: str
    name: str
    version: str
    archive_sha256: str
    size: int
    revision: int


class BundlePublic(BaseModel):
    digest: str
    name: str
    version: str
    revision: int
    archive_sha256: str
    size: int
    chunk_size: int
    chunks: int = Field(description="number of chunks")
    created: int
    uploaded: int
    requirements: dict[str, Any]
    model: dict[str, Any]
    artifacts: list[dict[str, Any]]


class BundleDetail(BundlePublic):
    report: dict[str, Any] = Field(description="the compiler's evaluation report")
    model_card: str
    deltas_preparing: bool = Field(
        description="this hub process is still making the deltas from the bundles devices run to this one "
        "(started at push); a rollout created meanwhile makes what it needs itself, so its POST takes longer"
    )


class ModelPublic(BaseModel):
    name: str
    revisions: int
    created: int
    latest: BundlePublic | None


# ---- devices --------------------------------------------------------------------------------
class ActiveBundle(BaseModel):
    digest: str
    name: str | None
    version: str | None


class DesiredPublic(BaseModel):
    seq: int
    bundle: str | None
    action: str | None


class LatencyPublic(BaseModel):
    p50_ms: float | None
    p95_ms: float | None
    mean_ms: float | None


class DeviceTelemetry(LatencyPublic):
    windows: int
    inferences: int
    errors: int
    tpu: int
    cpu: int
    cloud: int


class DevicePublic(BaseModel):
    device_id: str
    online: bool
    last_seen: int
    state: str
    agent_version: str
    group: str
    tags: list[str]
    inventory: dict[str, Any] = Field(description="as the agent reported it (protocol.device.Inventory)")
    active_bundle: ActiveBundle | None
    staged_bundle: str | None
    desired: DesiredPublic
    reported_desired_seq: int
    rollout_state: str | None
    telemetry: DeviceTelemetry
    channels: dict[str, Any] = Field(
        default_factory=dict,
        description="the device's other model channels as it reported them: {name: {active, staged, state}}; "
        "active_bundle, staged_bundle, desired and telemetry describe the default channel",
    )


class TelemetryMerged(DeviceTelemetry):
    drift: dict[str, Any] = Field(description="per-feature drift verdicts, for one bundle")


class DeviceRollout(BaseModel):
    rollout: str
    state: str
    seq: int
    attempts: int
    reason: str
    cohort: int | None


class DeviceDetail(DevicePublic):
    recent: TelemetryMerged
    rollouts: list[DeviceRollout]
    accelerator: dict[str, Any] | None = Field(
        None,
        description="the newest telemetry window's Edge TPU state (protocol.messages.Accelerator: runtime tpu/cpu, "
        "failover reason, failovers, temp_c or 'invalid'); null when the device sent none",
    )
    usage: dict[str, Any] | None = Field(
        None,
        description="the newest telemetry window's bytes today per kind (bundle, telemetry, report) with the "
        "daily budget, what is left and the rate cap; null when the device sent none",
    )
    escalation: dict[str, int] | None = Field(
        None,
        description="escalations to the cloud by confidence summed over the recent windows (escalated, "
        "escalation_failed, escalation_breaker_open, escalation_budget); null when there were none",
    )


class TelemetrySummary(TelemetryMerged):
    devices: int
    truncated: bool = Field(description="more windows matched than were merged")
    since: int | None
    until: int | None


class DevicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str | None = Field(default=None, max_length=64)
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=64)


DEVICE_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DeviceBulkIn(BaseModel):
    """A bulk action on up to 1000 devices (duplicates count once)."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["tag", "untag", "set_group", "retry"] = Field(
        description="tag/untag: add or remove `tag`; set_group: set `group` ('' clears it); "
        "retry: re-issue a failed or timed-out install in the rollout the device follows"
    )
    devices: list[Annotated[str, Field(pattern=DEVICE_ID_RE)]] = Field(min_length=1, max_length=1000)
    tag: str | None = Field(default=None, min_length=1, max_length=64)
    group: str | None = Field(default=None, max_length=64)


class DeviceBulkResult(BaseModel):
    device: str
    status: Literal["ok", "unknown", "refused"] = Field(description="unknown: no such device; refused: see detail")
    detail: str


class DeviceBulkOut(BaseModel):
    """One result per id, in the order asked, and the counts: never a silent partial."""

    action: str
    results: list[DeviceBulkResult]
    ok: int
    unknown: int
    refused: int


# ---- remote diagnostics ---------------------------------------------------------------------
class CommandIn(BaseModel):
    """A remote-diagnostics command for one device (operator role)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["logs", "selftest", "restart", "diagnostics"] = Field(
        description="logs: recent agent log lines (secrets redacted); selftest: run the active bundle's self-test "
        "again; restart: the agent exits cleanly and its supervisor starts it; diagnostics: versions, inventory, "
        "runtime, slots, redacted config, disk and health checks"
    )
    lines: int | None = Field(None, ge=1, le=500, description="logs only: how many recent lines (default 200)")


class CommandPublic(BaseModel):
    """A command and, once the device answered, its result (``body`` is the command's own shape)."""

    id: str
    device_id: str
    name: str
    args: dict[str, Any]
    actor: str
    issued: int
    expires: int
    status: Literal["sent", "ok", "failed", "refused", "expired"] = Field(
        description="sent: waiting for the device; ok/failed: its answer; refused: the device would not run it "
        "(reason says why); expired: no answer before `expires`"
    )
    reason: str
    detail: str
    body: dict[str, Any] | None
    answered: int | None


# ---- enrollment -----------------------------------------------------------------------------
class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="device id to enroll")
    group: str = Field(default="", max_length=64)
    tags: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)


class EnrollmentPublic(BaseModel):
    device_id: str
    token: str = Field(description="one-time; the device trades it at POST /api/v1/enroll")
    expires: int


class RedeemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=8, max_length=200)


class MqttCredentials(BaseModel):
    username: str
    password: str


class Enrolled(BaseModel):
    device_id: str
    broker: str = Field(description="broker URL for devices, never with the hub's credentials")
    mqtt: MqttCredentials
    root: str = Field(description="the trust root envelope (JSON text) to pin")


# ---- rollouts -------------------------------------------------------------------------------
class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(pattern=DIGEST_RE, description="bundle digest (64 hex)")
    target: dict[str, Any] = Field(description='{"all": true} | {"devices": [...]} | {"group": g} | {"tag": t}')
    policy: dict[str, Any] = Field(
        default_factory=dict, description="cohorts, soak, gates, stages (see hub.rollout and hub.stages)"
    )
    channel: str = Field(
        "default",
        max_length=32,
        description="the model channel to install on (protocol.channels); the device serves it at "
        "/v1/models/{channel}/predict",
    )


class GatePublic(BaseModel):
    name: str
    status: str = Field(description="pass | breach | insufficient_data")
    value: float | None
    limit: float | None
    detail: str


class RolloutPublic(BaseModel):
    id: str
    bundle: str
    channel: str = Field("default", description="the model channel the rollout installs on")
    target: dict[str, Any]
    policy: dict[str, Any]
    phase: str
    cohort: int
    cohort_sizes: list[int]
    soak_started: int | None
    gates: list[GatePublic]
    reason: str
    created: int
    updated: int
    created_by: str
    counts: dict[str, int] = Field(description="devices per state")
    total: int


class StagePublic(BaseModel):
    """One device's record of one rollout stage (hub.stages)."""

    state: str = Field(description="waiting | pass | fail | skipped")
    detail: str = Field(description="what the gate said, the figure named")
    figures: dict[str, Any] = Field(
        default_factory=dict, description="benchmark: candidate/current p50/p95, p95_ratio; shadow: samples, agreement"
    )
    started: int | None = None


class RolloutDevicePublic(BaseModel):
    device_id: str
    state: str
    cohort: int | None
    seq: int
    attempts: int
    reason: str
    updated: int
    online: bool
    from_bundle: str | None
    stage: str = Field("", description="while staging: the stage it runs (benchmark | shadow)")
    stages: dict[str, StagePublic] = Field(default_factory=dict, description="each stage's verdict and figures")


class WaitingDevice(BaseModel):
    device_id: str
    group: str
    opens_at: int | None = Field(description="when its group's window opens (null: open now; the next tick issues it)")


class RolloutStatus(RolloutPublic):
    devices: list[RolloutDevicePublic] = Field(description="one page of the rollout's devices")
    limit: int
    offset: int
    has_more: bool = Field(False, description="more devices follow this page")
    next_after: str | None = Field(None, description="pass as ?after= for the next page of devices")
    counted_at: int | None = Field(
        None, description="unix time ``counts``/``total`` were counted (a few seconds old from 5,000 devices)"
    )
    waiting: list[WaitingDevice] = Field(description="every device waiting for its maintenance window")


# ---- groups and maintenance windows ---------------------------------------------------------
class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(
        max_length=200, description="'days=mon-fri start=01:00 duration=3h' (hub.windows: days, start, duration)"
    )
    tz: str = Field(max_length=64, description="IANA time zone of start, e.g. Europe/Berlin")


class WindowPublic(BaseModel):
    spec: str = Field(description="canonical form")
    tz: str
    open: bool
    opens_at: int | None = Field(description="next opening while closed, else null")
    closes_at: int | None = Field(description="when the open window closes, else null")
    updated: int = 0
    updated_by: str = ""
    error: str | None = Field(default=None, description="a stored spec this hub cannot read (treated as closed)")


class GroupPublic(BaseModel):
    group: str
    devices: int
    window: WindowPublic | None = Field(description="null: no window, installs at any time")


# ---- alerts and audit -----------------------------------------------------------------------
class AlertPublic(BaseModel):
    id: int
    kind: str
    severity: str
    device: str | None
    bundle: str | None
    rollout: str | None
    detail: dict[str, Any]
    message: str
    created: int
    resolved: int = Field(description="0 while open, else when it was resolved")


class AuditPublic(BaseModel):
    id: int
    ts: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class HardExamplePublic(BaseModel):
    """A low-confidence input a device kept and uploaded (:mod:`hub.hardexamples`); the bytes
    are at ``/api/v1/hard-examples/{id}/content`` (operator role)."""

    id: int
    device: str
    sample_id: str
    bundle: str
    model: str
    version: str
    ts: int = Field(description="when the device kept it (unix s)")
    received: int
    content_type: str
    size: int
    sha256: str
    confidence: float | None = Field(description="the local answer's confidence by ``measure`` (0..1)")
    measure: str
    answer: dict[str, Any] = Field(description="the device's answer (a classifier's top, without its full scores)")


class HardExampleVersion(BaseModel):
    model: str
    version: str
    count: int
    last: int | None = Field(description="when the newest arrived (unix s)")


class HardExampleVersions(BaseModel):
    """Every model version with hard examples (one row each: a short list, not paged)."""

    items: list[HardExampleVersion]


class HardExamplesDeleted(BaseModel):
    deleted: int = Field(description="hard examples removed (rows and files)")
