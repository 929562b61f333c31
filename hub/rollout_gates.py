"""Rule 7 of :mod:`hub.rollout`: the gates over every device assigned so far (install failure
rate, the telemetry gates with bounded influence, drift, shadow) and what a completed rollout
says about them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from protocol.sketch import LatencySketch, drift_verdict, merge_counts

from .rollout_policy import Policy
from .rollout_state import SETTLED, DeviceState, GateResult, Health, RolloutState


def completion_reason(gates: Sequence[GateResult]) -> str:
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
    "error_rate_rise": lambda h: h.inferences + h.errors if h.prev_inferences + h.prev_errors else 0,
    "cloud_fallback_rise": lambda h: h.inferences if h.prev_inferences else 0,
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


def _rise(
    name: str, counts: Sequence[tuple[int, int, int, int]], limit: float | None, policy: Policy, what: str
) -> list[GateResult]:
    """A rate against the previous bundle's on the same devices (``counts``: per device, events
    and trials of the candidate, then of the previous bundle; devices without previous trials
    are no comparison and left out). Each device's own normal is the reference, so no fleet-wide
    limit has to sit between the best devices' normal and the worst. Breach when all three
    hold: the rate is ``limit`` times the previous one or more, at least ``min_rise`` higher,
    and the rise is beyond chance (the two-proportion z statistic, pooled, >= ``rise_z``)."""
    g = policy.gates
    if limit is None:
        return []
    both = [c for c in counts if c[3] > 0]
    k1, n1 = sum(c[0] for c in both), sum(c[1] for c in both)
    k0, n0 = sum(c[2] for c in both), sum(c[3] for c in both)
    if not both and any(c[1] for c in counts):
        why = "no device sent telemetry of its previous bundle in the hour before: nothing to compare with"
        return [GateResult(name, "insufficient_data", None, limit, why)]
    if n1 < g.min_samples or n0 < g.min_samples:
        why = f"{n1} new / {n0} previous {what} on the same devices < {g.min_samples}"
        return [GateResult(name, "insufficient_data", None, limit, why)]
    r1, r0 = k1 / n1, k0 / n0
    pooled = (k0 + k1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    z = (r1 - r0) / se if se > 0 else 0.0
    ratio = r1 / r0 if r0 > 0 else (math.inf if r1 > 0 else 1.0)
    breach = ratio >= limit and r1 - r0 >= g.min_rise and z >= g.rise_z
    detail = f"{k1}/{n1} = {r1:.2%} vs {k0}/{n0} = {r0:.2%} before on the same devices (z {z:.1f})"
    return [GateResult(name, "breach" if breach else "pass", ratio if math.isfinite(ratio) else None, limit, detail)]


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
    out += _rise(
        "error_rate_rise",
        [(h.errors, h.inferences + h.errors, h.prev_errors, h.prev_inferences + h.prev_errors) for h in hs],
        g.max_error_rate_rise,
        policy,
        "requests",
    )
    out += _rise(
        "cloud_fallback_rise",
        [(h.cloud, h.inferences, h.prev_cloud, h.prev_inferences) for h in hs],
        g.max_cloud_rate_rise,
        policy,
        "inferences",
    )

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
