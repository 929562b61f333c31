"""A rollout's policy (:class:`Policy`, its :class:`Gates`, the presets) parsed and checked
once, and its cohort sizes (rule 2 of :mod:`hub.rollout`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .rollout_state import BREACH_ACTIONS
from .stages import StageError, StagePolicy


class PolicyError(ValueError):
    """A rollout policy field is invalid; the message names it and the value."""


@dataclass(frozen=True)
class Gates:
    max_install_failure_rate: float = 0.0
    max_p95_ratio: float | None = 1.5  # new p95 / previous model's p95 on the same devices
    min_p95_delta_ms: float = 1.0  # ...and at least this much slower: sub-ms jitter is not a regression
    max_error_rate: float | None = 0.05  # errors / (inferences + errors)
    max_cloud_rate: float | None = None  # cloud fallbacks / inferences
    # the rates against the previous bundle's on the same devices (hub.rollout_gates._rise): breach
    # when the candidate's is this many times the previous one's, min_rise higher, and the rise is
    # beyond chance (a two-proportion z statistic >= rise_z; 3.1 is one-sided p ~ 0.001)
    max_cloud_rate_rise: float | None = 2.0
    max_error_rate_rise: float | None = 2.0
    min_rise: float = 0.01
    rise_z: float = 3.1
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
