"""Load shedding at the front door: the admission decision, the busy-rate meter, and a real
server flooded past a tiny bound (503s that say why, while admitted requests answer right)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest

from cloud import config as cfg
from cloud.admission import ServiceRate, decide
from cloud.config import Admission
from cloud.errors import ConfigError
from tests.conftest import free_port, wait_port

from .conftest import REPO, Setup, Tiny, drop, make_archive, png

POLICY = Admission(floor=8, max_inflight=48, latency_budget_s=1.0)


def test_requests_under_the_floor_are_admitted_whatever_the_rate() -> None:
    v = decide(7, 1.0, POLICY)  # 8 requests at 1 req/s would expect 8 s, over the budget
    assert v.admitted and v.bound is None


def test_a_request_past_max_inflight_is_refused_naming_the_bound() -> None:
    v = decide(48, 1000.0, POLICY)
    assert not v.admitted and v.bound == "max_inflight"
    assert "48 requests in flight" in v.reason and "--max-inflight" in v.reason
    assert v.retry_after_s >= 1


def test_a_request_expecting_more_than_the_budget_is_refused_with_the_figures() -> None:
    v = decide(20, 10.0, POLICY)  # 21 / 10 req/s = 2.1 s > 1 s
    assert not v.admitted and v.bound == "latency_budget"
    assert "2100 ms" in v.reason and "1000 ms" in v.reason and "10 req/s" in v.reason
    assert v.expected_s == pytest.approx(2.1) and v.retry_after_s == 3.0


def test_a_request_within_both_bounds_is_admitted_with_its_expected_latency() -> None:
    v = decide(20, 100.0, POLICY)
    assert v.admitted and v.expected_s == pytest.approx(0.21)


def test_before_the_rate_is_measured_only_max_inflight_applies() -> None:
    assert decide(47, None, POLICY).admitted
    assert decide(48, None, POLICY).bound == "max_inflight"
    assert decide(48, None, POLICY).retry_after_s == 1.0


def test_zero_disables_either_bound() -> None:
    assert decide(500, 1000.0, Admission(8, 0, 1.0)).admitted  # no max_inflight
    assert decide(40, 1.0, Admission(8, 48, 0.0)).admitted  # no latency budget


# ---- several server processes: one machine-wide bound, a floor per process ------------------


def test_max_inflight_counts_every_process_of_the_serve() -> None:
    assert decide(10, None, POLICY, (37,)).admitted  # 47 across both
    v = decide(10, None, POLICY, (38,))  # 48 across both: the other process's 38 count here too
    assert not v.admitted and v.bound == "max_inflight"
    assert "48 requests in flight across 2 processes" in v.reason and "(--max-inflight)" in v.reason


def test_a_process_under_its_floor_is_admitted_whatever_the_others_hold() -> None:
    # the kernel handed the other process every connection: this one may still fill its workers
    assert decide(7, 1.0, POLICY, (60,)).admitted
    assert decide(0, None, POLICY, (48, 48)).admitted


def test_the_others_unused_floors_are_kept_for_them() -> None:
    # alone at 40 with the other process idle: 8 places stay the other's, so 40 is the most
    v = decide(40, None, POLICY, (0,))
    assert not v.admitted and "40 requests in flight across 2 processes (48 counting each" in v.reason
    assert decide(39, None, POLICY, (3,)).admitted  # 39 + the other's floor of 8 = 47


def test_across_processes_admitted_requests_never_exceed_max_inflight() -> None:
    # every interleaving of arrivals over 3 processes (each arrival at a process that is told
    # the others' counts), with departures: the machine-wide total stays <= max_inflight
    policy = Admission(floor=2, max_inflight=9, latency_budget_s=0.0)
    rng = random.Random(5)
    for _ in range(2000):
        counts = [0, 0, 0]
        for _step in range(60):
            i = rng.randrange(3)
            if rng.random() < 0.25 and counts[i]:
                counts[i] -= 1
                continue
            others = tuple(n for j, n in enumerate(counts) if j != i)
            if decide(counts[i], None, policy, others).admitted:
                counts[i] += 1
            assert sum(counts) <= policy.max_inflight, counts


def test_the_latency_budget_uses_every_process_over_their_summed_rate() -> None:
    # 8 here + 12 there = 20 in flight; with this one's 21st at 20 req/s (both processes'
    # busy rates summed) it expects 1.05 s, over the 1 s budget; at 40 req/s 0.525 s
    v = decide(8, 20.0, POLICY, (12,))
    assert not v.admitted and v.bound == "latency_budget" and v.expected_s == pytest.approx(21 / 20)
    assert "20 requests in flight at 20 req/s" in v.reason
    assert decide(8, 40.0, POLICY, (12,)).expected_s == pytest.approx(21 / 40)


def test_one_process_decides_as_it_always_did() -> None:
    for n in (0, 7, 8, 20, 47, 48, 60):
        for rate in (None, 5.0, 50.0, 500.0):
            assert decide(n, rate, POLICY, ()) == decide(n, rate, POLICY)
    assert decide(48, None, POLICY).reason == "48 requests in flight, the most admitted at once is 48 (--max-inflight)"


def test_the_rate_counts_completions_only_while_busy() -> None:
    rate = ServiceRate(floor=2, window_s=1.0, alpha=1.0)
    t = 0.0
    for _ in range(10):  # one at a time, 0.5 s each: never busy, never measured
        rate.enter(t)
        t += 0.5
        rate.leave(t)
    assert rate.rate is None and rate.inflight == 0
    rate.enter(t)
    rate.enter(t)  # busy from here: two in flight, one completes every 0.25 s
    for _ in range(4):
        t += 0.25
        rate.leave(t)
        rate.enter(t)
    assert rate.rate == pytest.approx(4.0)  # 4 completions in 1 busy second
    rate.leave(t)
    rate.leave(t)
    t += 100.0  # quiet for a long time: the capacity measured is kept
    rate.enter(t)
    rate.leave(t + 0.5)
    assert rate.rate == pytest.approx(4.0) and rate.inflight == 0


def test_the_rate_is_smoothed_across_windows() -> None:
    rate = ServiceRate(floor=1, window_s=1.0, alpha=0.5)
    rate.enter(0.0)
    rate.leave(1.0)  # 1 req/s
    rate.enter(1.0)
    rate.leave(1.5)
    rate.enter(1.5)
    rate.leave(2.0)  # 2 in 1 s: 2 req/s
    assert rate.rate == pytest.approx(1.5)


def test_max_inflight_defaults_to_six_batches_and_may_not_starve_a_worker(setup: Setup) -> None:
    base: dict[str, Any] = {"bundles": str(setup.bundles), "root": str(setup.root), "environ": {}}
    c = cfg.build(**base, workers=2, max_batch=4)
    assert c.admission == Admission(floor=8, max_inflight=48, latency_budget_s=0.0)  # budget: opt-in
    # --processes 2 x 1 worker: the floor is per process, the bound machine-wide (2 x 6 x 1 x 4)
    assert cfg.build(**base, processes=2, workers=1, max_batch=4).admission == Admission(4, 48, 0.0)
    assert cfg.build(**base, latency_budget_ms=1500).admission.latency_budget_s == 1.5
    assert cfg.build(**base, workers=1, max_batch=1, max_inflight=2, latency_budget_ms=0).admission == Admission(
        1, 2, 0.0
    )
    for kw, needle in [
        ({"workers": 2, "max_batch": 4, "max_inflight": 7}, "--max-inflight (7)"),
        ({"processes": 2, "workers": 1, "max_batch": 4, "max_inflight": 7}, "(2 x 1 x 4)"),
        ({"max_inflight": -1}, "--max-inflight"),
        ({"latency_budget_ms": -5}, "-5"),
        ({"solo_threads": -1}, "solo -1"),
    ]:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            cfg.build(**base, **kw)


# ---- a real server, flooded ------------------------------------------------------------------


async def _flood(url: str, body: bytes, clients: int) -> list[httpx.Response]:
    async def one(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(url, files={"file": ("a.png", body, "image/png")})

    clients_ = [httpx.AsyncClient(timeout=60) for _ in range(clients)]
    try:
        return list(await asyncio.gather(*(one(c) for c in clients_)))
    finally:
        for c in clients_:
            await c.aclose()


@pytest.mark.integration
def test_a_flooded_server_sheds_with_503_saying_why_and_answers_the_admitted_right(
    setup: Setup, trust: Any, tiny: Tiny
) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    port = free_port()
    # one worker, batches of one, at most two requests in flight: any overlap is shed
    args = ["--workers", "1", "--max-batch", "1", "--max-inflight", "2", "--poll", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud", "serve", "--bundles", str(setup.bundles), "--root", str(setup.root)]
        + ["--port", str(port), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_port(port, 60)
        base = f"http://127.0.0.1:{port}"
        px = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
        want = tiny.expected(px[None, :, :, None] / 255.0)
        ok: list[httpx.Response] = []
        shed: list[httpx.Response] = []
        for _ in range(20):  # rounds of 32 at once, until both kinds of answer were seen
            for r in asyncio.run(_flood(f"{base}/predict", png(px), 32)):
                assert r.status_code in (200, 503), r.text
                (ok if r.status_code == 200 else shed).append(r)
            if ok and shed:
                break
        assert ok and shed, (len(ok), len(shed))
        for r in ok:
            assert np.allclose(r.json()["predictions"], want, atol=1e-5)
        for r in shed:
            doc = r.json()
            assert doc["code"] == "overloaded" and "--max-inflight" in doc["detail"], doc
            assert int(r.headers["retry-after"]) >= 1
        metrics = httpx.get(f"{base}/metrics").text
        line = next(
            ln for ln in metrics.splitlines() if ln.startswith('edgefleet_cloud_shed_total{reason="max_inflight"}')
        )
        assert float(line.split()[-1]) == len(shed)
        # the flood is over: a lone request is admitted again
        r = httpx.post(f"{base}/predict", files={"file": ("a.png", png(px), "image/png")})
        assert r.status_code == 200 and np.allclose(r.json()["predictions"], want, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
