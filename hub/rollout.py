"""The rollout state machine. Pure: no clock, no I/O. ``advance(state, events, now, policy)``
returns the next state and the actions the shell (:mod:`hub.rollouts`) must carry out.

Rollout phases (``RolloutState.phase``)::

    running ──breach(on_breach=pause)──▶ paused ──resume/approve──▶ running
       │  └──cohort soaked, approve_each_cohort──▶ awaiting_approval ──approve──▶ running
       ├──breach(on_breach=abort)──▶ aborted  (nobody new is issued) ──rollback cmd──▶ rolled_back
       ├──breach(on_breach=rollback) / rollback cmd──▶ rolled_back   (terminal)
       ├──cancel cmd──▶ cancelled                      (terminal)
       └──last cohort soaked and gates pass──▶ completed ──device joins, or an offline or
                                                    timed-out one comes back, or a retry
                                                    cmd re-issues a failed one──▶ running

Device states (``DeviceState.state``)::

    pending ─(its cohort opens; compatible)─▶ issued ─progress─▶ installing ─ok─▶ installed
    pending ─(incompatible inventory)─▶ incompatible
    pending ─(cohort 1 opens; policy has stages; device runs a bundle)─▶ staging ─(every stage
        passes)─▶ issued        (rule 3b; a stage failing: failed, the rollout aborted)
    pending ─(its cohort opens; its group's maintenance window closed)─▶ waiting ─(window open,
        rollout running)─▶ issued        (any issue of an install, a retry too, waits the same way)
    installing ─(report: held by the app until T)─▶ installing, its timeout counting from T
    issued/installing ─failed(retryable) or timeout, attempts < 1 + max_retries─▶ issued (re-issued)
    issued/installing ─failed(other reason)─▶ failed
    issued/installing ─timeout, retries spent─▶ timed_out ─comes back online─▶ issued (re-issued)
    failed/timed_out ─retry cmd (running or completed)─▶ issued (attempts start again)
    any issued-or-later ─rollback─▶ rolling_back ─ok / status shows previous bundle─▶ rolled_back
    (no previous bundle: told ``idle``, keeps serving; its idle-ok report settles it as
    rolled_back with reason NO_PREVIOUS, and the rollout's reason counts such devices)
    pending/waiting ─cancel/abort/rollback─▶ cancelled   (rollback: a waiting device that was
        issued before is told to roll back instead; it may have installed meanwhile)

Rules, in the order ``advance`` applies them:

1. **Operator commands** (``Command``; triggered by the API/CLI) come first. ``pause`` stops
   issuance; ``resume`` restarts it; ``approve`` opens the next cohort from ``awaiting_approval``
   or lifts a gate pause (the breach is acknowledged, gates are re-armed for the next cohort);
   ``cancel`` stops the rollout and cancels devices not yet issued (devices keep what they run);
   ``rollback`` issues every issued-or-later device a NEW document naming the bundle it ran
   before (or ``idle`` if none), also after an abort (abort stops issuing; the devices that
   installed keep the bundle until someone rolls back). ``retry`` (the operator's "retry failed
   installs", for the command's ``devices`` or, when it names none, every device of the rollout)
   re-issues each ``failed`` or ``timed_out`` device with its attempts counted afresh (the
   automatic retries were spent; the operator fixed something), as any issue respects the
   device's maintenance window; other devices are left as they are; a ``completed`` rollout
   that re-issues any is ``running`` again. :data:`COMMAND_PHASES` says where each
   command applies (:func:`command_applies`); the shell refuses the rest with 409, the machine
   ignores them.
2. **Device observations** (``DeviceSeen``; from retained status): a device new to the rollout
   is added as ``pending`` (the shell sends only devices that match the target); a status
   whose active bundle is the target settles an issued/installing device as ``installed``;
   one whose active bundle is the previous bundle settles a ``rolling_back`` device; a
   ``timed_out`` device that comes back online is re-issued the rollout's *current* target
   (or, in a rolled-back rollout, its previous bundle), never an intermediate one; a ``waiting``
   device whose status shows the target is ``installed``.
3. **Install reports** (``InstallReport``; the shell matched ``desired_seq`` to this
   rollout): progress moves ``issued`` to ``installing``; ``commit``/``switch`` ok installs;
   ``failed`` re-issues when the reason is retryable (timeout, hash/length mismatch,
   malformed, internal, expired) and attempts remain, else the device is ``failed``;
   ``rollback``/``ok`` with a reason other than ``ok`` (the agent gave the bundle up after
   installing it: errors or crashes on probation) fails an issued or installed device. A
   progress report with ``hold_until`` (an app on the device holds the switch, agent/README.md)
   says "held by app until T" and moves the device's timeout to start at T, T capped at
   ``now + max_hold_s``: a device that claims a longer hold still times out.
3b. **Stages** (``policy.stages``, :mod:`hub.stages`; none by default): a first-cohort device
   that runs a bundle is not issued the install but its first stage's document (``IssueStage``:
   its active bundle kept, the candidate beside it) and is ``staging``; the shell sends what it
   reported (``StageEvidence``: a benchmark report, its shadow tally since the stage began, or
   a failed shadow report). While ``running``, :func:`hub.stages.step` judges each staging
   device: a pass starts the next stage, after the last the install is issued (any later
   issue of it, a retry too, goes straight to the install); waiting records the figures so
   far; an offline device's stage does not time out and starts again when it is back. A fail
   (the gate, no figures after ``timeout_s``, or a candidate that never ran) fails the device,
   tells every staging device to drop the candidate (``IssueStage('end')``), cancels pending
   ones and **aborts** the rollout whatever ``on_breach`` says (nothing switched: nothing to
   pause over or roll back), the reason naming the device, the stage and the figure. Pause
   holds the judging; cancel and rollback end every stage. A device with no active bundle has
   nothing to compare with: its stages are recorded ``skipped`` and it installs.
4. **Timeouts**: an ``issued``/``installing`` device older than ``install_timeout_s`` is
   re-issued while attempts remain (``1 + max_retries`` in all), else ``timed_out``.
5. **Maintenance windows** (``WindowClosed`` events; the shell sends one per device whose
   group's window is closed now, with when it opens; none when ``policy.ignore_windows``): an
   install is never issued to such a device; it is ``waiting`` with "waiting for window (opens
   at ...)" and counts as neither failed nor timed out (no timeout runs while it waits). While
   ``running``, a waiting device whose window is open is issued. Cohorts take devices with open
   windows first, so a canary is not stuck behind a closed window. A rollback ignores windows:
   it is the emergency path (as Mender and hawkBit let a forced action override a window); a
   rollout created with ``ignore_windows`` ignores them for its installs too.
6. **Cohorts** (only while ``running``): cohort sizes are cumulative (``"1"``, ``"10%"``,
   ``"50%"``, ``"100%"`` of the devices in the rollout, at least one more than the previous
   cohort, the last always everything). Opening a cohort assigns the next pending devices (in
   id order) and issues the compatible ones; incompatible ones are marked and never issued.
7. **Gates**, over every device assigned so far, evaluated on each ``advance`` while
   ``running`` (a stopped or completed rollout keeps its last results):
   install failure rate (failed + timed_out over settled), p95 latency vs the previous model on
   the same devices (merged sketches), error rate, cloud-fallback rate, drift
   (:func:`protocol.sketch.drift_verdict` on merged bin counts vs the bundle's baseline, each
   feature under its own thresholds as the device page and the alerts judge it: breach on
   ``alert``; JS over ``max_js``), shadow agreement. A gate
   without enough samples is ``insufficient_data``: it never breaches; with
   ``require_samples`` the inference-fed gates (error rate, p95, cloud rate), and drift once
   devices send drift counts, hold the cohort open until they have data. Windows that overlap
   a period the fleet was recovering (the hub's broker connection down, and a minute after it
   came back: agents reconnect and resend their backlog, latency then is not the model's) are
   left out by the shell, and every telemetry gate's detail says how many. Bounded influence:
   when two or more devices feed a telemetry gate, its breach must survive leaving out the
   device that feeds it most (else it passes, the detail naming that device); a cohort of one
   device breaches on its own. A breach triggers ``on_breach`` once
   (``pause`` | ``abort`` | ``rollback``) and emits an ``Alert``.
8. **Soak**: when every assigned device is settled (installed / failed / timed_out /
   incompatible) or offline (a ``waiting`` device is neither: the cohort waits for its
   window), and at least one is settled (a cohort whose devices all went
   offline has taught nothing: it waits), ``soak_started`` is set; after ``soak_s`` with no breach the next cohort opens
   (or ``awaiting_approval`` if ``approve_each_cohort``), or after the last cohort the rollout
   is ``completed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from protocol.benchmark import BenchmarkReport
from protocol.bundle import Requirements
from protocol.device import Inventory
from protocol.sketch import DriftThresholds, LatencySketch, drift_verdict, merge_counts

from . import compat, stages as stage_rules
from .stages import ShadowTally, StageError, StagePolicy

NO_PREVIOUS = "no previous bundle: told idle, keeps serving this rollout's bundle"
PHASES = ("running", "paused", "awaiting_approval", "completed", "aborted", "rolled_back", "cancelled")
TERMINAL_PHASES = ("aborted", "rolled_back", "cancelled")
ACTIVE_PHASES = ("running", "paused", "awaiting_approval")  # a rollout that still owns its devices
SETTLED = ("installed", "failed", "timed_out", "incompatible")
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
# the phases in which each operator command applies (rule 1); the shell answers 409 otherwise
COMMAND_PHASES: dict[str, tuple[str, ...]] = {
    "pause": ("running", "awaiting_approval", "completed"),
    "resume": ("paused",),
    "approve": ("awaiting_approval", "paused"),
    "cancel": ("running", "paused", "awaiting_approval", "completed"),
    "rollback": ("running", "paused", "awaiting_approval", "completed", "aborted"),
    "retry": ("running", "completed"),  # issuing is stopped while paused or awaiting approval
}


def command_applies(op: str, phase: str) -> bool:
    """Does operator command ``op`` do anything in ``phase``? (:data:`COMMAND_PHASES`)"""
    return phase in COMMAND_PHASES.get(op, ())


class PolicyError(ValueError):
    """A rollout policy field is invalid; the message names it and the value."""


@dataclass(frozen=True)
class Gates:
    max_install_failure_rate: float = 0.0
    max_p95_ratio: float | None = 1.5  # new p95 / previous model's p95 on the same devices
    min_p95_delta_ms: float = 1.0  # ...and at least this much slower: sub-ms jitter is not a regression
    max_error_rate: float | None = 0.05  # errors / (inferences + errors)
    max_cloud_rate: float | None = None  # cloud fallbacks / inferences
    drift: bool = True  # PSI alert on any baseline feature breaches
    max_js: float | None = None
    min_shadow_agreement: float | None = None
    min_samples: int = 50  # inferences (or shadow comparisons) before a gate judges


@dataclass(frozen=True)
class Policy:
    """Defaults are the *simple* rollout (everyone at once, pause on a breach). The ``staged``
    preset is the canary path: 1 → 10 % → 50 % → 100 %, 60 s soak, automatic rollback."""

    cohorts: tuple[str, ...] = ("100%",)
    soak_s: int = 0
    install_timeout_s: int = 600
    max_retries: int = 2
    on_breach: str = "pause"
    approve_each_cohort: bool = False
    require_samples: bool = False
    ignore_windows: bool = False  # install outside maintenance windows (rule 5)
    max_hold_s: int = 3600  # the longest an app's hold on a device's switch delays its timeout
    gates: Gates = Gates()
    stages: StagePolicy = StagePolicy()  # benchmark/shadow before cohort 1 switches (rule 3b); none by default

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Policy:
        """Fields as in :meth:`to_dict`; ``"preset": "simple" | "staged"`` sets the defaults
        the other fields override."""
        obj = dict(obj)
        preset = obj.pop("preset", "simple")
        if preset not in PRESETS:
            raise PolicyError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        obj = {**PRESETS[preset], **obj, "gates": {**PRESETS[preset].get("gates", {}), **(obj.get("gates") or {})}}
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(obj) - known
        if unknown:
            raise PolicyError(f"unknown policy fields {sorted(unknown)}; known: {sorted(known)}")
        g = obj.get("gates", {})
        if not isinstance(g, Mapping):
            raise PolicyError(f"gates must be an object, got {g!r:.60}")
        gknown = set(Gates.__dataclass_fields__)
        if set(g) - gknown:
            raise PolicyError(f"unknown gates {sorted(set(g) - gknown)}; known: {sorted(gknown)}")
        try:
            gates = Gates(**{k: _num(k, v) for k, v in g.items()})
            kw = {k: v for k, v in obj.items() if k != "gates"}
            if "cohorts" in kw:
                kw["cohorts"] = tuple(str(c) for c in kw["cohorts"])
            if "stages" in kw:  # a bare list is the stages with their default gates
                raw = kw["stages"] or {}
                if not isinstance(raw, list | tuple | Mapping):
                    raise StageError(f"must be a list of stages or an object, got {raw!r:.60}")
                kw["stages"] = StagePolicy.from_dict({"stages": raw} if isinstance(raw, list | tuple) else raw)
            p = cls(**kw, gates=gates)
        except StageError as exc:
            raise PolicyError(f"stages: {exc}") from None
        except TypeError as exc:
            raise PolicyError(str(exc)) from None
        p.validate()
        return p

    def validate(self) -> None:
        if not self.cohorts:
            raise PolicyError("cohorts must name at least one cohort")
        for c in self.cohorts:
            _parse_size(c)
        if self.on_breach not in BREACH_ACTIONS:
            raise PolicyError(f"on_breach must be one of {BREACH_ACTIONS}, got {self.on_breach!r}")
        if not isinstance(self.ignore_windows, bool):
            raise PolicyError(f"ignore_windows must be true/false, got {self.ignore_windows!r}")
        for name in ("soak_s", "install_timeout_s", "max_retries", "max_hold_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise PolicyError(f"{name} must be an int >= 0, got {v!r}")
        if self.install_timeout_s < 1:
            raise PolicyError(f"install_timeout_s must be >= 1, got {self.install_timeout_s}")
        if self.gates.min_samples < 1:
            raise PolicyError(f"gates.min_samples must be >= 1, got {self.gates.min_samples}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "cohorts": list(self.cohorts),
            "soak_s": self.soak_s,
            "install_timeout_s": self.install_timeout_s,
            "max_retries": self.max_retries,
            "on_breach": self.on_breach,
            "approve_each_cohort": self.approve_each_cohort,
            "require_samples": self.require_samples,
            "ignore_windows": self.ignore_windows,
            "max_hold_s": self.max_hold_s,
            "gates": dict(self.gates.__dict__),
            "stages": self.stages.to_dict(),
        }


PRESETS: dict[str, dict[str, Any]] = {
    "simple": {},
    "staged": {"cohorts": ["1", "10%", "50%", "100%"], "soak_s": 60, "on_breach": "rollback"},
}


def _num(name: str, v: Any) -> Any:
    if name == "drift":
        if not isinstance(v, bool):
            raise PolicyError(f"gates.drift must be true/false, got {v!r}")
        return v
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise PolicyError(f"gates.{name} must be a number >= 0 or null, got {v!r}")
    return int(v) if name == "min_samples" else float(v)


def _parse_size(spec: str) -> tuple[str, float]:
    s = str(spec).strip()
    try:
        if s.endswith("%"):
            pct = float(s[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return "pct", pct
        n = int(s)
        if n < 1:
            raise ValueError
        return "count", float(n)
    except ValueError:
        raise PolicyError(f"cohort size {spec!r} must be a count >= 1 or a percentage like '10%'") from None


def cohort_sizes(cohorts: Sequence[str], total: int) -> list[int]:
    """Cumulative device counts per cohort: strictly growing while devices remain, last = total."""
    out: list[int] = []
    for i, spec in enumerate(cohorts):
        kind, value = _parse_size(spec)
        want = int(value) if kind == "count" else math.ceil(value * total / 100)
        prev = out[-1] if out else 0
        want = max(want, prev + 1)
        if i == len(cohorts) - 1:
            want = total
        out.append(min(want, total))
    while len(out) > 1 and out[-2] >= total:  # cohorts that would add nobody are dropped
        out.pop()
    return out


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


Event = Command | DeviceSeen | InstallReport | Health | WindowClosed | StageEvidence


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


# ---- the machine -----------------------------------------------------------------------------
def advance(
    state: RolloutState, events: Sequence[Event], now: int, policy: Policy
) -> tuple[RolloutState, list[Action]]:
    devs = {d.id: d for d in state.devices}
    actions: list[Action] = []
    st = state
    health: dict[str, Health] = {}
    closed = {} if policy.ignore_windows else {e.device: e.opens for e in events if isinstance(e, WindowClosed)}

    def put(d: DeviceState) -> None:
        devs[d.id] = d

    def issue(d: DeviceState, reason: str = "") -> DeviceState:
        if st.phase == "rolled_back":
            actions.append(Issue(d.id, "rollback" if d.from_bundle else "idle", d.from_bundle))
            return replace(d, state="rolling_back", attempts=d.attempts + 1, issued_at=now, reason=reason)
        if d.id in closed:  # rule 5: nothing new outside the device's maintenance window
            return replace(d, state="waiting", reason=waiting_reason(closed[d.id]))
        if policy.stages.stages and d.cohort == 0 and not stages_passed(d):  # rule 3b
            if d.from_bundle is not None:
                return start_stage(d, policy.stages.stages[0])
            skip = {"state": "skipped", "detail": "no active bundle to compare the candidate with"}
            d = replace(d, stages={n: dict(skip) for n in policy.stages.stages})
        actions.append(Issue(d.id, "install", st.bundle))
        return replace(d, state="issued", attempts=d.attempts + 1, issued_at=now, reason=reason)

    def stages_passed(d: DeviceState) -> bool:
        return all(d.stages.get(n, {}).get("state") in ("pass", "skipped") for n in policy.stages.stages)

    def start_stage(d: DeviceState, name: str) -> DeviceState:
        actions.append(IssueStage(d.id, name, st.bundle, d.from_bundle))
        entry = {"state": "waiting", "detail": f"{name}: asked", "figures": {}, "started": now}
        log = {**d.stages, name: entry}
        return replace(d, state="staging", stage=name, issued_at=now, reason=f"{name}: asked", stages=log)

    def end_stage(d: DeviceState, state: str, reason: str) -> DeviceState:
        actions.append(IssueStage(d.id, "end", st.bundle, d.from_bundle))
        return replace(d, state=state, stage="", reason=reason)

    def roll_back_all(reason: str) -> str:
        """Returns what the rollout's reason adds: how many devices have nothing to go back to."""
        keep = sum(
            1
            for d in devs.values()
            if d.from_bundle is None and d.state in ("issued", "installing", "installed", "failed", "timed_out")
        )
        for d in list(devs.values()):
            if d.state in ("issued", "installing", "installed", "failed", "timed_out") or (
                d.state == "waiting" and d.attempts > 0
            ):
                actions.append(Issue(d.id, "rollback" if d.from_bundle else "idle", d.from_bundle))
                put(replace(d, state="rolling_back", issued_at=now, reason=reason))
            elif d.state in ("pending", "waiting"):
                put(replace(d, state="cancelled", reason=reason))
            elif d.state == "staging":
                put(end_stage(d, "cancelled", reason))
        return f"; {keep} device(s) had no previous bundle and keep serving this one" if keep else ""

    def cancel_pending(reason: str) -> None:
        for d in list(devs.values()):
            if d.state in ("pending", "waiting"):
                put(replace(d, state="cancelled", reason=reason))
            elif d.state == "staging":  # the candidate it runs beside its bundle goes
                put(end_stage(d, "cancelled", reason))

    # 1. operator commands
    for ev in events:
        if not isinstance(ev, Command) or not command_applies(ev.op, st.phase):
            continue
        who = f" by {ev.actor}" if ev.actor else ""
        if ev.op == "pause":
            st = replace(st, phase="paused", reason=f"paused{who}")
        elif ev.op == "resume":
            st = replace(st, phase="running", reason=f"resumed{who}")
        elif ev.op == "approve" and st.phase == "awaiting_approval":
            st = replace(st, phase="running", reason=f"approved{who}")
            st = _open_next(st, devs, now, policy, issue, put, closed)
        elif ev.op == "approve" and st.phase == "paused":
            breach = st.reason.startswith("gate breach")
            st = replace(st, phase="running", reason=f"approved{who}")
            if breach:  # the operator accepts what the gates saw; judge only new cohorts from here
                st = replace(st, gate_floor=st.cohort + 1)
                st = _open_next(st, devs, now, policy, issue, put, closed)
        elif ev.op == "cancel":
            cancel_pending(f"cancelled{who}")
            st = replace(st, phase="cancelled", reason=f"cancelled{who}")
        elif ev.op == "rollback":
            kept = roll_back_all(f"rollback{who}")
            st = replace(st, phase="rolled_back", reason=f"rolled back{who}{kept}")
        elif ev.op == "retry":
            chosen = [devs[i] for i in ev.devices if i in devs] if ev.devices else list(devs.values())
            again = [x for x in chosen if x.state in RETRY_FROM]
            for x in again:
                put(issue(replace(x, attempts=0), f"retry{who}"))
            if again and st.phase == "completed":
                st = replace(st, phase="running", reason=f"{len(again)} device(s) retried{who}")

    # 2./3. observations and reports
    for ev in events:
        if isinstance(ev, DeviceSeen):
            d = devs.get(ev.device)
            if d is None:
                if st.phase in TERMINAL_PHASES:
                    continue
                d = DeviceState(ev.device, from_bundle=ev.active if ev.active != st.bundle else None, online=ev.online)
                verdict = compat.check(st.requirements, ev.inventory, ev.agent_version)
                if not verdict.ok:
                    d = replace(d, state="incompatible", reason=f"{verdict.reason.value}: {verdict.detail}")
                elif ev.active == st.bundle:
                    d = replace(d, state="installed", reason="already running the bundle")
                if st.phase == "completed" and d.state == "pending":
                    st = replace(st, phase="running", reason=f"device {ev.device} joined")
                put(d)
                continue
            came_back = ev.online and not d.online
            d = replace(d, online=ev.online)
            if came_back and d.state in (*ISSUED, "staging"):
                d = replace(d, issued_at=now)  # its timeout runs while it can act
                if st.phase == "completed" and ev.active != st.bundle:  # not done while it installs
                    st = replace(st, phase="running", reason=f"device {ev.device} came back and installs")
            if d.state == "pending" and d.cohort is None and ev.active is not None and ev.active != st.bundle:
                d = replace(d, from_bundle=ev.active)
            if came_back and d.state == "waiting" and st.phase == "completed":
                st = replace(st, phase="running", reason=f"device {ev.device} came back and waits for its window")
            if d.state in (*ISSUED, "waiting") and ev.active == st.bundle and st.phase != "rolled_back":
                d = replace(d, state="installed", reason="")
            elif d.state == "rolling_back" and ev.active == d.from_bundle:
                d = replace(d, state="rolled_back", reason="")
            elif d.state == "timed_out" and came_back and st.phase not in ("aborted", "cancelled"):
                d = issue(d, "re-issued: device came back online")
                if st.phase == "completed":  # not done while one of its devices installs again
                    st = replace(st, phase="running", reason=f"device {ev.device} came back and was re-issued")
            elif d.state == "pending" and d.cohort is None and ev.active == st.bundle:
                d = replace(d, state="installed", reason="already running the bundle")
            put(d)
        elif isinstance(ev, InstallReport):
            d = devs.get(ev.device)
            if d is None:
                continue
            if d.state == "rolling_back":
                if ev.status == "ok" and ev.stage in ("commit", "switch", "rollback"):
                    put(replace(d, state="rolled_back", reason=""))
                elif ev.status == "ok" and ev.stage == "idle" and d.from_bundle is None:
                    put(replace(d, state="rolled_back", reason=NO_PREVIOUS))
                elif ev.status == "failed":
                    put(replace(d, reason=f"rollback failed: {ev.reason}: {ev.detail}"[:300]))
                continue
            if (
                ev.stage == "rollback"
                and ev.status == "ok"
                and ev.reason != "ok"
                and (d.state in ISSUED or d.state == "installed")
            ):
                # the device installed the bundle, then gave it up (probation errors, crashes)
                put(replace(d, state="failed", reason=f"rolled back on the device: {ev.reason}: {ev.detail}"[:300]))
                continue
            if d.state not in ISSUED:
                continue
            if ev.status == "failed":
                why = f"{ev.reason}: {ev.stage}: {ev.detail}"[:300]
                if ev.reason in RETRYABLE and d.attempts < 1 + policy.max_retries and st.phase == "running":
                    put(issue(d, f"retry after {why}"))
                else:
                    put(replace(d, state="failed", reason=why))
            elif ev.status == "ok" and ev.stage in ("commit", "switch"):
                put(replace(d, state="installed", reason=""))
            elif ev.status == "progress" and ev.hold_until > 0:
                until = min(ev.hold_until, now + policy.max_hold_s)
                why = f"held by app until {_utc(until)}" + (f": {ev.hold_reason}" if ev.hold_reason else "")
                put(replace(d, state="installing", issued_at=max(d.issued_at, until), reason=why[:300]))
            else:
                put(replace(d, state="installing", reason=ev.stage))
        elif isinstance(ev, Health):
            health[ev.device] = ev

    # 3b. stages of the first cohort (hub.stages): judged while running, from what devices sent
    if st.phase == "running" and any(d.state == "staging" for d in devs.values()):
        failures = _step_stages(devs, events, now, policy, put, issue, start_stage, end_stage)
        if failures:
            msg = f"stage failed on {failures[0][0]}: {failures[0][1]}"
            if len(failures) > 1:
                msg += f" (and {len(failures) - 1} more device(s))"
            actions.append(
                Alert(
                    "rollout_gate",
                    "alert",
                    f"cohort 1 {msg}",
                    {"stages": [{"device": i, "detail": w} for i, w in failures], "cohort": 0},
                )
            )
            cancel_pending(f"aborted: {msg}")
            st = replace(st, phase="aborted", reason=msg)

    # 4. timeouts
    for d in list(devs.values()):
        # offline devices do not time out: their retained desired doc waits for them
        if d.state in ISSUED and d.online and now - d.issued_at >= policy.install_timeout_s:
            if d.attempts < 1 + policy.max_retries and st.phase == "running":
                put(issue(d, f"retry after timeout ({policy.install_timeout_s}s)"))
            else:
                put(replace(d, state="timed_out", reason=f"no result within {policy.install_timeout_s}s"))

    # 5. maintenance windows: a waiting device goes as soon as its window is open
    for d in list(devs.values()):
        if d.state == "waiting":
            if d.id in closed:
                put(replace(d, reason=waiting_reason(closed[d.id])))
            elif st.phase == "running":
                put(issue(d, "maintenance window open"))

    # 6.-8. cohorts, gates, soak
    if st.phase in ("running", "completed") and st.cohort < 0:
        st = _open_next(st, devs, now, policy, issue, put, closed)
    elif st.phase == "running" and st.cohort >= 0:
        # devices that joined after their cohort size was computed go to the open cohort
        sizes = cohort_sizes(policy.cohorts, _eligible(devs))
        if sizes:
            _assign(devs, sizes[min(st.cohort, len(sizes) - 1)], st.cohort, issue, put, closed)

    # gates judge a running rollout; once it stops or completes, its last judgement stands
    gates = (
        evaluate_gates(st, [d for d in devs.values() if (d.cohort or 0) >= st.gate_floor], health, policy)
        if st.phase == "running"
        else list(st.gates)
    )
    st = replace(st, gates=tuple(gates))
    breached = [g for g in gates if g.status == "breach"]
    if breached and st.phase == "running":
        msg = "; ".join(f"{g.name} {g.detail}" for g in breached)
        actions.append(
            Alert(
                "rollout_gate",
                "alert",
                f"cohort {st.cohort + 1} breached: {msg}",
                {"gates": [g.to_dict() for g in breached], "cohort": st.cohort, "on_breach": policy.on_breach},
            )
        )
        if policy.on_breach == "pause":
            st = replace(st, phase="paused", reason=f"gate breach: {msg}")
        elif policy.on_breach == "abort":
            cancel_pending(f"aborted: {msg}")
            st = replace(st, phase="aborted", reason=f"gate breach: {msg}")
        else:
            kept = roll_back_all(f"automatic rollback: {msg}")
            st = replace(st, phase="rolled_back", reason=f"gate breach: {msg}{kept}")

    if st.phase == "running":
        assigned = [d for d in devs.values() if d.cohort is not None]
        # an offline device never blocks a cohort, but a cohort nobody has settled in has
        # taught nothing: all its devices offline is a wait, not a pass
        settled = all(d.state in SETTLED or not d.online for d in assigned) and any(
            d.state in SETTLED for d in assigned
        )
        if settled and st.soak_started is None:
            st = replace(st, soak_started=now)
        # drift has its own sample floor (the baseline's min_samples): wait for it too once the
        # devices are sending drift counts at all, or a drifting model passes on latency alone
        waiting_for = SAMPLE_GATES + (("drift",) if any(h.drift for h in health.values()) else ())
        waiting_data = policy.require_samples and any(
            g.status == "insufficient_data" for g in gates if g.name in waiting_for
        )
        if settled and st.soak_started is not None and now - st.soak_started >= policy.soak_s and not waiting_data:
            sizes = cohort_sizes(policy.cohorts, _eligible(devs))
            if st.cohort >= len(sizes) - 1 and all(d.cohort is not None or d.state in SETTLED for d in devs.values()):
                st = replace(st, phase="completed", reason=_completion_reason(gates))
            elif policy.approve_each_cohort:
                st = replace(
                    st,
                    phase="awaiting_approval",
                    reason=f"cohort {st.cohort + 1} of {len(sizes)} passed; waiting for approve",
                )
            else:
                st = _open_next(st, devs, now, policy, issue, put, closed)

    ordered = tuple(sorted(devs.values(), key=lambda d: d.id))
    return replace(st, devices=ordered), actions


def _step_stages(
    devs: dict[str, DeviceState],
    events: Sequence[Event],
    now: int,
    policy: Policy,
    put: Callable[[DeviceState], None],
    issue: Callable[[DeviceState, str], DeviceState],
    start_stage: Callable[[DeviceState, str], DeviceState],
    end_stage: Callable[[DeviceState, str, str], DeviceState],
) -> list[tuple[str, str]]:
    """Rule 3b: each staging device's stage judged by :func:`hub.stages.step`; a pass moves it
    to the next stage or, after the last, to the install; a fail ends its stage. Returns the
    failures (device, detail): the caller halts the rollout on any."""
    seen: dict[str, StageEvidence] = {}
    for e in events:
        if isinstance(e, StageEvidence):
            old = seen.get(e.device, StageEvidence(e.device))
            seen[e.device] = StageEvidence(
                e.device, e.report or old.report, e.tally or old.tally, old.failed or e.failed, e.task or old.task
            )
    failures: list[tuple[str, str]] = []
    for d in sorted((x for x in devs.values() if x.state == "staging"), key=lambda x: x.id):
        ev = seen.get(d.id, StageEvidence(d.id))
        started = d.issued_at
        if ev.failed and not (d.stage == "benchmark" and ev.report is not None):
            v = stage_rules.Verdict("fail", f"{d.stage}: the candidate did not run: {ev.failed}"[:300], {})
            res = stage_rules.Step(stage_rules.FAILED, True, v)
        else:
            # an offline device's stage does not time out: it cannot act (it restarts when back)
            res = stage_rules.step(
                d.stage, started, now if d.online else started, policy.stages, ev.report, ev.tally, ev.task
            )
        v = res.verdict
        entry = {"state": v.state, "detail": v.detail, "figures": dict(v.figures), "started": started}
        d = replace(d, stages={**d.stages, d.stage: entry}, reason=v.detail[:300])
        if res.stage == stage_rules.FAILED:
            put(end_stage(d, "failed", v.detail[:300]))
            failures.append((d.id, v.detail))
        elif res.stage == stage_rules.DONE:
            put(issue(replace(d, stage=""), f"stages passed: {v.detail}"[:300]))
        elif res.moved:
            put(start_stage(d, res.stage))
        else:
            put(d)
    return failures


def _eligible(devs: Mapping[str, DeviceState]) -> int:
    """Devices cohort sizes are computed over: everyone who could be issued the bundle."""
    return sum(1 for d in devs.values() if d.state != "incompatible")


def waiting_reason(opens: int) -> str:
    return f"waiting for window (opens at {_utc(opens)})"


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _assign(
    devs: dict[str, DeviceState],
    upto: int,
    cohort: int,
    issue: Any,
    put: Any,
    closed: Mapping[str, int] | None = None,
) -> None:
    """Give the next unassigned devices (online first, then those whose maintenance window is
    open, then by id) to ``cohort`` until ``upto`` eligible devices are assigned. Incompatible
    ones are marked with the cohort but not counted."""
    closed = closed or {}
    waiting = [d for d in devs.values() if d.cohort is None]
    if not waiting:
        return
    assigned = sum(1 for d in devs.values() if d.cohort is not None and d.state != "incompatible")
    for d in sorted(waiting, key=lambda x: (not x.online, x.id in closed, x.id)):
        if d.cohort is not None:
            continue
        if d.state == "incompatible":
            put(replace(d, cohort=cohort))
            continue
        if assigned >= upto:
            continue
        put(issue(replace(d, cohort=cohort)) if d.state == "pending" else replace(d, cohort=cohort))
        assigned += 1


def _open_next(
    st: RolloutState,
    devs: dict[str, DeviceState],
    now: int,
    policy: Policy,
    issue: Any,
    put: Any,
    closed: Mapping[str, int] | None = None,
) -> RolloutState:
    sizes = cohort_sizes(policy.cohorts, _eligible(devs))
    if not sizes:
        return replace(st, cohort=max(st.cohort, 0), soak_started=None)
    nxt = min(st.cohort + 1, len(sizes) - 1)
    st = replace(st, cohort=nxt, cohort_started=now, soak_started=None)
    _assign(devs, sizes[nxt], nxt, issue, put, closed)
    return st


def _completion_reason(gates: Sequence[GateResult]) -> str:
    """What a completed rollout says: "passed" only for gates that judged something; the ones
    that never had data are named (a gate without samples never breaches, so it proved nothing)."""
    judged = [g.name for g in gates if g.status == "pass"]
    blind = [g.name for g in gates if g.status == "insufficient_data"]
    if not blind:
        return "every cohort passed its gates"
    if not judged:
        return f"every cohort installed; no gate had data to judge ({', '.join(blind)})"
    return f"every cohort passed {', '.join(judged)}; no data for {', '.join(blind)}"


def evaluate_gates(
    st: RolloutState, devices: Sequence[DeviceState], health: Mapping[str, Health], policy: Policy
) -> list[GateResult]:
    """Gate results over every device assigned so far (cumulative cohorts)."""
    g = policy.gates
    out: list[GateResult] = []
    assigned = [d for d in devices if d.cohort is not None and d.state != "incompatible"]
    bad = sum(1 for d in assigned if d.state in ("failed", "timed_out"))
    settled = sum(1 for d in assigned if d.state in SETTLED)
    # breach early: even if every unsettled device succeeds the rate is already too high
    rate = bad / len(assigned) if assigned else 0.0
    if assigned and (bad / len(assigned) > g.max_install_failure_rate):
        out.append(
            GateResult(
                "install_failure_rate",
                "breach",
                rate,
                g.max_install_failure_rate,
                f"{bad}/{len(assigned)} failed or timed out",
            )
        )
    else:
        out.append(
            GateResult(
                "install_failure_rate",
                "pass" if settled else "insufficient_data",
                rate,
                g.max_install_failure_rate,
                f"{bad}/{len(assigned)}",
            )
        )
    hs = [health[d.id] for d in assigned if d.id in health and d.state == "installed"]
    sampled = _one_device_is_not_a_fleet(st, hs, policy, _sample_gates(st, hs, policy))
    left_out = sum(h.recovery_windows for h in hs)
    if left_out:  # say why the gates saw fewer windows than the devices sent
        sampled = [
            replace(r, detail=f"{r.detail}; {left_out} windows from a recovery period left out") for r in sampled
        ]
    return out + sampled


# what each sample gate counts per device: the device with the most is the one that could carry it alone
_WEIGHT: dict[str, Callable[[Health], int]] = {
    "error_rate": lambda h: h.inferences + h.errors,
    "cloud_fallback_rate": lambda h: h.inferences,
    "p95_latency_ratio": lambda h: int(h.latency.get("n", 0)) if h.latency and h.prev_latency else 0,
    "drift": lambda h: sum(sum(c) for c in h.drift.values()),
    "shadow_agreement": lambda h: h.shadow_total,
}


def _one_device_is_not_a_fleet(
    st: RolloutState, hs: Sequence[Health], policy: Policy, results: list[GateResult]
) -> list[GateResult]:
    """Bounded influence: with two or more devices feeding a gate, a breach must survive leaving
    out the device that feeds it most. One device (broken, or lying within what its own counts
    allow) can't pause or roll back a fleet's rollout; a cohort of one device still can."""
    out = []
    for r in results:
        weigh = _WEIGHT.get(r.name)
        fed = [h for h in hs if weigh is not None and weigh(h) > 0]
        if r.status != "breach" or weigh is None or len(fed) < 2:
            out.append(r)
            continue
        top = max(fed, key=weigh)
        again = next(x for x in _sample_gates(st, [h for h in hs if h is not top], policy) if x.name == r.name)
        if again.status == "breach":
            out.append(r)
        else:
            share = weigh(top) / sum(weigh(h) for h in fed)
            out.append(
                replace(
                    r,
                    status="pass",
                    detail=f"{r.detail}; breached only with {top.device} "
                    f"({share:.0%} of the samples, one of {len(fed)} devices): "
                    "one device is not a fleet regression",
                )
            )
    return out


def _sample_gates(st: RolloutState, hs: Sequence[Health], policy: Policy) -> list[GateResult]:
    """The gates fed by telemetry, over the installed devices' health ``hs``."""
    g = policy.gates
    out: list[GateResult] = []
    inferences = sum(h.inferences for h in hs)
    errors = sum(h.errors for h in hs)

    def ratio_gate(name: str, num: int, den: int, limit: float | None, what: str) -> None:
        if limit is None:
            return
        if den < g.min_samples:
            out.append(GateResult(name, "insufficient_data", None, limit, f"{den} < {g.min_samples} {what}"))
            return
        v = num / den
        out.append(GateResult(name, "breach" if v > limit else "pass", v, limit, f"{num}/{den}"))

    ratio_gate("error_rate", errors, inferences + errors, g.max_error_rate, "requests")
    ratio_gate("cloud_fallback_rate", sum(h.cloud for h in hs), inferences, g.max_cloud_rate, "inferences")

    if g.max_p95_ratio is not None:
        new, old = LatencySketch(), LatencySketch()
        for h in hs:
            if h.latency and h.prev_latency:  # same devices on both sides, or it is no comparison
                new = new.merge(LatencySketch.from_dict(dict(h.latency)))
                old = old.merge(LatencySketch.from_dict(dict(h.prev_latency)))
        if new.count < g.min_samples or old.count < g.min_samples:
            out.append(
                GateResult(
                    "p95_latency_ratio",
                    "insufficient_data",
                    None,
                    g.max_p95_ratio,
                    f"{new.count} new / {old.count} previous samples < {g.min_samples}",
                )
            )
        else:
            n95, o95 = new.quantile(0.95) or 0.0, old.quantile(0.95) or 0.0
            v = n95 / o95 if o95 > 0 else math.inf
            slower = v > g.max_p95_ratio and (n95 - o95) * 1000 > g.min_p95_delta_ms
            out.append(
                GateResult(
                    "p95_latency_ratio",
                    "breach" if slower else "pass",
                    v if math.isfinite(v) else None,
                    g.max_p95_ratio,
                    f"p95 {n95 * 1000:.2f} ms vs {o95 * 1000:.2f} ms before",
                )
            )

    if (g.drift or g.max_js is not None) and st.baseline:
        th = replace(st.drift_thresholds, min_samples=max(st.drift_thresholds.min_samples, 1))
        worst: GateResult | None = None
        any_data = False
        for feat, ref in sorted(st.baseline.items()):
            wins = [list(h.drift[feat]) for h in hs if feat in h.drift and len(h.drift[feat]) == len(ref)]
            if not wins:
                continue
            fth = st.feature_thresholds.get(feat, st.drift_thresholds)
            verdict = drift_verdict(list(ref), merge_counts(*wins), replace(fth, min_samples=max(fth.min_samples, 1)))
            if verdict.status == "insufficient_data":
                continue
            any_data = True
            js = verdict.js or 0.0
            breach = (g.drift and verdict.status == "alert") or (g.max_js is not None and js > g.max_js)
            res = GateResult(
                "drift",
                "breach" if breach else "pass",
                verdict.psi,
                fth.psi_alert,
                f"{feat}: PSI {verdict.psi:.3f}, JS {js:.3f} over {verdict.samples} samples",
            )
            if (
                worst is None
                or (res.status == "breach" and worst.status != "breach")
                or (res.status == worst.status and (res.value or 0) > (worst.value or 0))
            ):
                worst = res
        out.append(
            worst
            if worst is not None and any_data
            else GateResult(
                "drift", "insufficient_data", None, th.psi_alert, f"fewer than {th.min_samples} samples per feature"
            )
        )

    if g.min_shadow_agreement is not None:
        agree, total = sum(h.shadow_agree for h in hs), sum(h.shadow_total for h in hs)
        if total < g.min_samples:
            # say so when nothing came at all: the gate only judges devices running a shadow model
            why = (
                f"{total} < {g.min_samples} comparisons"
                if total
                else "no shadow comparisons: no device runs a shadow model beside the bundle"
            )
            out.append(GateResult("shadow_agreement", "insufficient_data", None, g.min_shadow_agreement, why))
        else:
            v = agree / total
            out.append(
                GateResult(
                    "shadow_agreement",
                    "breach" if v < g.min_shadow_agreement else "pass",
                    v,
                    g.min_shadow_agreement,
                    f"{agree}/{total} agree",
                )
            )
    return out
