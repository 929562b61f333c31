"""The end-to-end spot check of ``python -m bench gates``: the hub in its own process, a private
Mosquitto, N simulated devices (``sim.fleet``), and two staged rollouts through the real API
under the bench's "limits set" policy (its cohorts, 20 s of soak): one 30 % slower (p95 +30 %),
then a clean one. What
it proves: the real shell (:mod:`hub.rollouts`, :mod:`hub.evidence`, ingest) halts the bad one,
and no device outside cohort 1 ever receives a desired document for it.

Devices infer 20 requests a second (200 per 10 s window), so a one-device canary (1 % of a small
fleet) has as many samples per window as the decision runs' ten-device one."""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.launcher import free_port
from sim.bundle import synthetic_archive
from sim.config import Inference, SimConfig
from sim.fleet import SimFleet, raise_fd_limit

from .gates import LIMITS_SET, arms
from .rollout import KINDS, _Broker, _hub_process, hub_config

RATE = 20.0
SOAK_S = 20
HALT = ("rolled_back", "paused", "aborted")


def spot_check(n: int, timeout: float = 600) -> list[dict[str, Any]]:
    import httpx

    from hub import keys

    raise_fd_limit(n + 512)
    work = Path(tempfile.mkdtemp(prefix="bench-gates-"))
    policy = next(a for a in arms() if a.name == LIMITS_SET).policy.to_dict() | {"soak_s": SOAK_S}
    keys.init(work / "keys")
    token = "bench-token-0123456789"
    http_port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    out: list[dict[str, Any]] = []
    with _Broker(work / "broker", 8) as broker:
        cfg = hub_config(work, broker.port, token, http_port)
        counters = {k: ctx.Value("q", 0) for k in KINDS}
        proc = ctx.Process(target=_hub_process, args=(cfg, counters, ready, stop), name="bench-gates-hub")
        proc.start()
        fleet: SimFleet | None = None
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        try:
            if not ready.wait(120):
                raise RuntimeError("the hub did not start within 120 s")
            sim_cfg = SimConfig(
                "127.0.0.1",
                broker.port,
                work / "keys" / "root.json",
                devices=n,
                prefix="gate",
                telemetry_interval_s=10.0,
                inference=Inference(rate=RATE),
            )
            fleet = SimFleet(sim_cfg)
            f = fleet

            def online() -> bool:
                return int(api.get("/api/v1/devices?online=true&limit=1").json()["total"]) >= n

            if not f.run_until(online, timeout=300, check_every=1.0):
                raise RuntimeError(f"only {f.connected()} of {n} simulated devices connected")

            def push(version: str) -> str:
                r = api.post(
                    "/api/v1/bundles",
                    content=synthetic_archive(200_000, version=version),
                    headers={"Content-Type": "application/octet-stream"},
                )
                r.raise_for_status()
                return str(r.json()["digest"])

            def roll(digest: str, pol: dict[str, Any]) -> dict[str, Any]:
                r = api.post("/api/v1/rollouts", json={"bundle": digest, "target": {"all": True}, "policy": pol})
                assert r.status_code in (200, 201), r.text
                rid = r.json()["id"]
                status: dict[str, Any] = {}

                def settled() -> bool:
                    nonlocal status
                    status = api.get(f"/api/v1/rollouts/{rid}?limit=1000").json()
                    return status["phase"] in (*HALT, "completed")

                t0 = time.monotonic()
                f.run_until(settled, timeout=timeout, check_every=1.0)
                status["seconds"] = time.monotonic() - t0
                return status

            # the model the candidates replace, everywhere, and a few windows of it to compare with
            first = roll(push("1.0.0"), {})
            if first["phase"] != "completed":
                raise RuntimeError(f"the first install ended {first['phase']}: {first['reason']}")
            f.run_for(35)
            # the bad one first: rolled back, its canary runs 1.0.0 again and the clean one replaces
            # 1.0.0 everywhere, as the bad one tried to
            for case, slowdown in (("p95 +30% candidate", 1.3), ("clean candidate", 1.0)):
                digest = push(f"2.0.{len(out)}")
                for d in f.devices:
                    d.counters.desired_at = None  # set again by any desired document of this rollout
                    d.per_bundle[digest] = Inference(rate=RATE, slowdown=slowdown)
                st = roll(digest, policy)
                cohort1 = {x["device_id"] for x in st["devices"] if x["cohort"] == 0}
                told = {d.id for d in f.devices if d.counters.desired_at is not None}
                outside = sorted(told - cohort1)
                halted = st["phase"] in HALT
                ok = (not halted and st["phase"] == "completed") if slowdown == 1.0 else (halted and not outside)
                out.append(
                    {
                        "case": f"end to end, {n} devices, {case}",
                        "devices": n,
                        "phase": st["phase"],
                        "reason": st["reason"],
                        "cohort_1": len(cohort1),
                        "received_outside_cohort_1": len(outside),
                        "seconds": st["seconds"],
                        "ok": ok,
                        "summary": f"{st['phase']} after {st['seconds']:.0f} s, cohort 1 = {len(cohort1)} "
                        f"device(s), {len(outside)} outside it received the bundle"
                        + (f" ({st['reason'][:120]})" if halted else ""),
                    }
                )
        finally:
            if fleet is not None:
                fleet.stop()
            stop.set()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
            api.close()
            shutil.rmtree(work, ignore_errors=True)
    return out
