"""Stages of a rollout's first cohort (issue 18 part 2): prove a candidate on real devices
before it serves. Pure: no clock, no I/O; the rollout shell feeds it what devices reported.

A policy's ``stages`` (:class:`StagePolicy`) lists, in order, any of:

- ``benchmark``: each cohort-1 device is sent a desired document that keeps its active bundle
  and asks (``protocol.benchmark.BenchmarkRequest``) for a self-test plus ``invokes`` timed
  invokes of the staged candidate beside the current model. Gate: the device's report is ok
  and candidate p95 / current p95 <= ``max_p95_ratio``, or the candidate is at most
  ``min_p95_delta_ms`` slower (as the rollout's telemetry p95 gate: sub-millisecond jitter of a
  model that invokes in microseconds is not a regression, whatever ratio it makes).
- ``shadow``: each cohort-1 device is sent a desired document with the candidate as ``shadow``
  (active unchanged, ``sample_rate`` of real requests also run on the candidate) until it has
  reported ``min_inferences`` shadow comparisons (summed over telemetry windows). Gate: its
  agreement (per task, as the agent computes it, ``protocol.taskstats``) >= ``min_agreement``,
  and, when set, its mean extra latency <= ``max_latency_delta_ms``.

Per device, :func:`step` decides from the stage it is in, what it reported and how long ago
the stage started::

    <stage> ─(no figures yet, stage younger than timeout_s)─▶ <stage>    (waiting, says what for)
    <stage> ─(gate passes)─▶ next stage, or ``done`` after the last (the switch proceeds as
        without stages)
    <stage> ─(gate fails)─▶ ``failed``, the detail naming the stage and the figure
    <stage> ─(no figures after timeout_s)─▶ ``failed`` "no ... after N s": an agent older than
        stages ignores the request it does not know; the rollout must not wedge on it

A ``failed`` device halts the rollout (the shell applies the policy's ``on_breach``) with the
stage and the figure in the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.benchmark import KEY, MAX_INVOKES, BenchmarkReport, BenchmarkRequest
from protocol.device import Shadow

STAGES = ("benchmark", "shadow")
DONE = "done"
FAILED = "failed"


class StageError(ValueError):
    """A stage field of a rollout policy is invalid; the message names it and the value."""


@dataclass(frozen=True)
class StagePolicy:
    stages: tuple[str, ...] = ()
    invokes: int = 50  # benchmark: timed invokes of each model
    max_p95_ratio: float = 1.5  # benchmark: candidate p95 / current p95
    min_p95_delta_ms: float = 1.0  # benchmark: ...and at least this much slower to fail
    min_inferences: int = 200  # shadow: comparisons per device before it is judged
    min_agreement: float = 0.95  # shadow: per-task agreement
    sample_rate: float = 0.25  # shadow: share of real requests also run on the candidate
    max_latency_delta_ms: float | None = None  # shadow: mean extra time of the candidate
    timeout_s: int = 900  # a stage with no figures from a device after this fails it

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> StagePolicy:
        """``{"stages": ["benchmark", "shadow"], "benchmark": {"invokes", "max_p95_ratio"},
        "shadow": {"min_inferences", "min_agreement", "sample_rate", "max_latency_delta_ms"},
        "timeout_s": ...}``; every field optional."""
        obj = dict(obj)
        stages = obj.pop("stages", [])
        if not isinstance(stages, list | tuple) or any(s not in STAGES for s in stages):
            raise StageError(f"stages must be a list of {list(STAGES)}, got {stages!r:.80}")
        if len(set(stages)) != len(stages):
            raise StageError(f"stages must not repeat, got {stages!r}")
        bench, shadow = obj.pop("benchmark", {}) or {}, obj.pop("shadow", {}) or {}
        timeout = obj.pop("timeout_s", cls.timeout_s)
        if obj:
            raise StageError(f"unknown stage fields {sorted(obj)}; known: stages, benchmark, shadow, timeout_s")
        for name, sub, keys in (
            ("benchmark", bench, {"invokes", "max_p95_ratio", "min_p95_delta_ms"}),
            ("shadow", shadow, {"min_inferences", "min_agreement", "sample_rate", "max_latency_delta_ms"}),
        ):
            if not isinstance(sub, Mapping):
                raise StageError(f"{name} must be an object, got {sub!r:.60}")
            if set(sub) - keys:
                raise StageError(f"unknown {name} fields {sorted(set(sub) - keys)}; known: {sorted(keys)}")
        p = cls(tuple(stages), timeout_s=timeout, **bench, **shadow)
        p.validate()
        return p

    def validate(self) -> None:
        def num(name: str, v: Any, lo: float, hi: float) -> None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise StageError(f"{name} must be a number within {lo:g}..{hi:g}, got {v!r:.60}")

        def whole(name: str, v: Any, lo: int, hi: int) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise StageError(f"{name} must be an integer within {lo}..{hi}, got {v!r:.60}")

        whole("benchmark.invokes", self.invokes, 1, MAX_INVOKES)
        num("benchmark.max_p95_ratio", self.max_p95_ratio, 0.01, 1000)
        num("benchmark.min_p95_delta_ms", self.min_p95_delta_ms, 0, 1e6)
        whole("shadow.min_inferences", self.min_inferences, 1, 10_000_000)
        num("shadow.min_agreement", self.min_agreement, 0, 1)
        num("shadow.sample_rate", self.sample_rate, 0.001, 1)
        if self.max_latency_delta_ms is not None:
            num("shadow.max_latency_delta_ms", self.max_latency_delta_ms, 0, 1e6)
        whole("timeout_s", self.timeout_s, 1, 7 * 86400)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "benchmark": {
                "invokes": self.invokes,
                "max_p95_ratio": self.max_p95_ratio,
                "min_p95_delta_ms": self.min_p95_delta_ms,
            },
            "shadow": {
                "min_inferences": self.min_inferences,
                "min_agreement": self.min_agreement,
                "sample_rate": self.sample_rate,
                "max_latency_delta_ms": self.max_latency_delta_ms,
            },
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class ShadowTally:
    """A device's shadow record summed over its telemetry windows since the stage started."""

    samples: int = 0
    agreed: int = 0
    errors: int = 0
    delta_ms_sum: float = 0.0  # latency_delta_ms x samples, for a sample-weighted mean
    delta_samples: int = 0

    def add(self, w: Shadow) -> ShadowTally:
        d = w.latency_delta_ms
        return ShadowTally(
            self.samples + w.samples,
            self.agreed + w.agreed,
            self.errors + w.errors,
            self.delta_ms_sum + (d * w.samples if d is not None else 0.0),
            self.delta_samples + (w.samples if d is not None else 0),
        )

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.samples if self.samples else None

    @property
    def latency_delta_ms(self) -> float | None:
        return self.delta_ms_sum / self.delta_samples if self.delta_samples else None

    def figures(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "agreement": round(self.agreement, 4) if self.agreement is not None else None,
            "errors": self.errors,
            "latency_delta_ms": round(self.latency_delta_ms, 3) if self.latency_delta_ms is not None else None,
        }


@dataclass(frozen=True)
class Verdict:
    """One gate's answer for one device: ``state`` is ``pass``, ``fail`` or ``waiting`` (no or
    not enough figures: it never passes or fails on nothing)."""

    state: str
    detail: str
    figures: Mapping[str, Any]


def _ms(v: float) -> str:
    """Two decimals, more for a model that invokes in microseconds ("0.0061", not "0.00")."""
    return f"{v:.2f}" if v >= 0.1 else f"{v:.4f}"


def benchmark_gate(report: BenchmarkReport | None, p: StagePolicy) -> Verdict:
    if report is None:
        return Verdict("waiting", "benchmark: no report yet", {})
    figs: dict[str, Any] = {
        "candidate": report.candidate.to_dict() if report.candidate else None,
        "current": report.current.to_dict() if report.current else None,
        "inputs": report.inputs,
    }
    if not report.ok:
        return Verdict("fail", f"benchmark: {report.detail}", figs)
    ratio = report.p95_ratio
    if ratio is None:
        return Verdict("fail", f"benchmark: the report has no p95 to compare ({report.detail})", figs)
    figs["p95_ratio"] = round(ratio, 4)
    assert report.candidate is not None and report.current is not None  # p95_ratio says so
    said = (
        f"p95 ratio {ratio:.2f} (candidate {_ms(report.candidate.p95_ms)} ms / current "
        f"{_ms(report.current.p95_ms)} ms, {report.candidate.n} invokes)"
    )
    delta = report.candidate.p95_ms - report.current.p95_ms
    figs["p95_delta_ms"] = round(delta, 4)
    if ratio > p.max_p95_ratio and delta > p.min_p95_delta_ms:
        return Verdict("fail", f"benchmark: {said} > max_p95_ratio {p.max_p95_ratio:g}", figs)
    if ratio > p.max_p95_ratio:
        return Verdict(
            "pass",
            f"benchmark: {said} > max_p95_ratio {p.max_p95_ratio:g} but only {delta:.3f} ms slower "
            f"<= min_p95_delta_ms {p.min_p95_delta_ms:g}",
            figs,
        )
    return Verdict("pass", f"benchmark: {said} <= max_p95_ratio {p.max_p95_ratio:g}", figs)


def shadow_gate(tally: ShadowTally, p: StagePolicy, task: str = "") -> Verdict:
    figs = tally.figures()
    what = f"{task} agreement" if task else "agreement"
    if tally.samples < p.min_inferences:
        return Verdict("waiting", f"shadow: {tally.samples}/{p.min_inferences} shadow inferences", figs)
    agreement = tally.agreement
    assert agreement is not None  # samples >= min_inferences >= 1
    if agreement < p.min_agreement:
        return Verdict(
            "fail",
            f"shadow: {what} {agreement:.3f} < min_agreement {p.min_agreement:g} over {tally.samples} inferences",
            figs,
        )
    delta = tally.latency_delta_ms
    if p.max_latency_delta_ms is not None and delta is not None and delta > p.max_latency_delta_ms:
        return Verdict(
            "fail",
            f"shadow: candidate {delta:.2f} ms slower on average > max_latency_delta_ms {p.max_latency_delta_ms:g}",
            figs,
        )
    return Verdict(
        "pass", f"shadow: {what} {agreement:.3f} >= {p.min_agreement:g} over {tally.samples} inferences", figs
    )


@dataclass(frozen=True)
class Step:
    """Where a device goes: ``stage`` is the next stage, ``done`` or ``failed``; ``moved`` says
    whether it left the stage it was in (the shell then records ``now`` as the stage's start
    and publishes the new stage's desired document)."""

    stage: str
    moved: bool
    verdict: Verdict


def next_stage(stages: Sequence[str], current: str) -> str:
    i = list(stages).index(current)
    return stages[i + 1] if i + 1 < len(stages) else DONE


def step(
    stage: str,
    started: float,
    now: float,
    p: StagePolicy,
    report: BenchmarkReport | None = None,
    tally: ShadowTally | None = None,
    task: str = "",
) -> Step:
    """One device's next stage (module docstring). ``report`` is its benchmark report for the
    candidate (benchmark stage), ``tally`` its shadow record since the stage started."""
    if stage not in p.stages:
        raise StageError(f"stage {stage!r} is not one of this policy's stages {list(p.stages)}")
    v = benchmark_gate(report, p) if stage == "benchmark" else shadow_gate(tally or ShadowTally(), p, task)
    if v.state == "fail":
        return Step(FAILED, True, v)
    if v.state == "pass":
        return Step(next_stage(p.stages, stage), True, v)
    waited = now - started
    if waited >= p.timeout_s:
        if stage == "benchmark":
            why = (
                f"benchmark: no report after {waited:.0f} s (timeout_s {p.timeout_s}; "
                "an agent older than stages ignores the request)"
            )
        else:
            why = f"shadow: {v.detail.removeprefix('shadow: ')} after {waited:.0f} s (timeout_s {p.timeout_s})"
        return Step(FAILED, True, Verdict("fail", why, v.figures))
    return Step(stage, False, v)


@dataclass(frozen=True)
class StageDoc:
    """What the desired document of a device in ``stage`` says besides its unchanged active
    bundle: the candidate as ``shadow`` on ``shadow_sample`` of requests, and ``extra`` fields
    (the benchmark request). The shell signs it; a new stage is a new document (new seq)."""

    shadow: str  # the candidate bundle's digest
    shadow_sample: float
    extra: Mapping[str, Any]


def desired_for(stage: str, candidate: str, p: StagePolicy) -> StageDoc:
    """The benchmark stage stages the candidate as a shadow on no requests (the agent fetches,
    verifies and self-tests it the way it does a shadow) and asks for the benchmark; the shadow
    stage runs it on ``sample_rate`` of real requests."""
    if stage == "benchmark":
        return StageDoc(candidate, 0.0, {KEY: BenchmarkRequest(candidate, p.invokes).to_dict()})
    if stage == "shadow":
        return StageDoc(candidate, p.sample_rate, {})
    raise StageError(f"no desired document for stage {stage!r}; stages: {list(STAGES)}")


def benchmark_of(metrics: Mapping[str, Any] | None, candidate: str) -> BenchmarkReport | None:
    """The benchmark report in a device's ``shadow`` report's metrics, for ``candidate`` (None:
    the report carries none, or one for another bundle). Malformed: ``BadPayload``, raised."""
    if not metrics or KEY not in metrics:
        return None
    r = BenchmarkReport.from_dict(metrics[KEY])
    return r if r.bundle == candidate else None
