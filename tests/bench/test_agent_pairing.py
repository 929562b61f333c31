"""`python -m bench agent`'s paired estimator: it recovers a known overhead when the machine's
speed drifts in phases (as this VM's does: 40 ms <-> 80 ms invokes for a second or more)."""

from __future__ import annotations

import numpy as np

from bench.agent import overhead, paired


def _phased_invokes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Invoke times that switch between a 40 ms and an 80 ms phase every 10-40 rounds."""
    out, fast = [], True
    while len(out) < n:
        out += [40.0 if fast else 80.0] * int(rng.integers(10, 40))
        fast = not fast
    return np.asarray(out[:n]) * rng.normal(1, 0.02, n)


def test_paired_overhead_recovers_five_percent_through_phases():
    rng = np.random.default_rng(1)
    bare = _phased_invokes(300, rng)
    api = bare * 1.05 * rng.normal(1, 0.02, 300)
    est, lo, hi = overhead(list(api), list(bare))
    assert 4.0 < est < 6.0
    assert lo < 5.0 < hi and hi - lo < 2.0


def test_an_agent_no_slower_than_bare_has_an_interval_around_zero():
    rng = np.random.default_rng(2)
    bare = _phased_invokes(300, rng)
    est, lo, hi = overhead(list(bare * rng.normal(1, 0.02, 300)), list(bare))
    assert lo < 0.0 < hi and abs(est) < 1.0


class _Recorder:
    """Stands in for Bare (``run``) and RawClient (``once``): records each call, and times it
    as its call number so the test can tell which calls were kept."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.calls = name, log, 0
        self.last_server_ms: float | None = None

    def run(self, k: int) -> list[float]:
        return [self.once() for _ in range(k)]

    def once(self) -> float:
        self.log.append(self.name)
        self.calls += 1
        self.last_server_ms = self.calls - 0.5 if self.name == "agent" else None
        return float(self.calls)


def test_each_timed_step_follows_one_of_its_own_kind():
    log: list[str] = []
    b, a, f, s = paired(_Recorder("bare", log), _Recorder("agent", log), _Recorder("floor", log), 3)  # type: ignore[arg-type]
    assert log == ["bare", "bare", "agent", "agent", "floor", "floor"] * 3
    assert b == a == f == [2.0, 4.0, 6.0]  # the second call of each pair is the one kept
    assert s == [1.5, 3.5, 5.5]  # with the agent's own latency_ms of that same answer


def test_extra_steps_are_timed_in_pairs_at_the_end_of_each_round():
    from bench.agent import Step

    log: list[str] = []
    decode = Step("decode", lambda: log.append("decode"))
    b, a, f, s = paired(_Recorder("bare", log), _Recorder("agent", log), _Recorder("floor", log), 2, [decode])  # type: ignore[arg-type]
    assert log == ["bare", "bare", "agent", "agent", "floor", "floor", "decode", "decode"] * 2
    assert len(decode.ms) == len(a) == 2 and all(ms >= 0 for ms in decode.ms)
