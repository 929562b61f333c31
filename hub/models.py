"""Registry tables (SQLModel). Tables never go on the wire: the API maps them to its own
response models and MQTT speaks :mod:`protocol` messages.

Times are unix seconds (int) so SQLite and PostgreSQL agree without time-zone surprises.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    online: bool = Field(default=False, index=True)
    last_seen: int = Field(default=0, index=True)
    status_ts: int = 0
    agent_version: str = ""
    inventory: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    active_digest: str | None = Field(default=None, max_length=64, index=True)
    active_name: str | None = None
    active_version: str | None = None
    staged_digest: str | None = Field(default=None, max_length=64)
    state: str = "idle"
    # the other model channels as the agent reported them: {name: {active, staged, state}}
    channels: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    reported_desired_seq: int = 0
    desired_seq: int = 0  # highest seq the hub has issued to this device
    desired_bundle: str | None = Field(default=None, max_length=64)
    desired_action: str | None = None
    group: str = Field(default="", index=True, max_length=64)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    enrolled: bool = False
    mqtt_username: str | None = None
    mqtt_password_hash: str | None = None
    created: int = 0
    # running telemetry totals, so the device list needs no join over windows
    windows: int = 0
    inferences: int = Field(default=0, sa_type=BigInteger)
    errors: int = Field(default=0, sa_type=BigInteger)
    tpu: int = Field(default=0, sa_type=BigInteger)
    cpu: int = Field(default=0, sa_type=BigInteger)
    cloud: int = Field(default=0, sa_type=BigInteger)
    latency_bundle: str | None = Field(default=None, max_length=64)
    latency: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # merged sketch for latency_bundle


class ModelName(SQLModel, table=True):
    """One row per model name; bundles of the same name are its revisions."""

    __tablename__ = "model"
    name: str = Field(primary_key=True, max_length=128)
    latest_revision: int = 0
    created: int = 0


class Bundle(SQLModel, table=True):
    digest: str = Field(primary_key=True, max_length=64)
    name: str = Field(index=True, max_length=128)
    version: str = Field(max_length=64)
    revision: int = 1  # hub-assigned: same name + new bytes = next revision
    created: int = 0  # manifest's created
    uploaded: int = 0
    archive_sha256: str = Field(max_length=64, index=True)
    size: int = Field(default=0, sa_type=BigInteger)
    chunk_size: int = 65536
    chunks: list[str] = Field(default_factory=list, sa_type=JSON)
    requirements: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    model: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    artifacts: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    published: bool = False  # chunks published retained at least once


class Build(SQLModel, table=True):
    """What the compiler said about a bundle: eval report and model card."""

    digest: str = Field(primary_key=True, max_length=64)
    report: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    model_card: str = ""


class Rollout(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=32)
    serial: int = Field(default=0, index=True)  # creation order (newest rollout owns a device)
    bundle: str = Field(max_length=64, index=True)
    channel: str = Field(default="default", max_length=32)  # the model channel (protocol.channels)
    target: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    policy: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    phase: str = Field(default="running", index=True)
    cohort: int = -1
    cohort_started: int = 0
    soak_started: int | None = None
    gate_floor: int = 0
    gates: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    reason: str = ""
    created: int = 0
    updated: int = 0
    created_by: str = ""
    # bumped in the transaction of every write to this rollout's rollout_device rows: a hub keeps
    # the rows it last read and wrote between runs, and reads them again only when this moved
    # (hub.rollout_rows.load; another replica's writes move it too)
    rows_version: int = 0


class RolloutDevice(SQLModel, table=True):
    __tablename__ = "rollout_device"
    __table_args__ = (
        Index("ix_rollout_device_device", "device_id"),  # a device's rollouts (device list, detail)
        Index("ix_rollout_device_rollout_state", "rollout_id", "state"),  # a rollout's counts by state
    )
    rollout_id: str = Field(primary_key=True, max_length=32)
    device_id: str = Field(primary_key=True, max_length=64)
    cohort: int | None = None
    state: str = Field(default="pending", index=True)
    online: bool = True
    attempts: int = 0
    seq: int = 0  # desired seq issued for this rollout
    issued_at: int = 0
    updated: int = 0
    reason: str = ""
    from_bundle: str | None = Field(default=None, max_length=64)
    stage: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})  # hub.stages
    stages: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # per stage: state, detail, figures


class TelemetryWindow(SQLModel, table=True):
    __tablename__ = "telemetry_window"
    __table_args__ = (
        UniqueConstraint("device", "seq", name="uq_telemetry_device_seq"),
        Index("ix_telemetry_device_end", "device", "window_end"),
        Index("ix_telemetry_received", "received"),  # rollups and retention go by receive time
    )
    id: int | None = Field(default=None, primary_key=True)
    device: str = Field(max_length=64)
    seq: int = Field(sa_type=BigInteger)
    window_start: int = 0
    window_end: int = 0
    bundle: str | None = Field(default=None, max_length=64, index=True)
    inferences: int = 0
    errors: int = 0
    tpu: int = 0
    cpu: int = 0
    cloud: int = 0
    latency: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    drift: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    shadow: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    health: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    received: int = 0


class ReportRecord(SQLModel, table=True):
    __tablename__ = "report"
    __table_args__ = (UniqueConstraint("device", "seq", name="uq_report_device_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    device: str = Field(max_length=64, index=True)
    seq: int = Field(sa_type=BigInteger)
    ts: int = 0
    stage: str = ""
    status: str = ""
    reason: str = ""
    detail: str = ""
    desired_seq: int = 0
    bundle: str | None = Field(default=None, max_length=64)
    progress: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    received: int = 0


class Alert(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # drift | offline | latency_regression | rollout_gate
    severity: str = "warn"  # warn | alert
    device: str | None = Field(default=None, max_length=64, index=True)
    bundle: str | None = Field(default=None, max_length=64)
    rollout: str | None = Field(default=None, max_length=32)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    message: str = ""
    created: int = Field(default=0, index=True)
    resolved: int = 0


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    ts: int = Field(default=0, index=True)
    actor: str = ""  # role:token-prefix or "cli" / "hub"
    action: str = ""
    target: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class DeviceCommand(SQLModel, table=True):
    """A remote-diagnostics command issued to a device and its answer (:mod:`hub.commands`)."""

    __tablename__ = "device_command"
    __table_args__ = (
        Index("ix_device_command_device_issued", "device", "issued"),
        Index("ix_device_command_actor_issued", "actor", "issued"),
    )
    id: str = Field(primary_key=True, max_length=64)
    device: str = Field(max_length=64)
    name: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    actor: str = Field(default="", max_length=128)
    issued: int = 0
    expires: int = 0
    status: str = Field(default="sent", max_length=16)  # sent | ok | failed | refused
    reason: str = ""
    detail: str = ""
    body: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    answered: int = 0


class EnrollToken(SQLModel, table=True):
    __tablename__ = "enroll_token"
    token_hash: str = Field(primary_key=True, max_length=64)
    device: str = Field(max_length=64, index=True)
    group: str = ""
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    created: int = 0
    expires: int = 0
    used: int = 0
    created_by: str = ""


class DesiredDoc(SQLModel, table=True):
    """The last signed desired document issued to each device, byte for byte: the hub publishes
    it again (retained) whenever it connects to the broker, so a broker that lost its retained
    messages (kill -9 before its autosave) still tells a returning device what to run."""

    __tablename__ = "desired_doc"
    device: str = Field(primary_key=True, max_length=64)
    seq: int = 0
    expires: int = 0
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class GroupWindow(SQLModel, table=True):
    """A device group's maintenance window (:mod:`hub.windows`): rollouts issue installs to the
    group's devices only while it is open. A group without a row is always open."""

    __tablename__ = "group_window"
    group: str = Field(primary_key=True, max_length=64)
    spec: str = Field(max_length=200)
    tz: str = Field(max_length=64)
    updated: int = 0
    updated_by: str = ""


class TelemetryRollup(SQLModel, table=True):
    """Telemetry windows of one device and bundle merged per 1-minute or 1-hour bucket of the
    hub's receive time (:mod:`hub.rollups`): counts add, latency sketches and drift bins merge
    exactly, shadow comparisons add. Read like a window by :func:`hub.telemetry.merge`, standing
    for ``windows`` of them. ``bundle`` is ``""`` for windows that named none (a key column)."""

    __tablename__ = "telemetry_rollup"
    __table_args__ = (
        UniqueConstraint("resolution", "bucket", "device", "bundle", name="uq_telemetry_rollup"),
        Index("ix_telemetry_rollup_res_bucket", "resolution", "bucket"),
        Index("ix_telemetry_rollup_device", "device", "resolution", "bucket"),
    )
    id: int | None = Field(default=None, primary_key=True)
    resolution: int  # 60 or 3600 seconds
    bucket: int  # start of the bucket, unix seconds, a multiple of resolution
    device: str = Field(max_length=64)
    bundle: str = Field(default="", max_length=64)
    windows: int = 0
    window_start: int = 0  # earliest window_start of the merged windows
    window_end: int = 0  # latest window_end
    inferences: int = Field(default=0, sa_type=BigInteger)
    errors: int = Field(default=0, sa_type=BigInteger)
    tpu: int = Field(default=0, sa_type=BigInteger)
    cpu: int = Field(default=0, sa_type=BigInteger)
    cloud: int = Field(default=0, sa_type=BigInteger)
    latency: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    drift: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # {side: {name: [[counts], ...]}}
    shadow: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class HardExample(SQLModel, table=True):
    """A low-confidence input a device kept and uploaded (:mod:`hub.hardexamples`): the bytes are
    a file under the store (``path``, relative to it), this row says what it is. Stored once per
    (device, sample id); ``model``/``version`` are the hub's names of ``bundle``."""

    __tablename__ = "hard_example"
    __table_args__ = (
        UniqueConstraint("device", "sample_id", name="uq_hard_example_device_sample"),
        Index("ix_hard_example_model_version", "model", "version", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    device: str = Field(max_length=64)
    sample_id: str = Field(max_length=64)
    bundle: str = Field(max_length=64)
    model: str = Field(max_length=128)
    version: str = Field(max_length=64)
    ts: int = 0  # when the device kept it
    received: int = 0
    content_type: str = Field(max_length=64)
    size: int = 0
    sha256: str = Field(max_length=64)
    path: str = Field(max_length=512)
    confidence: float | None = None
    measure: str = Field(default="", max_length=32)
    answer: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
