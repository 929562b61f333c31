"""Hard examples end to end (issue 18 part 4), with real parts only: Mosquitto, an
``edgefleet-hub serve`` process, an ``edgefleet-agent run`` process serving a real model, the
agent's local API, the REST API, the dashboard and the CLI.

Apps send images to the agent; every answer is unsure (threshold 1.0), the day cap is 3: the
agent keeps 3 and refuses 2 by the cap, uploads them in chunks over MQTT, deletes its copies once
the hub confirms; the hub stores them under the model's name and version; an operator browses
them and exports a dataset folder whose files are the very bytes the apps sent."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from ..agent import bundles as agent_bundles
from ..conftest import REPO, free_port, serving_process
from .conftest import wait_for
from .test_api import archive_of

pytestmark = pytest.mark.integration
ADMIN = "he-admin-token-5a1c9e0d7b"
OPERATOR = "he-operator-token-2f8b6d4a1c"
VIEWER = "he-viewer-token-8e3a7c5b90"
DEVICE = "he-dev"


def images(coral: Path, n: int) -> list[bytes]:
    cat = Image.open(coral / "cat_720p.jpg").convert("RGB")
    out = []
    for i in range(n):
        buf = io.BytesIO()
        cat.crop((i * 90, i * 40, i * 90 + 400, i * 40 + 400)).resize((128, 128)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hub", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_unsure_answers_become_hard_examples_on_the_hub_within_the_cap_and_export_as_a_dataset_folder(
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
    state = agent_dir / "state"
    (agent_dir / "agent.toml").write_text(
        f'device_id = "{DEVICE}"\nbroker = "{mosquitto.url}"\nstate_dir = "{state}"\n'
        f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\ntelemetry_interval_s = 1\n'
        "[hard_examples]\nenabled = true\nthreshold = 1.0\nper_minute = 100\nper_hour = 100\nper_day = 3\n"
    )
    sent = images(coral_models, 5)
    with serving_process(argv, port, tmp_path / "hub.log", env=env, timeout=60) as url:
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        viewer = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {VIEWER}"}, timeout=60)
        with open(agent_dir / "log", "wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(agent_dir / "agent.toml")],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            def device() -> dict[str, Any]:
                r = admin.get(f"/api/v1/devices/{DEVICE}")
                return r.json() if r.status_code == 200 else {}

            wait_for(lambda: device().get("online"), timeout=60, what="the agent online")
            bundle = agent_bundles.coral_bundle(tmp_path / "mnv1", coral_models, name="mnv1", version="1")
            pushed = admin.post("/api/v1/bundles", content=archive_of(bundle)).json()
            admin.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"devices": [DEVICE]}})
            wait_for(
                lambda: (device().get("active_bundle") or {}).get("digest") == pushed["digest"],
                timeout=90,
                what="the bundle active on the agent",
            )
            local = f"http://127.0.0.1:{int((state / 'http.port').read_text())}"
            with httpx.Client(base_url=local, timeout=30) as app:
                for img in sent:
                    r = app.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg"})
                    assert r.status_code == 200 and r.json()["served_by"] == "cpu", r.text

                def agent_side() -> dict[str, Any]:
                    return dict(app.get("/v1/status").json()["hard_examples"])

                counts = wait_for(
                    lambda: (h := agent_side())["counts"]["sample"] + h["counts"]["day_cap"] == 5 and h["counts"],
                    timeout=30,
                    what="the agent to judge all five",
                )
                assert counts["sample"] == 3 and counts["day_cap"] == 2, counts

                page = wait_for(
                    lambda: (
                        (p := admin.get("/api/v1/hard-examples", params={"model": "mnv1"}).json())["total"] == 3 and p
                    ),
                    timeout=60,
                    what="three hard examples on the hub",
                )
                done = wait_for(
                    lambda: (h := agent_side())["pending"] == 0 and h, timeout=30, what="the agent to drop its copies"
                )
                assert done["counts"]["uploaded"] == 3 and done["disk_bytes"] == 0
                assert not [p for p in (state / "hard-examples").iterdir() if not p.name.startswith("caps.json")]
            digests = {hashlib.sha256(b).hexdigest() for b in sent}
            items = page["items"]
            assert {i["sha256"] for i in items} <= digests and len({i["sha256"] for i in items}) == 3
            assert {(i["model"], i["version"], i["device"], i["content_type"]) for i in items} == {
                ("mnv1", "1", DEVICE, "image/jpeg")
            }
            assert all(0 <= i["confidence"] < 1.0 and i["answer"]["top"] for i in items)
            one = items[0]["id"]
            assert viewer.get(f"/api/v1/hard-examples/{one}/content").status_code == 403  # the inputs: operators only
            got = admin.get(f"/api/v1/hard-examples/{one}/content")
            assert hashlib.sha256(got.content).hexdigest() == items[0]["sha256"]

            ui = httpx.get(f"{url}/ui/hard-examples", headers={"Authorization": f"Bearer {OPERATOR}"})
            assert ui.status_code == 200 and ui.text.count('<img src="/ui/hard-examples/') == 3

            out = tmp_path / "dataset"
            hub = ["--hub", url, "--token", OPERATOR]
            res = cli("hard-examples", "export", "--model", "mnv1", "--version", "1", str(out), *hub)
            assert res.returncode == 0, res.stdout + res.stderr
            assert json.loads(res.stdout)["files"] == 3
            files = sorted((out / "images").iterdir())
            assert len(files) == 3 and {hashlib.sha256(f.read_bytes()).hexdigest() for f in files} <= digests
            rows = list(csv.DictReader(io.StringIO((out / "labels.csv").read_text())))
            assert sorted(r["file"] for r in rows) == sorted(f"images/{f.name}" for f in files)
            assert all(r["label"] == "" and r["predicted"] and r["model"] == "mnv1" for r in rows)
            assert len((out / "metadata.jsonl").read_text().splitlines()) == 3
            again = cli("hard-examples", "export", "--model", "mnv1", "--version", "1", str(out), *hub)
            assert again.returncode == 2 and "not an empty folder" in again.stderr
            listed = cli("hard-examples", "ls", "--model", "mnv1", *hub)
            assert listed.returncode == 0 and listed.stdout.count(DEVICE) == 3
            deleted = cli("hard-examples", "delete", "--model", "mnv1", "--version", "1", *hub)
            assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"deleted": 3}, deleted.stderr
            assert admin.get("/api/v1/hard-examples").json()["total"] == 0
            assert not any((tmp_path / "store" / "hard-examples" / "mnv1").rglob("*.jpg"))
        finally:
            agent.terminate()
            agent.wait(15)
            admin.close()
            viewer.close()


def test_examples_kept_while_the_hub_is_down_arrive_once_it_is_back_and_are_stored_once(
    tmp_path: Path, keys_dir: Path, mosquitto, coral_models: Path
):
    """The hub stops after the rollout; the agent keeps two unsure inputs and sends their chunks
    to the broker; the hub comes back on the same database and store and stores each once."""
    port = free_port()
    argv = [sys.executable, "-m", "hub", "serve", "--db", f"sqlite:///{tmp_path / 'hub.db'}", "--broker", mosquitto.url]
    argv += ["--keys", str(keys_dir), "--store", str(tmp_path / "store"), "--port", str(port), "--tick", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEFLEET_HUB_TOKEN": ADMIN}
    state = tmp_path / "state"
    (tmp_path / "agent.toml").write_text(
        f'device_id = "{DEVICE}"\nbroker = "{mosquitto.url}"\nstate_dir = "{state}"\n'
        f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\ntelemetry_interval_s = 1\n'
        "[hard_examples]\nenabled = true\nthreshold = 1.0\n"
    )
    with open(tmp_path / "agent.log", "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "agent.toml")],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with serving_process(argv, port, tmp_path / "hub.log", env=env, timeout=60) as url:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as admin:

                def device() -> dict[str, Any]:
                    r = admin.get(f"/api/v1/devices/{DEVICE}")
                    return r.json() if r.status_code == 200 else {}

                wait_for(lambda: device().get("online"), timeout=60, what="the agent online")
                bundle = agent_bundles.coral_bundle(tmp_path / "mnv1", coral_models, name="mnv1", version="1")
                pushed = admin.post("/api/v1/bundles", content=archive_of(bundle)).json()
                admin.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"devices": [DEVICE]}})
                wait_for(
                    lambda: (device().get("active_bundle") or {}).get("digest") == pushed["digest"],
                    timeout=90,
                    what="the bundle active on the agent",
                )
        # the hub is down now
        local = f"http://127.0.0.1:{int((state / 'http.port').read_text())}"
        sent = images(coral_models, 2)
        with httpx.Client(base_url=local, timeout=30) as app:
            for img in sent:
                assert app.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg"}).status_code == 200
            wait_for(
                lambda: app.get("/v1/status").json()["hard_examples"]["counts"]["sample"] == 2,
                timeout=30,
                what="two kept",
            )
            assert app.get("/v1/status").json()["hard_examples"]["pending"] == 2  # no hub: nothing confirmed
            with serving_process(argv, port, tmp_path / "hub2.log", env=env, timeout=60) as url:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as admin:
                    wait_for(
                        lambda: app.get("/v1/status").json()["hard_examples"]["pending"] == 0,
                        timeout=90,
                        what="the agent's copies confirmed by the hub that came back",
                    )
                    page = admin.get("/api/v1/hard-examples").json()
                    assert page["total"] == 2
                    assert {i["sha256"] for i in page["items"]} == {hashlib.sha256(b).hexdigest() for b in sent}
                    assert app.get("/v1/status").json()["hard_examples"]["counts"]["uploaded"] == 2
    finally:
        agent.terminate()
        agent.wait(15)
