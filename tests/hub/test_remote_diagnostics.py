"""Remote diagnostics end to end (issue 17 part 4), with real parts only: Mosquitto, an
``edgefleet-hub serve`` process, an ``edgefleet-agent run`` process under a supervisor that starts
it again when it exits (as systemd's ``Restart=always`` does), the CLI and the REST API.

An operator fetches the agent's logs (CLI), re-runs its self-test and collects diagnostics (API),
restarts it (CLI) and sees it come back as a new process; no secret of the device's config is in
any answer; each command is in the audit log; a viewer gets 403 and the seventh command in a
minute for the device gets 429."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..agent import bundles as agent_bundles
from ..conftest import REPO, free_port, serving_process
from .conftest import wait_for
from .test_api import archive_of

pytestmark = pytest.mark.integration  # ~15 s here
ADMIN = "diag-admin-token-6e1f0c93d2"
OPERATOR = "diag-operator-token-41a7b2c9e8"
VIEWER = "diag-viewer-token-9c3d5e7f10"
DEVICE = "diag-dev"
SECRETS = ("mqtt-pass-secret-77", "ck-secret-value-42", "cloudpass-123")


class Supervisor:
    """Runs the agent and starts it again whenever it exits, counting the starts."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.argv, self.log, self.env = argv, log, env
        self.exits: list[int] = []
        self.stopping = False
        self.proc = self._start()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _start(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def _watch(self) -> None:
        while not self.stopping:
            rc = self.proc.wait()
            if self.stopping:
                return
            self.exits.append(rc)
            time.sleep(0.5)  # systemd's RestartSec, shortened
            self.proc = self._start()

    def stop(self) -> None:
        self.stopping = True
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hub", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_an_operator_reads_logs_reruns_the_selftest_collects_diagnostics_and_restarts_an_agent(
    tmp_path: Path, keys_dir: Path, mosquitto, coral_models: Path
):
    port = free_port()
    argv = [sys.executable, "-m", "hub", "serve", "--db", f"sqlite:///{tmp_path / 'hub.db'}", "--broker", mosquitto.url]
    argv += ["--keys", str(keys_dir), "--store", str(tmp_path / "store"), "--port", str(port), "--tick", "0.2"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "EDGEFLEET_HUB_TOKEN": ADMIN,
        "EDGEFLEET_HUB_TOKENS": f"operator:{OPERATOR},viewer:{VIEWER}",
    }
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    (agent_dir / "agent.toml").write_text(
        f'device_id = "{DEVICE}"\nbroker = "{mosquitto.url}"\nstate_dir = "{agent_dir / "state"}"\n'
        f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\ntelemetry_interval_s = 1\n'
        f'username = "{DEVICE}"\npassword = "{SECRETS[0]}"\ncloud_api_key = "{SECRETS[1]}"\n'
        f'cloud_url = "http://user:{SECRETS[2]}@127.0.0.1:9"\n'
    )
    with serving_process(argv, port, tmp_path / "hub.log", env=env, timeout=60) as url:
        hub = ["--hub", url, "--token", OPERATOR]
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        ops = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=60)
        viewer = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {VIEWER}"}, timeout=60)
        agent = Supervisor(
            [sys.executable, "-m", "agent", "run", "--config", str(agent_dir / "agent.toml")],
            agent_dir / "log",
            {**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:

            def device() -> dict[str, Any]:
                r = admin.get(f"/api/v1/devices/{DEVICE}")
                return r.json() if r.status_code == 200 else {}

            wait_for(lambda: device().get("online"), timeout=60, what="the agent online")
            bundle = agent_bundles.coral_bundle(tmp_path / "mnv1", coral_models)
            pushed = admin.post("/api/v1/bundles", content=archive_of(bundle)).json()
            admin.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"devices": [DEVICE]}})
            wait_for(
                lambda: (device().get("active_bundle") or {}).get("digest") == pushed["digest"],
                timeout=90,
                what="the bundle active on the agent",
            )

            def answered(cid: str) -> dict[str, Any]:
                return wait_for(
                    lambda: (c := ops.get(f"/api/v1/devices/{DEVICE}/commands/{cid}").json())["status"] != "sent" and c,
                    timeout=60,
                    what=f"the answer to {cid}",
                )

            # logs, through the CLI
            logs = cli("devices", "logs", DEVICE, "--lines", "100", "--json", *hub)
            assert logs.returncode == 0, logs.stderr
            got_logs = json.loads(logs.stdout)
            lines = got_logs["body"]["lines"]
            assert got_logs["status"] == "ok" and 0 < len(lines) <= 100
            assert any("connected to mqtt://" in line for line in lines), lines[-5:]
            assert any("commit" in line and "ok" in line for line in lines), lines[-10:]

            # self-test and diagnostics, through the API
            st = ops.post(f"/api/v1/devices/{DEVICE}/commands", json={"name": "selftest"})
            assert st.status_code == 202, st.text
            selftest = answered(st.json()["id"])
            assert selftest["status"] == "ok", selftest
            assert selftest["body"]["cases"] >= 1 and selftest["body"]["bundle"]["digest"] == pushed["digest"]
            diag = answered(ops.post(f"/api/v1/devices/{DEVICE}/commands", json={"name": "diagnostics"}).json()["id"])
            body = diag["body"]
            assert diag["status"] == "ok" and body["slots"]["active"]["digest"] == pushed["digest"]
            assert body["config"]["password"] == body["config"]["cloud_api_key"] == "[REDACTED]"
            assert "[REDACTED]@127.0.0.1:9" in body["config"]["cloud_url"]
            checks = {c["name"]: c for c in body["checks"]}
            assert checks["active_slot"]["ok"] and checks["trust_root"]["ok"] and checks["broker"]["ok"]
            doctor = {f["name"]: f for f in body["doctor"]}  # edgefleet-agent doctor's findings too
            assert str(agent_dir / "agent.toml") in doctor["config_permissions"]["detail"], doctor
            assert all(f["status"] in ("ok", "warn", "fail") for f in doctor.values())
            first_pid = body["pid"]
            for answer in (got_logs, selftest, diag):
                text = json.dumps(answer)
                assert not any(s in text for s in SECRETS), f"a secret left the device in {answer['name']}"

            # a viewer may look, not act
            assert viewer.post(f"/api/v1/devices/{DEVICE}/commands", json={"name": "restart"}).status_code == 403
            assert viewer.get(f"/api/v1/devices/{DEVICE}/commands").json()["total"] == 3

            # restart, through the CLI: answered, then a clean exit; the supervisor starts it again
            before = len(agent.exits)
            restarted = cli("devices", "restart", DEVICE, *hub)
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            assert "restart" in restarted.stdout and ": ok" in restarted.stdout
            wait_for(lambda: len(agent.exits) > before, timeout=30, what="the agent to exit")
            assert agent.exits[before:] == [0]  # a clean exit, not a crash
            wait_for(lambda: device().get("online") is False, timeout=30, what="the hub to see it go")
            wait_for(lambda: device().get("online"), timeout=60, what="the agent back online")
            again = answered(ops.post(f"/api/v1/devices/{DEVICE}/commands", json={"name": "diagnostics"}).json()["id"])
            assert again["status"] == "ok" and again["body"]["pid"] != first_pid
            assert again["body"]["slots"]["active"]["digest"] == pushed["digest"]  # still serving it

            # six commands to the device this minute; the seventh waits
            assert ops.post(f"/api/v1/devices/{DEVICE}/commands", json={"name": "logs"}).status_code == 202
            limited = ops.post(f"/api/v1/devices/{DEVICE}/commands", json={"name": "logs"})
            assert limited.status_code == 429 and "device rate limit" in limited.json()["error"]
            assert 1 <= int(limited.headers["retry-after"]) <= 60

            audit = admin.get("/api/v1/audit", params={"limit": 100}).json()["items"]
            done = [(a["action"], a["actor"].split(":")[0]) for a in audit if a["target"] == DEVICE]
            for action in ("device.logs", "device.selftest", "device.diagnostics", "device.restart"):
                assert (action, "operator") in done, done
        finally:
            agent.stop()
            for c in (admin, ops, viewer):
                c.close()
