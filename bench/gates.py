"""`python -m bench gates [--quick] [--runs 50] [--clean-runs 100] [--devices 1000]`: do the
rollout gates stop a bad model within two telemetry windows of the canary cohort reporting,
before anyone outside that cohort is issued it, and how often do they stop a good one?

Two parts, because 300+ rollouts of 1,000 devices through a broker would take hours on a
2-core machine:

* **decisions** (no broker): every run is a staged rollout (cohorts 1 % -> 10 % -> 50 % -> 100 %,
  three windows of soak, ``require_samples``, rollback on a breach) of a candidate to
  ``--devices`` simulated devices, decided by the hub's own pure state machine
  (:func:`hub.rollout.advance`, gates included) and fed what the hub would be fed: install
  reports, device status, and per-device health merged by :func:`hub.telemetry.merge` from
  telemetry windows recorded by the simulator's devices (:class:`sim.device.SimDevice`: the
  latency sketch, drift bins, counts and shadow comparisons it sends over MQTT). One step is one
  10 s telemetry window. Each device has its own latency, cloud-fallback rate and shadow
  agreement (a fleet is not uniform); the previous bundle's windows on the same devices are the
  gate's comparison. Regressions (issue 15): p95 +30 %, shadow agreement -5 points, cloud
  fallback rate x3, input drift with PSI >= 0.2; ``--runs`` of each, and ``--clean-runs`` of a
  candidate identical to the previous model. A regressed run stops when the rollout is stopped
  or as soon as the candidate is issued to a device outside cohort 1 (the goal is already
  missed there).
* **end to end** (``--e2e-devices``, default 50; 0 skips it): the hub in its own process, a
  private Mosquitto and a simulated fleet (``sim.fleet``): one clean and one slowed-down (p95
  +30 %) staged rollout through the real API, counting the devices outside cohort 1 that ever
  received a desired document for the bad bundle.

Arms, each over the same telemetry: **baseline** = install failures only (the abort rule of AWS
IoT Jobs, hawkBit and Flight Control: a model that installs and runs badly passes);
**defaults** = today's gates as shipped (``hub.rollout.Gates()``); **sequential** = a Wald SPRT
per gate at the "set" limits (:func:`sprt_breach`, a prototype here: ADR 0015 says why it is not
in the hub); **set** = today's gates with limits set between the fleet's normal and the
regressions to catch (what an operator would set; "ours" in the goal check and the result file, or the last arm run
when ``--arms`` leaves it out); **set, 800 samples** = the same limits judged on two windows of
a 10-device canary at least.

Goals (issue 15): every regressed run halted within 2 windows of cohort 1 reporting, with 0
devices outside cohort 1 issued the bad bundle; <= 1 % of clean rollouts halted. Exit code 0
when the runs finished (a missed goal is printed as MISSED, not an exit code).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.slots import SlotRecord
from hub.rollout import (
    Command,
    DeviceSeen,
    Event,
    Gates,
    Health,
    InstallReport,
    Issue,
    Policy,
    RolloutState,
    advance,
)
from hub.telemetry import merge
from protocol.messages import Telemetry
from protocol.signing import Root
from protocol.sketch import DriftThresholds, LatencySketch, psi
from sim.bundle import BASELINE
from sim.config import Inference, SimConfig
from sim.device import SimDevice

from . import report

WINDOW_S = 10  # one telemetry window, one step
PER_WINDOW = 50  # inferences per device per window (5 per second)
PREV_WINDOWS = 3  # the previous bundle's windows per device the p95 gate compares with (30 s)
SOAK_WINDOWS = 3
PREV = SlotRecord("a" * 64, "sim-model", "1.0.0", "model_int8.tflite", "cpu")
CAND = SlotRecord("b" * 64, "sim-model", "1.1.0", "model_int8.tflite", "cpu")
REFS: dict[str, dict[str, list[int]]] = {
    side: {n: list(f["ref"]) for n, f in BASELINE[side].items()}  # type: ignore[attr-defined]
    for side in ("inputs", "outputs")
}
FLAT_REFS = {f"{side}.{n}": ref for side, feats in REFS.items() for n, ref in feats.items()}
COHORTS = ("1%", "10%", "50%", "100%")
TERMINAL = ("rolled_back", "paused", "aborted", "cancelled")


def expected_psi(shift: float) -> float:
    """PSI of the worst baseline feature when ``shift`` of its values move one bin up (what
    :class:`sim.config.Inference` ``drift`` does), in expectation."""
    worst = 0.0
    for ref in FLAT_REFS.values():
        cur = [r * (1 - shift) for r in ref]
        for i in range(len(ref)):
            cur[min(len(ref) - 1, i + 1)] += ref[i] * shift
        worst = max(worst, psi(ref, [max(1, round(c * 1000)) for c in cur]))
    return worst


def drift_for_psi(target: float) -> float:
    """The smallest shift (to 0.01) whose expected PSI is >= ``target``."""
    s = 0.01
    while expected_psi(s) < target and s < 1:
        s += 0.01
    return round(s, 2)


REGRESSIONS: dict[str, Callable[[Inference], Inference]] = {
    "p95 +30%": lambda i: replace(i, slowdown=1.3),
    "shadow agreement -5 points": lambda i: replace(i, shadow_agreement=(i.shadow_agreement or 0) - 0.05),
    "cloud fallback rate x3": lambda i: replace(i, cloud_rate=i.cloud_rate * 3),
    "input drift PSI >= 0.2": lambda i: replace(i, drift=drift_for_psi(0.2)),
}


def device_inference(rng: random.Random) -> Inference:
    """One device's normal: its own speed (boards and load differ), cloud-fallback rate (its
    link) and shadow agreement (its inputs)."""
    return Inference(
        rate=PER_WINDOW / WINDOW_S,
        latency_ms=8.0 * rng.lognormvariate(0, 0.3),
        sigma=0.25,
        cloud_rate=rng.uniform(0.01, 0.03),
        shadow_agreement=rng.uniform(0.96, 0.98),
    )


@dataclass(frozen=True)
class Arm:
    name: str
    policy: Policy
    psi_alert: float  # the drift gate's alert threshold (the model's baseline says 0.25)
    reads_telemetry: bool = True
    sprt: bool = False  # the sequential prototype (:func:`sprt_breach`) judges p95 and the rates


# the "limits set" arm's limits, which the sequential prototype tests at too
P95_LIMIT, CLOUD_LIMIT, AGREE_LIMIT, ERROR_LIMIT = 1.15, 0.04, 0.945, 0.05
LIMITS_SET = "today's gates, limits set"
RISES = "limits set, fallback by its rise"
SPRT_ALPHA = 0.001  # per gate, over every look (Ville's inequality); 4 gates: <= 0.4 % per rollout
SPRT_RATIO = 1.5  # the alternative: a rate 1.5x its limit (p95: twice the 5 % expected above it)


def _llr(k: int, n: int, p0: float, p1: float) -> float:
    """Log likelihood ratio of ``k`` events in ``n`` trials, rate p1 against p0 (Wald)."""
    return k * math.log(p1 / p0) + (n - k) * math.log((1 - p1) / (1 - p0))


def sprt_breach(new: Sequence[Any], old: Sequence[Any]) -> str:
    """Wald's one-sided SPRT per gate over the cohort's merged windows so far: breach when the
    evidence for "rate = 1.5 x its limit" over "rate = its limit" passes 1/alpha. The ratio is
    a nonnegative martingale under any rate at or below the limit, so however often it is
    looked at, a model within its limits is halted with probability <= alpha (Ville). p95 is a
    rate too: the share of the candidate's samples above ``P95_LIMIT`` x the previous bundle's
    p95 on the same devices (5 % at the limit). Returns what breached ("" = nothing)."""
    if not new:
        return ""
    m = merge(new)
    prev = merge(old).sketch
    bound = math.log(1 / SPRT_ALPHA)
    out = []
    inf, errors, cloud = m.counts["inferences"], m.counts["errors"], m.counts["cloud"]
    if _llr(errors, inf + errors, ERROR_LIMIT, ERROR_LIMIT * SPRT_RATIO) >= bound:
        out.append(f"error_rate {errors}/{inf + errors}")
    if _llr(cloud, inf, CLOUD_LIMIT, CLOUD_LIMIT * SPRT_RATIO) >= bound:
        out.append(f"cloud_fallback_rate {cloud}/{inf}")
    q = 1 - AGREE_LIMIT
    if m.shadow_total and _llr(m.shadow_total - m.shadow_agree, m.shadow_total, q, q * SPRT_RATIO) >= bound:
        out.append(f"shadow_agreement {m.shadow_agree}/{m.shadow_total}")
    p95 = prev.quantile(0.95) if prev.count else None
    if p95 and m.sketch.count:
        cut = LatencySketch.index(p95 * P95_LIMIT)
        above = sum(c for i, c in m.sketch.counts.items() if i > cut)
        if _llr(above, m.sketch.count, 0.05, 0.05 * SPRT_RATIO) >= bound:
            out.append(f"p95_latency_ratio {above}/{m.sketch.count} above {P95_LIMIT} x the previous p95")
    return "; ".join(out)


def arms(cohorts: Sequence[str] = COHORTS) -> list[Arm]:
    staged = {
        "cohorts": tuple(cohorts),
        "soak_s": SOAK_WINDOWS * WINDOW_S,
        "on_breach": "rollback",
        "require_samples": True,
    }
    rises_off = {"max_cloud_rate_rise": None, "max_error_rate_rise": None}
    off = Gates(max_p95_ratio=None, max_error_rate=None, max_cloud_rate=None, drift=False, **rises_off)
    set_ = Gates(
        max_p95_ratio=P95_LIMIT,
        min_p95_delta_ms=1.0,
        max_error_rate=ERROR_LIMIT,
        max_cloud_rate=CLOUD_LIMIT,
        min_shadow_agreement=AGREE_LIMIT,
    )
    # the sequential arm keeps the machine's gates only to hold each cohort until data came
    # (limits nothing reaches) and its drift gate; the prototype judges the rest
    waits = Gates(max_p95_ratio=1e9, max_error_rate=1.0, max_cloud_rate=1.0, min_shadow_agreement=0.0, **rises_off)
    return [
        Arm("baseline: install failures only", Policy(**staged, gates=off), 0.25, reads_telemetry=False),  # type: ignore[arg-type]
        Arm("today's gates, shipped defaults", Policy(**staged, gates=Gates()), 0.25),  # type: ignore[arg-type]
        Arm("sequential (SPRT prototype)", Policy(**staged, gates=waits), 0.15, sprt=True),  # type: ignore[arg-type]
        Arm(LIMITS_SET, Policy(**staged, gates=set_), 0.15),  # type: ignore[arg-type]
        # the same limits judged on two windows of a 10-device canary (800 samples, so that a breach
        # still holds with the device that feeds it most left out: 9 x 2 x 50 = 900 >= 800): one
        # window of ten devices is too few to tell a cohort of high-normal devices from a regression
        Arm(
            "limits set, 800 samples",
            Policy(**staged, gates=replace(set_, min_samples=800)),  # type: ignore[arg-type]
            0.15,
        ),
        # the same, with the fallback rate judged against each device's own rate on the previous
        # bundle (the rise gates, on by default) instead of a fleet-wide 4 % limit
        Arm(
            RISES,
            Policy(**staged, gates=replace(set_, max_cloud_rate=None)),  # type: ignore[arg-type]
            0.15,
        ),
    ]


@dataclass
class Outcome:
    halted: bool
    windows_to_halt: int | None  # after cohort 1's first windows reached the gates (1 = on them)
    escaped: int  # devices outside cohort 1 issued the candidate
    breached: str = ""
    phase: str = ""
    steps: int = 0


@dataclass
class _Arm:
    """One arm's rollout over a run's shared devices: its state machine and what it has merged."""

    arm: Arm
    st: RolloutState
    events: list[Event] = field(default_factory=list)
    installed: dict[str, int] = field(default_factory=dict)  # device -> step it switched
    merged: dict[str, Any] = field(default_factory=dict)  # device -> one stored row of its windows so far
    first_report: int | None = None
    escaped: int = 0
    sprt_breach: str = ""
    outcome: Outcome | None = None


def _root() -> Root:
    # the harness never hands a device a desired document to verify (it serves bundles directly)
    return Root(1, 0, {}, {})


def make_fleet(n: int, seed: int, regression: str | None) -> list[SimDevice]:
    rng = random.Random(seed)
    cfg = SimConfig("127.0.0.1", 1883, Path("unused-root.json"), devices=n, prefix="g")
    devices = []
    for dev_id in cfg.device_ids():
        inf = device_inference(rng)
        d = SimDevice(dev_id, cfg, _root(), None, random.Random(rng.random()), inf)  # type: ignore[arg-type]
        if regression is not None:
            d.per_bundle[CAND.digest] = REGRESSIONS[regression](inf)
        d.serve(PREV, REFS)
        devices.append(d)
    return devices


def _row(dev: str, t: Telemetry | Any) -> Any:
    """A telemetry window as the hub stores it (the columns :func:`hub.telemetry.merge` reads)."""
    return SimpleNamespace(
        device=dev,
        latency=t.latency,
        drift=t.drift,
        shadow=t.shadow.to_dict() if t.shadow else None,
        **{k: t.counts.get(k, 0) for k in ("inferences", "errors", "tpu", "cpu", "cloud")},
    )


def _stored(dev: str, rows: Sequence[Any]) -> Any:
    """``rows`` merged by :func:`hub.telemetry.merge`, as one row again (so each step merges the
    running total with the new window, not every window again: the same sums)."""
    m = merge(rows)
    drift: dict[str, dict[str, list[int]]] = {}
    for key, by_bins in m.drift.items():
        side, name = key.split(".", 1)
        for counts in by_bins.values():
            drift.setdefault(side, {})[name] = counts
    shadow = (
        {"samples": m.shadow_total, "errors": 0, "agreement": m.shadow_agree / m.shadow_total}
        if m.shadow_total
        else None
    )
    return SimpleNamespace(device=dev, latency=m.sketch.to_dict(), drift=drift, shadow=shadow, **m.counts)


def _health(dev: str, new: Any, old: Any) -> Health:
    """What :func:`hub.evidence.health` builds for one device, from the same merge."""
    m = merge([new])
    before = merge([old])
    prev = before.sketch
    return Health(
        dev,
        m.counts["inferences"],
        m.counts["errors"],
        m.counts["cloud"],
        m.sketch.to_dict() if m.sketch.count else {},
        prev.to_dict() if prev.count else {},
        {k: c for k, ref in FLAT_REFS.items() if (c := m.drift_counts(k, len(ref))) is not None},
        m.shadow_agree,
        m.shadow_total,
        0,
        before.counts["inferences"],
        before.counts["errors"],
        before.counts["cloud"],
    )


def run(arms_: Sequence[Arm], n: int, seed: int, regression: str | None, max_steps: int = 200) -> list[Outcome]:
    """One staged rollout of the candidate per arm, each decided by :func:`hub.rollout.advance`,
    all over the same simulated devices: a device serves the candidate while any arm still
    running has it installed, and each arm sees the windows it sent since that arm installed it
    (so the arms are judged on the same telemetry, a paired comparison)."""
    devices = make_fleet(n, seed, regression)
    by_id = {d.id: d for d in devices}
    seen: list[Event] = [DeviceSeen(d.id, True, PREV.digest) for d in devices]
    runs = [
        _Arm(a, RolloutState(CAND.digest, baseline=FLAT_REFS, drift_thresholds=DriftThresholds(psi_alert=a.psi_alert)))
        for a in arms_
    ]
    for r in runs:
        r.events = list(seen)
    old: dict[str, Any] = {}  # device -> its previous bundle's windows, merged
    for step in range(max_steps):
        now = step * WINDOW_S
        live = [r for r in runs if r.outcome is None]
        if not live:
            break
        serving = sorted({dev for r in live for dev in r.installed})
        windows = {}
        if any(r.arm.reads_telemetry for r in live):
            for dev in serving:
                d = by_id[dev]
                d.infer(PER_WINDOW)
                windows[dev] = _row(dev, d.window(now))
        # arms that installed a device at the same step hold the same windows of it: merge once
        stored: dict[tuple[str, int], Any] = {}
        healths: dict[tuple[str, int], Health] = {}
        for r in live:
            if r.arm.reads_telemetry:
                for dev, at in r.installed.items():
                    if dev in windows and at < step:
                        if (dev, at) not in stored:
                            prior = r.merged.get(dev)
                            stored[dev, at] = _stored(dev, [prior, windows[dev]] if prior else [windows[dev]])
                            healths[dev, at] = _health(dev, stored[dev, at], old[dev])
                        r.merged[dev] = stored[dev, at]
                health = [healths[dev, r.installed[dev]] for dev in sorted(r.merged) if dev in r.installed]
                if health and r.first_report is None:
                    r.first_report = step
                r.events += health
                if r.arm.sprt and r.st.phase == "running" and not r.sprt_breach:
                    r.sprt_breach = sprt_breach(
                        [r.merged[dev] for dev in sorted(r.merged)], [old[dev] for dev in sorted(r.merged)]
                    )
                    if r.sprt_breach:  # the shell's rollback command, as an operator's would be
                        r.events.append(Command("rollback", "sprt"))
            r.st, actions = advance(r.st, r.events, now, r.arm.policy)
            r.events = []
            cohort_of = {x.id: x.cohort for x in r.st.devices}
            for a in actions:
                if not isinstance(a, Issue):
                    continue
                d = by_id[a.device]
                if a.action == "install":
                    r.escaped += (cohort_of.get(a.device) or 0) > 0
                    if a.device not in old:
                        # the hour before the rollout on the previous bundle (recorded when first needed)
                        prev = []
                        for k in range(PREV_WINDOWS):
                            d.infer(PER_WINDOW)
                            prev.append(_row(a.device, d.window(now - (PREV_WINDOWS - k) * WINDOW_S)))
                        old[a.device] = _stored(a.device, prev)
                    if d.active != CAND.digest:
                        d.serve(CAND, REFS)
                    r.installed[a.device] = step
                    r.events += [InstallReport(a.device, "commit", "ok"), DeviceSeen(a.device, True, CAND.digest)]
                else:  # a rollback: this arm is done with the device
                    r.installed.pop(a.device, None)
            st = r.st
            if st.phase in TERMINAL or st.phase == "completed" or (regression is not None and r.escaped):
                halted = st.phase in TERMINAL
                r.outcome = Outcome(
                    halted,
                    (step - r.first_report + 1) if halted and r.first_report is not None else None,
                    r.escaped,
                    r.sprt_breach or "; ".join(f"{g.name} {g.detail}" for g in st.gates if g.status == "breach"),
                    st.phase,
                    step + 1,
                )
                r.installed.clear()
        # devices no running arm has installed go back to the previous bundle
        still = {dev for r in runs if r.outcome is None for dev in r.installed}
        for dev in serving:
            if dev not in still:
                by_id[dev].serve(PREV, REFS)
    return [r.outcome or Outcome(False, None, r.escaped, "", r.st.phase, max_steps) for r in runs]


@dataclass
class Tally:
    arm: str
    case: str
    runs: int = 0
    halted: int = 0
    within_2: int = 0
    escaped_runs: int = 0
    windows: list[int] = field(default_factory=list)
    breaches: dict[str, int] = field(default_factory=dict)

    def add(self, o: Outcome) -> None:
        self.runs += 1
        self.halted += o.halted
        self.escaped_runs += o.escaped > 0
        if o.windows_to_halt is not None:
            self.windows.append(o.windows_to_halt)
            self.within_2 += o.windows_to_halt <= 2 and o.escaped == 0
        for part in o.breached.split("; "):
            if part:
                name = part.split(" ", 1)[0]
                self.breaches[name] = self.breaches.get(name, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        w = sorted(self.windows)
        return {
            "arm": self.arm,
            "case": self.case,
            "runs": self.runs,
            "halted": self.halted,
            "halted_within_2_windows": self.within_2,
            "runs_with_bad_bundle_beyond_cohort_1": self.escaped_runs,
            "windows_to_halt_median": w[len(w) // 2] if w else None,
            "windows_to_halt_max": w[-1] if w else None,
            "breaches": self.breaches,
        }


def decisions(
    n: int,
    runs: int,
    clean_runs: int,
    cohorts: Sequence[str] = COHORTS,
    progress: bool = True,
    only: Sequence[int] = (),
) -> list[Tally]:
    out = []
    every = [a for i, a in enumerate(arms(cohorts)) if not only or i in only]
    for case in [*REGRESSIONS, None]:
        tallies = [Tally(a.name, case or "clean") for a in every]
        count = runs if case is not None else clean_runs
        t0 = time.monotonic()
        for i in range(count):
            for t, o in zip(
                tallies, run(every, n, seed=zlib.crc32(f"{case}/{i}".encode()), regression=case), strict=True
            ):
                t.add(o)
            if progress and i % 10 == 9 and i < count - 1:  # a long run says how far it got
                print(f"    {i + 1} runs: " + ", ".join(str(t.halted) for t in tallies) + " halted", flush=True)
        if progress:
            print(
                f"  {tallies[0].case:<28} "
                + ", ".join(f"{t.arm.split(':')[0]} halted {t.halted}/{t.runs}" for t in tallies)
                + f" ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
        out += tallies
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench gates", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 devices, 10 runs of each regression, 20 clean")
    ap.add_argument("--devices", type=int, default=1000, help="fleet size of the decision runs (default 1000)")
    ap.add_argument("--runs", type=int, default=50, help="runs of each regression")
    ap.add_argument("--clean-runs", type=int, default=100, help="clean rollouts per arm (default 100)")
    ap.add_argument(
        "--cohorts",
        default=",".join(COHORTS),
        help=f"cumulative cohort sizes (default {','.join(COHORTS).replace('%', '%%')}; "
        "the staged preset's is 1,10%%,50%%,100%%)",
    )
    names = "; ".join(f"{i}: {a.name}" for i, a in enumerate(arms())).replace("%", "%%")
    ap.add_argument("--arms", default="", help=f"run only these arms, comma-separated (default all): {names}")
    ap.add_argument("--e2e-devices", type=int, default=50, help="end-to-end spot check size (0: skip it)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    n, runs, clean = (100, 10, 20) if args.quick else (args.devices, args.runs, args.clean_runs)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    print(f"decisions: {n} devices, {runs} runs of each regression, {clean} clean rollouts", flush=True)
    cohorts = tuple(c.strip() for c in args.cohorts.split(",") if c.strip())
    Policy(cohorts=cohorts).validate()  # a bad size is refused naming it, before any run
    only = [int(x) for x in args.arms.split(",") if x.strip()]
    tallies = decisions(n, runs, clean, cohorts, only=only)
    seconds = time.monotonic() - t0
    cases: list[dict[str, Any]] = [t.to_dict() for t in tallies]
    e2e: list[dict[str, Any]] = []
    if args.e2e_devices:
        from bench._gates_e2e import spot_check

        e2e = spot_check(args.e2e_devices)
        cases += e2e
    goals = _goals(tallies, e2e)
    _print(tallies, e2e, goals, n, cohorts)
    best = [t for t in tallies if t.arm == _ours(tallies)]
    base = [t for t in tallies if t.arm == tallies[0].arm]
    bad_runs = sum(t.runs for t in best if t.case != "clean") or 1
    ours = sum(t.within_2 for t in best if t.case != "clean") / bad_runs
    baseline = sum(t.within_2 for t in base if t.case != "clean") / bad_runs
    path = report.write(
        "gates",
        "share of regressed rollouts halted within 2 windows",
        True,
        ours,
        baseline,
        1.0,
        {
            "devices": n,
            "runs_per_regression": runs,
            "clean_runs": clean,
            "window_s": WINDOW_S,
            "inferences_per_window": PER_WINDOW,
            "cohorts": list(cohorts),
            "soak_windows": SOAK_WINDOWS,
            "drift_shift": drift_for_psi(0.2),
            "drift_expected_psi": expected_psi(drift_for_psi(0.2)),
            "seconds": seconds,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "goals": goals,
        },
        cases,
    )
    print(f"wrote {path}")
    return 0


def _ours(tallies: Sequence[Tally]) -> str:
    """The arm the goals are judged on: "limits set" when it ran, else the last arm run."""
    names = [t.arm for t in tallies]
    return LIMITS_SET if LIMITS_SET in names else names[-1]


def _goals(tallies: Sequence[Tally], e2e: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    best = [t for t in tallies if t.arm == _ours(tallies)]
    out = {
        f"{t.arm}, {t.case}: every run halted within 2 windows, none beyond cohort 1": t.within_2 == t.runs
        for t in best
        if t.case != "clean"
    }
    clean = next(t for t in best if t.case == "clean")
    out[f"{clean.arm}, clean: <= 1% halted"] = clean.halted <= 0.01 * clean.runs
    for c in e2e:
        out[f"end to end, {c['case']}"] = bool(c["ok"])
    return out


def _print(
    tallies: Sequence[Tally],
    e2e: Sequence[Mapping[str, Any]],
    goals: Mapping[str, bool],
    n: int,
    cohorts: Sequence[str],
) -> None:
    print(f"\n{n} devices; cohorts {' -> '.join(cohorts)}; {SOAK_WINDOWS} windows of soak; one window = {WINDOW_S} s")
    print(f"{'arm':<34} {'case':<28} {'halted':>9} {'<=2 win':>8} {'escaped':>8} {'win med/max':>12}")
    for t in tallies:
        d = t.to_dict()
        wm = f"{d['windows_to_halt_median']}/{d['windows_to_halt_max']}" if t.windows else "-"
        print(f"{t.arm:<34} {t.case:<28} {t.halted:>4}/{t.runs:<4} {t.within_2:>8} {t.escaped_runs:>8} {wm:>12}")
    for c in e2e:
        print(f"end to end: {c['case']}: {c['summary']}")
    for goal, met in goals.items():
        print(f"  {'met    ' if met else 'MISSED '} {goal}")


if __name__ == "__main__":
    sys.exit(main())
