"""The goal check of ``python -m bench fallback`` (issue 20 part 2), a pure function of figures.

Per model:

* **32 clients, share of the limit**: ours' req/s >= 90 % of the in-process limit's;
* **32 clients, ahead of every peer**: ours' req/s above each peer's that ran;
* **32 clients, p99**: ours' p99 no worse than the best (lowest) peer p99;
* **1 client, p50**: ours' p50 <= 1.2x a bare batch-1 ``session.run`` with all intra-op threads;
* **overload** (256 clients): bounded queueing - excess answered 429/503, nothing else failing
  (no timeouts, resets or other statuses) - and the p99 of accepted requests <= 2x ours' p99 at
  32 clients.

A goal whose figures were not measured (no peer ran, no overload run) is ``None`` with the
reason, never counted as met.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LIMIT_SHARE = 0.90
P50_VS_BARE = 1.2
OVERLOAD_P99_VS_32 = 2.0


@dataclass(frozen=True)
class Measured:
    """One server at one level: req/s, p50 and p99 of answered (200) requests in ms."""

    rps: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Overload:
    """Ours at overload: statuses counted, p99 of the 200 answers, and failures that were no
    answer at all (timeouts, resets)."""

    clients: int
    statuses: Mapping[int, int]
    accepted_p99_ms: float
    no_answer: int


@dataclass(frozen=True)
class Figures:
    model: str
    ours32: Measured
    limit32: Measured
    ours1: Measured | None = None
    bare_p50_ms: float | None = None  # batch-1 session.run, all intra-op threads
    peers32: Mapping[str, Measured] = field(default_factory=dict)
    overload: Overload | None = None


@dataclass(frozen=True)
class Goal:
    model: str
    name: str
    met: bool | None  # None: not measured
    figure: str  # the ratio or figures it was judged on, or why it was not measured

    def line(self) -> str:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[self.met]
        return f"  {self.model:<13} {self.name:<34} {verdict:<12} {self.figure}"


def check(f: Figures) -> list[Goal]:
    goals: list[Goal] = []
    share = f.ours32.rps / f.limit32.rps if f.limit32.rps else float("nan")
    goals.append(
        Goal(
            f.model,
            f">= {LIMIT_SHARE:.0%} of limit at 32",
            share >= LIMIT_SHARE,
            f"{share:.0%} ({f.ours32.rps:.1f} of {f.limit32.rps:.1f} req/s)",
        )
    )
    answered = {n: m for n, m in f.peers32.items() if m.rps > 0}  # no answers, no p99 to compare
    if f.peers32:
        best_rps = max(f.peers32.items(), key=lambda kv: kv[1].rps)
        goals.append(
            Goal(
                f.model,
                "ahead of every peer at 32 (req/s)",
                all(f.ours32.rps > m.rps for m in f.peers32.values()),
                f"ours {f.ours32.rps:.1f} vs best peer {best_rps[0]} {best_rps[1].rps:.1f} "
                f"({_ratio(f.ours32.rps, best_rps[1].rps)})",
            )
        )
    if answered:
        best_p99 = min(answered.items(), key=lambda kv: kv[1].p99_ms)
        goals.append(
            Goal(
                f.model,
                "p99 <= best peer's at 32",
                f.ours32.p99_ms <= best_p99[1].p99_ms,
                f"ours {f.ours32.p99_ms:.1f} ms vs {best_p99[0]} {best_p99[1].p99_ms:.1f} ms "
                f"({_ratio(f.ours32.p99_ms, best_p99[1].p99_ms)})",
            )
        )
    if not f.peers32:
        goals.append(Goal(f.model, "ahead of every peer at 32 (req/s)", None, "no peer was measured"))
    if not answered:
        goals.append(Goal(f.model, "p99 <= best peer's at 32", None, "no peer was measured (or none answered)"))
    if f.ours1 is not None and f.bare_p50_ms:
        r = f.ours1.p50_ms / f.bare_p50_ms
        goals.append(
            Goal(
                f.model,
                f"p50 <= {P50_VS_BARE}x bare run at 1",
                r <= P50_VS_BARE,
                f"{r:.2f}x (ours {f.ours1.p50_ms:.2f} ms vs session.run {f.bare_p50_ms:.2f} ms)",
            )
        )
    else:
        goals.append(Goal(f.model, f"p50 <= {P50_VS_BARE}x bare run at 1", None, "1 client or bare run not measured"))
    goals.append(_overload(f))
    return goals


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _overload(f: Figures) -> Goal:
    name = "overload: 429/503, p99 <= 2x p99@32"
    o = f.overload
    if o is None:
        return Goal(f.model, name, None, "no overload run")
    if not o.statuses and not o.no_answer:
        return Goal(f.model, name, None, f"{o.clients} clients: nothing completed in the measuring window")
    shed = sum(n for s, n in o.statuses.items() if s in (429, 503))
    other = sum(n for s, n in o.statuses.items() if s not in (200, 429, 503)) + o.no_answer
    bound = OVERLOAD_P99_VS_32 * f.ours32.p99_ms
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(o.statuses.items()))
    met = shed > 0 and other == 0 and o.accepted_p99_ms <= bound
    why = [] if met else [w for w, bad in _reasons(shed, other, o.accepted_p99_ms, bound) if bad]
    return Goal(
        f.model,
        name,
        met,
        f"{o.clients} clients: {statuses or 'no answers'}, {o.no_answer} without an answer; accepted p99 "
        f"{o.accepted_p99_ms:.1f} ms vs 2x {f.ours32.p99_ms:.1f} = {bound:.1f} ms"
        + (f" ({'; '.join(why)})" if why else ""),
    )


def _reasons(shed: int, other: int, p99: float, bound: float) -> list[tuple[str, bool]]:
    return [
        ("nothing was shed with 429/503: the queue absorbed all clients", shed == 0),
        (f"{other} requests failed otherwise", other > 0),
        ("accepted p99 over the bound", not p99 <= bound),
    ]


def report(goals: list[Goal]) -> str:
    met = sum(g.met is True for g in goals)
    missed = sum(g.met is False for g in goals)
    return "\n".join(
        [
            "goal check (issue 20):",
            *(g.line() for g in goals),
            f"  {met} met, {missed} not met, {len(goals) - met - missed} not measured",
        ]
    )
