"""R5 at fleet scale, with R1's install stages (issue 13): while a rollout is out, the hub is
killed -9 once and agents are killed -9 and restarted 20 times, during their download and their
install, while a client asks every agent for predictions the whole time. No restart may leave a
device without a working model, no live agent may answer 5xx or a wrong answer, and the rollout
must still complete with every device serving the new bundle.

Real Mosquitto, the real hub (a subprocess, so it can be killed -9), four real agent processes.
Each agent reaches the broker through a loopback relay (tests/reliability/faultproxy.py), wide
open for the first rollout and throttled for the second, so a download takes seconds. Each
agent is killed five times: four times at a random moment after it serves again, the fifth
aimed at its install. Verify, stage, self-test and switch take ~40 ms in all, which a random
moment almost never hits, so that kill fires the instant the agent logs the end of a randomly
chosen stage, and the stage it died in is read back from its log. The hub dies once, at a
random moment a few seconds in. The schedule comes from seeded RNGs; which moment a kill hits
depends on what the agents are doing, and each kill's stage is logged and counted."""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..agent.bundles import MNV1, coral_bundle
from ..conftest import start_mosquitto
from ..hub.conftest import wait_for
from ..hub.test_api import archive_of
from .conftest import HubProcess
from .faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SEED = 13
AGENTS = 4
AGENT_KILLS = 20
KILLS_PER_AGENT = AGENT_KILLS // AGENTS
BACK_S = 30.0  # a restarted agent must serve some model within this long
SLOW_LINK_BPS = 64e3  # rollout 2's 0.8 MB archive takes ~13 s per agent, without kills
# what an agent logs when it finishes a stage -> the stage it is in next
NEXT = {"download": "verify", "verify": "stage", "stage": "selftest", "selftest": "switch", "switch": "commit"}
REPORT_OK = re.compile(r"report (\w+) ok ok ")


@dataclass
class Life:
    """One agent process: what the traffic thread needs to tell "down" from "broken"."""

    gen: int = 0
    alive: bool = True
    started: float = field(default_factory=time.monotonic)
    served_at: float | None = None  # its first right answer
    last_digest: str | None = None  # the bundle of its latest right answer


@dataclass
class Kill:
    n: int
    device: str
    at_s: float  # since rollout 2 was created
    stage: str
    aimed: bool
    back_s: float | None = None  # from its restart to its first right answer


def _multipart(image: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    head = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    return head + image + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _port(agent: Any) -> int | None:
    try:
        return int((agent.state_dir / "http.port").read_text())
    except (OSError, ValueError):
        return None


def _local(port: int, method: str, path: str, body: bytes | None = None, ctype: str = "") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, {"Content-Type": ctype} if ctype else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _chunks_on_disk(agent: Any) -> tuple[int, int] | None:
    for bitmap in (agent.state_dir / "downloads").glob("*.bitmap"):
        try:
            bits = bitmap.read_bytes()
        except OSError:
            continue
        return bits.count(1), len(bits)
    return None


def _log_since(agent: Any, offset: int) -> str:
    with open(agent.log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _wait_for_line(agent: Any, offset: int, text: str, timeout: float) -> bool:
    """Returns within a few milliseconds of ``agent`` logging ``text`` (after ``offset``)."""
    deadline = time.monotonic() + timeout
    seen = b""
    with open(agent.log, "rb") as f:
        f.seek(offset)
        while time.monotonic() < deadline:
            more = f.read()
            seen += more
            if text.encode() in seen:
                return True
            if not more:
                time.sleep(0.002)
    return False


class Traffic:
    """One thread per agent posting the cat image to its local API every 50 ms. A refused or
    cut request counts as "down" when the agent was killed during it; anything else that is
    not a 200 naming one of ``known`` with a cat on top is a failure."""

    def __init__(self, agents: dict[str, Any], image: bytes, known: set[str]) -> None:
        self.agents, self.known = agents, known
        self.body, self.ctype = _multipart(image)
        self.lock = threading.Lock()
        self.lives = {n: Life() for n in agents}
        self.answered = Counter[str]()
        self.down = Counter[str]()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in agents]
        for t in self.threads:
            t.start()

    def _run(self, n: str) -> None:
        while not self.stop.is_set():
            with self.lock:
                gen, alive = self.lives[n].gen, self.lives[n].alive
            port = _port(self.agents[n]) if alive else None
            if port is not None:
                self._ask(n, gen, port)
            time.sleep(0.05)

    def _ask(self, n: str, gen: int, port: int) -> None:
        try:
            code, out = _local(port, "POST", "/v1/predict", self.body, self.ctype)
        except OSError as exc:
            with self.lock:
                if self.lives[n].gen != gen or not self.lives[n].alive:
                    self.down[n] += 1
                else:
                    self.failures.append(f"{n} (alive, life {gen}): {exc!r}")
            return
        with self.lock:
            if self.lives[n].gen != gen:
                return  # answered by a process killed since: neither counted nor blamed
            life = self.lives[n]
            digest = ((out or {}).get("bundle") or {}).get("digest") if code == 200 else None
            top = ((out or {}).get("top") or [{}])[0].get("label", "") if code == 200 else ""
            if code == 200 and digest in self.known and "cat" in top:
                self.answered[n] += 1
                life.last_digest = digest
                life.served_at = life.served_at or time.monotonic()
            else:
                self.failures.append(f"{n} (life {gen}): {code} {str(out)[:200]}")

    def up(self, n: str) -> bool:
        with self.lock:
            return self.lives[n].alive and self.lives[n].served_at is not None

    def kill_and_restart(self, n: str) -> Life:
        """kill -9 agent ``n`` and start it again; returns the life that ended."""
        with self.lock:
            ended = self.lives[n]
            ended.alive = False
            self.lives[n] = Life(gen=ended.gen + 1, alive=False)
        self.agents[n].kill()
        self.agents[n].start()  # removes the old http.port first
        with self.lock:
            self.lives[n] = Life(gen=ended.gen + 1)
        return ended

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(35)


class RolloutWatch:
    """Polls a rollout (the hub may be down). It is done when its phase is ``completed`` and
    every device in it is ``installed``; the phase alone is not enough: the hub counts an
    offline device as settled, so a rollout whose unfinished devices are all restarting at that
    moment shows ``completed`` early (noted in ``early``)."""

    def __init__(self, hub: HubProcess, rid: str, devices: int) -> None:
        self.hub, self.rid, self.devices = hub, rid, devices
        self.started = time.monotonic()
        self.phase, self.installed = "?", 0
        self.early: str | None = None  # when it first showed completed before it was done
        self.done_s: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                r = self.hub.api("GET", f"/api/v1/rollouts/{self.rid}?limit=1")
                self.phase, self.installed = r["phase"], r["counts"].get("installed", 0)
            except Exception:  # noqa: BLE001 - the hub is down
                self.phase = "?"
            at = round(time.monotonic() - self.started, 1)
            if self.phase == "completed" and self.installed < self.devices and self.early is None:
                self.early = f"at {at} s, {self.installed} of {self.devices} installed"
            if self.phase == "completed" and self.installed == self.devices and self.done_s is None:
                self.done_s = at
            time.sleep(0.25)

    @property
    def done(self) -> bool:
        return self.done_s is not None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(35)


def test_a_rollout_survives_a_hub_kill_9_and_20_agent_kill_9s_mid_install_and_no_device_is_left_without_a_model(
    tmp_path: Path, keys_dir: Path, coral_models: Path, figure, make_agent_at
):
    rng = random.Random(SEED)
    broker = start_mosquitto(tmp_path / "broker")  # default persistence, as in production
    link = FaultProxy(broker.port, rate_bps=1e9, delay_s=0.0)
    hub = HubProcess(tmp_path / "hub", keys_dir, broker.url)
    hub.start()
    names = [f"edge-{i}" for i in range(AGENTS)]
    agents: dict[str, Any] = {}
    chaos_threads: list[threading.Thread] = []
    traffic: Traffic | None = None
    watch: RolloutWatch | None = None
    halt = threading.Event()  # stops the kills when the test ends early

    def device(n: str) -> dict[str, Any]:
        try:
            return hub.api("GET", f"/api/v1/devices/{n}")
        except Exception:  # noqa: BLE001 - not there yet, or the hub is down
            return {}

    def rollout(rid: str) -> dict[str, Any]:
        try:
            return hub.api("GET", f"/api/v1/rollouts/{rid}?limit=10")
        except Exception:  # noqa: BLE001 - the hub is down
            return {}

    try:
        v1 = hub.api("POST", "/api/v1/bundles", archive_of(coral_bundle(tmp_path / "v1", coral_models, MNV1)))
        v2 = hub.api(
            "POST", "/api/v1/bundles", archive_of(coral_bundle(tmp_path / "v2", coral_models, MNV1, version="2"))
        )
        assert v1["digest"] != v2["digest"]
        agents = {
            n: make_agent_at(f"mqtt://127.0.0.1:{link.port}", n, trusted=keys_dir / "root.json").start() for n in names
        }
        wait_for(lambda: all(device(n).get("online") for n in names), timeout=90, what="agents online")
        # the latency gate would compare p95s measured while processes are being killed on a
        # shared 2-core machine, and the drift gate this test's one repeated image: neither is
        # what is tested here. The install-failure and error-rate gates stay armed.
        policy = {"gates": {"max_p95_ratio": None, "drift": False}}
        first = hub.api("POST", "/api/v1/rollouts", {"bundle": v1["digest"], "target": {"all": True}, "policy": policy})
        wait_for(
            lambda: (
                rollout(first["id"]).get("counts", {}).get("installed") == AGENTS
                and all((device(n).get("active_bundle") or {}).get("digest") == v1["digest"] for n in names)
            ),
            timeout=120,
            what="rollout 1 installed everywhere",
        )
        traffic = Traffic(agents, (coral_models / "cat_720p.jpg").read_bytes(), {v1["digest"], v2["digest"]})
        wait_for(lambda: all(traffic.up(n) for n in names), timeout=60, what="every agent answering")

        link.rate_bps, link.delay_s = SLOW_LINK_BPS, 0.01
        started = time.monotonic()
        offsets = {n: agents[n].log.stat().st_size for n in names}  # where rollout 2 starts in each log
        second = hub.api(
            "POST", "/api/v1/rollouts", {"bundle": v2["digest"], "target": {"all": True}, "policy": policy}
        )
        watch = RolloutWatch(hub, second["id"], AGENTS)
        kills: list[Kill] = []
        lock = threading.Lock()
        chaos_errors: list[str] = []

        def stage_now(n: str) -> str:
            """Just before a kill at a random moment: the agent's state from its local API."""
            port = _port(agents[n])
            try:
                code, st = _local(port, "GET", "/v1/status") if port else (0, None)
            except OSError:
                return "unknown"
            if code != 200 or not st:
                return "unknown"
            active = (st.get("active") or {}).get("digest")
            which = "v2" if active == v2["digest"] else "v1" if active == v1["digest"] else "none"
            if st["state"] != "download":
                return f"{st['state']} {which}" if st["state"] in ("serving", "idle") else st["state"]
            held = _chunks_on_disk(agents[n])
            return f"download (serving {which}{f'; {held[0]}/{held[1]} chunks on disk' if held else ''})"

        def chaos(n: str, seed: int) -> None:
            """Agent ``n``'s share of the kills: at random moments while it downloads, the last
            one aimed at its install (or, once it serves v2, at random moments after all)."""
            r = random.Random(seed)
            offset = offsets[n]  # where the current life's log starts
            for i in range(KILLS_PER_AGENT):
                wait_for(lambda: traffic.up(n), timeout=2 * BACK_S, what=f"{n} serving after its restart")
                if halt.is_set():
                    return
                aimed = i == KILLS_PER_AGENT - 1 and traffic.lives[n].last_digest != v2["digest"]
                if aimed:
                    # fires within milliseconds of the line; the stage it died in is read back
                    trigger = r.choice(list(NEXT))
                    _wait_for_line(agents[n], offset, f"report {trigger} ok ok ", timeout=120)
                else:
                    time.sleep(r.uniform(0.5, 3.0))
                    stage = stage_now(n)
                if halt.is_set():
                    return
                ended = traffic.kill_and_restart(n)
                if aimed:
                    done = REPORT_OK.findall(_log_since(agents[n], offset))
                    stage = NEXT.get(done[-1], f"serving v2 (after {done[-1]})") if done else "unknown"
                offset = agents[n].log.stat().st_size
                with lock:
                    for k in kills:
                        if k.device == n and k.back_s is None:
                            k.back_s = round(ended.served_at - ended.started, 1) if ended.served_at else None
                    kills.append(Kill(len(kills) + 1, n, round(time.monotonic() - started, 1), stage, aimed))
                    print(f"kill {len(kills):2d}: {n} at {kills[-1].at_s:5.1f} s in {stage}{' (aimed)' * aimed}")

        def guarded(n: str, seed: int) -> None:
            try:
                chaos(n, seed)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
                chaos_errors.append(f"{n}: {exc!r}")

        chaos_threads += [
            threading.Thread(target=guarded, args=(n, SEED * 100 + i), daemon=True) for i, n in enumerate(names)
        ]
        for t in chaos_threads:
            t.start()
        time.sleep(rng.uniform(3.0, 8.0))  # then the hub dies mid-rollout, for a few seconds
        hub_kills = [f"{watch.phase}, {watch.installed} of {AGENTS} installed"]
        mid = int(not watch.done)
        print(f"hub kill -9 at {time.monotonic() - started:.1f} s, rollout 2 {hub_kills[0]}")
        hub.kill()
        time.sleep(rng.uniform(1.0, 4.0))
        hub.start()
        for t in chaos_threads:
            t.join(240)

        def all_back() -> bool:
            for k in kills:
                life = traffic.lives[k.device]
                if k.back_s is None and life.served_at is not None:
                    k.back_s = round(life.served_at - life.started, 1)
            return all(k.back_s is not None for k in kills)

        try:
            wait_for(all_back, timeout=BACK_S, what="every restarted agent serving")
        except AssertionError:
            pass
        try:
            wait_for(lambda: watch.done, timeout=120, what="rollout 2 completed on every device")
        except AssertionError:
            pass

        def on_v2() -> list[str]:
            return [n for n in names if (device(n).get("active_bundle") or {}).get("digest") == v2["digest"]]

        def serving_v2() -> list[str]:
            return [n for n in names if traffic.lives[n].last_digest == v2["digest"]]

        try:  # the hub's view and the agents' answers, each a moment behind the other
            wait_for(lambda: len(on_v2()) == len(serving_v2()) == AGENTS, timeout=30, what="v2 everywhere")
        except AssertionError:
            pass
        final = rollout(second["id"])
        hub_on_v2, answering_v2 = on_v2(), serving_v2()
    finally:
        halt.set()
        for t in chaos_threads:
            t.join(60)
        for closing in (watch, traffic):
            if closing is not None:
                closing.close()
        for a in agents.values():  # before the relay and the broker go, or they reconnect into them
            a.stop()
        hub.stop()
        link.close()
        broker.stop()

    # a restart that never served, or served only after BACK_S, left its device without a model
    without = [k for k in kills if k.back_s is None or k.back_s > BACK_S]
    longest = max((k.back_s for k in kills if k.back_s is not None), default=None)
    by_stage = Counter(k.stage.split(" (")[0] for k in kills)
    completed = watch.done
    asked = sum(traffic.answered.values()) + len(traffic.failures)
    shown = (
        f"{AGENTS} agents on a {SLOW_LINK_BPS / 1e3:.0f} kB/s link, predictions throughout; "
        f"{AGENT_KILLS} agent kill -9s and 1 hub kill -9 during rollout 2 (seed {SEED})"
    )
    figure(
        "R5", shown, "agent kill -9s, each restarted at once", len(kills), f"{AGENT_KILLS}", len(kills) == AGENT_KILLS
    )
    figure(
        "R5",
        "the same",
        "agent kills by stage",
        ", ".join(f"{s} {c}" for s, c in by_stage.most_common()),
        "(reported)",
        True,
    )
    figure("R5", "the same", "hub kill -9s mid-rollout", mid, "1", mid == 1)
    shown_as = f"no ({watch.phase}, {watch.installed} of {AGENTS} installed)"
    figure("R5", "the same", "rollout completed on every device", "yes" if completed else shown_as, "yes", completed)
    figure("R5", "the same", "devices left without a working model", len(without), "0", not without)
    figure("R5", "the same", f"longest restart to serving a model (s; limit {BACK_S:.0f})", longest, "(reported)", True)
    figure(
        "R5",
        "the same",
        "5xx or wrong answers from live agents",
        f"{len(traffic.failures)} of {asked}",
        "0",
        not traffic.failures,
    )
    figure(
        "R5",
        "the same",
        "devices on v2 at the end (hub / answering)",
        f"{len(hub_on_v2)}/{len(answering_v2)} of {AGENTS}",
        f"{AGENTS}/{AGENTS}",
        len(hub_on_v2) == len(answering_v2) == AGENTS,
    )
    figure("R5", "the same", "time to complete rollout 2 (s)", watch.done_s, "(reported)", completed)
    refused = sum(traffic.down.values())
    figure("R5", "the same", "requests refused or cut while their agent was killed", refused, "(expected)", True)
    # the hub counts an offline device as settled: a device restarting mid-install can let
    # the rollout show "completed" before it has installed (reported, see RolloutWatch)
    figure(
        "R5",
        "the same",
        "rollout shown completed before every device installed",
        watch.early or "no",
        "(reported)",
        True,
    )
    log = [f"{k.n} {k.device} {k.at_s}s {k.stage}{' aimed' if k.aimed else ''} back {k.back_s}" for k in kills]
    assert len(kills) == AGENT_KILLS and mid == 1, hub_kills
    assert not without and not chaos_errors, (log, chaos_errors)
    assert not traffic.failures, traffic.failures[:10]
    assert completed, (watch.phase, final.get("counts"), final.get("reason"), final.get("devices"))
    assert len(hub_on_v2) == len(answering_v2) == AGENTS, (hub_on_v2, answering_v2, log)
