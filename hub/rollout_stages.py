"""Rule 3b of :mod:`hub.rollout`: each staging device's stage judged by :func:`hub.stages.step`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from . import stages as stage_rules
from .rollout_policy import Policy
from .rollout_state import DeviceState, Event, StageEvidence


def step_stages(
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
