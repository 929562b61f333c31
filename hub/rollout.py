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
    pending/staging/issued/installing ─a newer rollout of its channel takes it (the shell,
        reason SUPERSEDED)─▶ cancelled ─late report: commit/switch ok─▶ installed (reason kept)

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
1b. **Newer rollouts** own a device (``Elsewhere`` names those a newer one of the channel holds):
   a rollback (command or gate) or retry here leaves it alone, the reason counting them, and a
   timed-out one back online is not re-issued (the shell answers 409 when none is left).
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
   ``now + max_hold_s``: a device that claims a longer hold still times out. A ``cancelled``
   device's ``commit``/``switch`` ok installs it too, keeping its reason: the report of an
   install was still queued in the hub's ingest when a newer rollout superseded the row, and
   the record must not say cancelled of a device that installed this rollout's bundle.
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
4. **Timeouts**: an ``issued``/``installing`` device that has said nothing that moves its
   install on for ``install_timeout_s`` (counted from its document's issue and from each report
   with reason ``ok``: a download's progress, a stage done; a rejected chunk does not count) is
   re-issued while attempts remain (``1 + max_retries`` in all), else ``timed_out``; as a device
   resets AWS IoT Jobs' step timer with each in-progress update. A slow link that keeps reporting its
   download's progress is not restarted every ``install_timeout_s``. The clock moves only when a
   quarter of the timeout has passed since it last did (so a device times out 0.75-1x
   ``install_timeout_s`` after its last progress): every progress report moving it made each one a
   rollout-row write, and put the hub's ingest seconds behind at 1,000 devices (``bench rollout``).
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
6b. **Superseded** (only while ``running``): when every device of the rollout was taken by a
   newer rollout of its channel (reason :data:`SUPERSEDED`) or is incompatible, nothing is
   left to install or judge (its gates acting on devices the newer rollout owns would fight
   it): the rollout is ``completed`` at once, the reason counting those devices, its gates'
   last results kept. While others remain it goes on; rule 8 counts the superseded as done.
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
   incompatible), ``cancelled`` (a running rollout's devices are cancelled only when a newer
   rollout supersedes them: they never come back) or offline (a ``waiting`` device is none of
   these: the cohort waits for its window), and at least one is settled or all were
   superseded (a cohort whose devices all went offline has taught nothing: it waits),
   ``soak_started`` is set; after ``soak_s`` with no breach the next cohort opens
   (or ``awaiting_approval`` if ``approve_each_cohort``), or after the last cohort the rollout
   is ``completed``.

The rules' code, by noun: the vocabulary, state, events and actions in
:mod:`hub.rollout_state`, the policy in :mod:`hub.rollout_policy`, cohorts in
:mod:`hub.rollout_cohorts`, stages (3b) in :mod:`hub.rollout_stages`, gates (7) in
:mod:`hub.rollout_gates`; ``advance`` here applies them in order. Every public name is
importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from . import compat
from .rollout_cohorts import assign, eligible, open_next, utc, waiting_reason
from .rollout_gates import (
    completion_reason,
    evaluate_gates as evaluate_gates,
)
from .rollout_policy import (
    PRESETS as PRESETS,
    Gates as Gates,
    Policy as Policy,
    PolicyError as PolicyError,
    cohort_sizes as cohort_sizes,
)
from .rollout_stages import step_stages
from .rollout_state import (
    ACTIVE_PHASES as ACTIVE_PHASES,
    BREACH_ACTIONS as BREACH_ACTIONS,
    COMMAND_PHASES as COMMAND_PHASES,
    COMMANDS as COMMANDS,
    DONE as DONE,
    ISSUED as ISSUED,
    NO_PREVIOUS as NO_PREVIOUS,
    PHASES as PHASES,
    RETRY_FROM as RETRY_FROM,
    RETRYABLE as RETRYABLE,
    ROLLBACK_FROM as ROLLBACK_FROM,
    SAMPLE_GATES as SAMPLE_GATES,
    SETTLED as SETTLED,
    SUPERSEDED as SUPERSEDED,
    TERMINAL_PHASES as TERMINAL_PHASES,
    Action as Action,
    Alert as Alert,
    Command as Command,
    DeviceSeen as DeviceSeen,
    DeviceState as DeviceState,
    Elsewhere as Elsewhere,
    Event as Event,
    GateResult as GateResult,
    Health as Health,
    InstallReport as InstallReport,
    Issue as Issue,
    IssueStage as IssueStage,
    RolloutState as RolloutState,
    StageEvidence as StageEvidence,
    WindowClosed as WindowClosed,
    command_applies as command_applies,
    moved_by as moved_by,
)


# ---- the machine -----------------------------------------------------------------------------
def advance(
    state: RolloutState, events: Sequence[Event], now: int, policy: Policy
) -> tuple[RolloutState, list[Action]]:
    devs = {d.id: d for d in state.devices}
    actions: list[Action] = []
    st = state
    health: dict[str, Health] = {}
    closed = {} if policy.ignore_windows else {e.device: e.opens for e in events if isinstance(e, WindowClosed)}
    elsewhere = {e.device: e.rollout for e in events if isinstance(e, Elsewhere)}  # rule 1b

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
        """What the rollout's reason adds: devices with nothing to go back to, or held elsewhere (1b)."""
        held = [d.id for d in devs.values() if d.id in elsewhere and moved_by("rollback", d.state, d.attempts)]
        ours = [d for d in devs.values() if d.id not in elsewhere]
        keep = sum(1 for d in ours if d.from_bundle is None and d.state in ROLLBACK_FROM)
        for d in ours:
            if moved_by("rollback", d.state, d.attempts):
                actions.append(Issue(d.id, "rollback" if d.from_bundle else "idle", d.from_bundle))
                put(replace(d, state="rolling_back", issued_at=now, reason=reason))
            elif d.state in ("pending", "waiting"):
                put(replace(d, state="cancelled", reason=reason))
            elif d.state == "staging":
                put(end_stage(d, "cancelled", reason))
        said = f"; {keep} device(s) had no previous bundle and keep serving this one" if keep else ""
        if held:
            newer = ", ".join(sorted({elsewhere[i] for i in held}))
            said += f"; {len(held)} device(s) left alone: newer rollout {newer} holds them"
        return said

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
            st = open_next(st, devs, now, policy, issue, put, closed)
        elif ev.op == "approve" and st.phase == "paused":
            breach = st.reason.startswith("gate breach")
            st = replace(st, phase="running", reason=f"approved{who}")
            if breach:  # the operator accepts what the gates saw; judge only new cohorts from here
                st = replace(st, gate_floor=st.cohort + 1)
                st = open_next(st, devs, now, policy, issue, put, closed)
        elif ev.op == "cancel":
            cancel_pending(f"cancelled{who}")
            st = replace(st, phase="cancelled", reason=f"cancelled{who}")
        elif ev.op == "rollback":
            kept = roll_back_all(f"rollback{who}")
            st = replace(st, phase="rolled_back", reason=f"rolled back{who}{kept}")
        elif ev.op == "retry":
            chosen = [devs[i] for i in ev.devices if i in devs] if ev.devices else list(devs.values())
            again = [x for x in chosen if moved_by("retry", x.state, x.attempts) and x.id not in elsewhere]
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
            back = came_back and d.id not in elsewhere  # rule 1b: a newer rollout re-issues it, not this one
            if d.state in (*ISSUED, "waiting") and ev.active == st.bundle and st.phase != "rolled_back":
                d = replace(d, state="installed", reason="")
            elif d.state == "rolling_back" and ev.active == d.from_bundle:
                d = replace(d, state="rolled_back", reason="")
            elif d.state == "timed_out" and back and st.phase not in ("aborted", "cancelled"):
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
            if d.state == "cancelled" and ev.status == "ok" and ev.stage in ("commit", "switch"):
                # its report was still queued when a newer rollout took the row: it did install
                put(replace(d, state="installed"))
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
                why = f"held by app until {utc(until)}" + (f": {ev.hold_reason}" if ev.hold_reason else "")
                put(replace(d, state="installing", issued_at=max(d.issued_at, until), reason=why[:300]))
            else:  # progress: the install timeout runs from here (a report naming a problem does not count)
                moved = ev.reason == "ok" and now - d.issued_at >= policy.install_timeout_s // 4
                put(replace(d, state="installing", reason=ev.stage, issued_at=now if moved else d.issued_at))
        elif isinstance(ev, Health):
            health[ev.device] = ev

    # 3b. stages of the first cohort (hub.stages): judged while running, from what devices sent
    if st.phase == "running" and any(d.state == "staging" for d in devs.values()):
        failures = step_stages(devs, events, now, policy, put, issue, start_stage, end_stage)
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
        st = open_next(st, devs, now, policy, issue, put, closed)
    elif st.phase == "running" and st.cohort >= 0:
        # devices that joined after their cohort size was computed go to the open cohort
        sizes = cohort_sizes(policy.cohorts, eligible(devs))
        if sizes:
            assign(devs, sizes[min(st.cohort, len(sizes) - 1)], st.cohort, issue, put, closed)

    # 6b. superseded: every device went to a newer rollout, nothing is left to install or judge
    # (the all() stops at the first device still its own, so a live rollout pays for one device)
    if st.phase == "running" and all(
        d.reason.startswith(SUPERSEDED) or d.state == "incompatible" for d in devs.values()
    ):
        superseded = sum(1 for d in devs.values() if d.reason.startswith(SUPERSEDED))
        if superseded:
            why = f"{superseded} device(s) superseded by a newer rollout of the channel; none left to install or judge"
            st = replace(st, phase="completed", reason=why)

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
        # a superseded (cancelled) device never comes back to the rollout: it holds no cohort open
        settled = all(d.state in DONE or not d.online for d in assigned) and (
            any(d.state in SETTLED for d in assigned) or bool(assigned) and all(d.state in DONE for d in assigned)
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
            sizes = cohort_sizes(policy.cohorts, eligible(devs))
            if st.cohort >= len(sizes) - 1 and all(d.cohort is not None or d.state in DONE for d in devs.values()):
                st = replace(st, phase="completed", reason=completion_reason(gates))
            elif policy.approve_each_cohort:
                st = replace(
                    st,
                    phase="awaiting_approval",
                    reason=f"cohort {st.cohort + 1} of {len(sizes)} passed; waiting for approve",
                )
            else:
                st = open_next(st, devs, now, policy, issue, put, closed)

    ordered = tuple(sorted(devs.values(), key=lambda d: d.id))
    return replace(st, devices=ordered), actions
