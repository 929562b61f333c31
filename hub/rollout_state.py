"""The rollout machine's vocabulary (:mod:`hub.rollout`): its phases, device states and
commands; its state (``RolloutState`` of ``DeviceState`` and ``GateResult``), the events it
reads and the actions it emits. Frozen values; the rules are in :mod:`hub.rollout`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.benchmark import BenchmarkReport
from protocol.bundle import Requirements
from protocol.device import Inventory
from protocol.sketch import DriftThresholds

from .stages import ShadowTally

NO_PREVIOUS = "no previous bundle: told idle, keeps serving this rollout's bundle"
PHASES = ("running", "paused", "awaiting_approval", "completed", "aborted", "rolled_back", "cancelled")
TERMINAL_PHASES = ("aborted", "rolled_back", "cancelled")
ACTIVE_PHASES = ("running", "paused", "awaiting_approval")  # a rollout that still owns its devices
SETTLED = ("installed", "failed", "timed_out", "incompatible")
# the reason a newer rollout on the device's channel writes on its row here ("superseded by
# rollout <id>", hub.rollouts.create): ``cancelled`` if the device had not installed yet, kept
# when a late report says it had (hub.rollout rules 3, 6b and 8)
SUPERSEDED = "superseded by rollout"
DONE = (*SETTLED, "cancelled")  # a running rollout moves these no more (cancelled there: superseded)
ISSUED = ("issued", "installing")
# "expired": the device read a desired doc after its expiry (it was offline for longer than
# the doc's lifetime); a retry is a fresh doc with a new seq and expiry
RETRYABLE = ("timeout", "hash_mismatch", "length_mismatch", "malformed", "internal", "expired")
BREACH_ACTIONS = ("pause", "abort", "rollback")
# gates fed by inference counts; ``require_samples`` waits for these (drift and shadow data ride
# in the same telemetry windows, so they are judged by then if the device sends them at all)
SAMPLE_GATES = ("error_rate", "p95_latency_ratio", "cloud_fallback_rate")
COMMANDS = ("approve", "pause", "resume", "cancel", "rollback", "retry")
RETRY_FROM = ("failed", "timed_out")  # the device states a retry command re-issues
ROLLBACK_FROM = ("issued", "installing", "installed", "failed", "timed_out")  # a rollback's (and waiting, if issued)
# the phases in which each operator command applies (rule 1); the shell answers 409 otherwise
COMMAND_PHASES: dict[str, tuple[str, ...]] = {
    "pause": ("running", "awaiting_approval", "completed"),
    "resume": ("paused",),
    "approve": ("awaiting_approval", "paused"),
    "cancel": ("running", "paused", "awaiting_approval", "completed"),
    "rollback": ("running", "paused", "awaiting_approval", "completed", "aborted"),
    "retry": ("running", "completed"),  # issuing is stopped while paused or awaiting approval
}


def moved_by(op: str, state: str, attempts: int) -> bool:
    """Does a ``rollback`` or ``retry`` move a device in ``state``? (rule 1; the shell asks the
    same before it refuses one whose every such device a newer rollout holds, rule 1b)"""
    if op == "retry":
        return state in RETRY_FROM
    return state in ROLLBACK_FROM or (state == "waiting" and attempts > 0)


def command_applies(op: str, phase: str) -> bool:
    """Does operator command ``op`` do anything in ``phase``? (:data:`COMMAND_PHASES`)"""
    return phase in COMMAND_PHASES.get(op, ())


# ---- state -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceState:
    id: str
    state: str = "pending"
    cohort: int | None = None
    attempts: int = 0
    issued_at: int = 0
    from_bundle: str | None = None
    reason: str = ""
    online: bool = True
    stage: str = ""  # while ``staging``: the stage it runs (issued_at is when that stage began)
    # per stage: {"state": running|waiting|pass|fail|skipped, "detail", "figures", "started"}
    stages: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GateResult:
    name: str
    status: str  # pass | breach | insufficient_data
    value: float | None = None
    limit: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "value": self.value,
            "limit": self.limit,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RolloutState:
    bundle: str
    requirements: Requirements = Requirements()
    phase: str = "running"
    cohort: int = -1  # index of the highest opened cohort; -1 = none yet
    cohort_started: int = 0
    soak_started: int | None = None
    devices: tuple[DeviceState, ...] = ()
    reason: str = ""
    gates: tuple[GateResult, ...] = ()
    gate_floor: int = 0  # gates judge cohorts >= this (raised when a breach is approved)
    baseline: Mapping[str, Sequence[int]] = field(default_factory=dict, hash=False, compare=False)
    drift_thresholds: DriftThresholds = DriftThresholds()  # the model's (a feature without its own)
    # per feature, as protocol.baseline.Baseline.thresholds_for resolves them
    feature_thresholds: Mapping[str, DriftThresholds] = field(default_factory=dict, hash=False, compare=False)

    def device(self, did: str) -> DeviceState | None:
        for d in self.devices:
            if d.id == did:
                return d
        return None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices:
            out[d.state] = out.get(d.state, 0) + 1
        return out


# ---- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    op: str
    actor: str = ""
    devices: tuple[str, ...] = ()  # ``retry`` only: these devices (none: every device of the rollout)


@dataclass(frozen=True)
class DeviceSeen:
    device: str
    online: bool
    active: str | None = None
    inventory: Inventory = field(default_factory=Inventory, hash=False)
    agent_version: str = ""


@dataclass(frozen=True)
class InstallReport:
    device: str
    stage: str
    status: str  # progress | ok | failed
    reason: str = "ok"
    detail: str = ""
    hold_until: int = 0  # the app on the device holds the switch until then (0: no hold)
    hold_reason: str = ""


@dataclass(frozen=True)
class WindowClosed:
    """``device``'s maintenance window is closed now and opens at ``opens`` (unix seconds)."""

    device: str
    opens: int


@dataclass(frozen=True)
class Elsewhere:
    """A newer rollout of the channel, ``rollout``, holds ``device`` (it was issued that
    rollout's document, or will be): a rollback or retry of this one leaves the device alone."""

    device: str
    rollout: str


@dataclass(frozen=True)
class Health:
    """One device's telemetry summary for the gates: the target bundle vs its previous one."""

    device: str
    inferences: int = 0
    errors: int = 0
    cloud: int = 0
    latency: Mapping[str, Any] = field(default_factory=dict, hash=False)  # sketch dict, target bundle
    prev_latency: Mapping[str, Any] = field(default_factory=dict, hash=False)  # sketch dict, previous bundle
    drift: Mapping[str, Sequence[int]] = field(default_factory=dict, hash=False)  # "side.feature" -> counts
    shadow_agree: int = 0
    shadow_total: int = 0
    recovery_windows: int = 0  # windows left out: they overlap a period the fleet was recovering
    # the previous bundle's counts on this device (the same windows as ``prev_latency``): the
    # rate gates' own reference (``*_rate_rise``), so a device's normal is its own
    prev_inferences: int = 0
    prev_errors: int = 0
    prev_cloud: int = 0


@dataclass(frozen=True)
class StageEvidence:
    """What a staging device sent for its stage: a benchmark report (from a ``shadow`` report's
    metrics), its shadow tally since the stage began (telemetry), or a failed ``shadow`` report
    without figures (the candidate could not be fetched, verified or self-tested)."""

    device: str
    report: BenchmarkReport | None = None
    tally: ShadowTally | None = None
    failed: str = ""
    task: str = ""  # the candidate's task, for the shadow gate's wording


Event = Command | DeviceSeen | InstallReport | Health | WindowClosed | StageEvidence | Elsewhere


# ---- outputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Issue:
    """Sign and publish a new desired document for ``device``: install ``bundle``, or roll back
    to it (``action='rollback'``), or ``idle`` when there is nothing to go back to."""

    device: str
    action: str
    bundle: str | None


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: str
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class IssueStage:
    """Sign and publish ``device``'s document for ``stage`` (:func:`hub.stages.desired_for`):
    it keeps ``active`` and runs ``bundle`` (the candidate) beside it; ``stage='end'``: keep
    ``active``, no candidate any more (the stage failed or the rollout stopped)."""

    device: str
    stage: str
    bundle: str
    active: str | None


Action = Issue | Alert | IssueStage
