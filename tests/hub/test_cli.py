"""The `edgefleet-hub` CLI as the lead's demo uses it: a real `serve` process over a real
broker, `models push`, `rollouts create/status`, `devices ls/show/enroll`, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import REPO, free_port, serving_process
from .conftest import FakeDevice
from .helpers import report, status

pytestmark = pytest.mark.integration
TOKEN = "cli-test-token-0123456789"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    if check:
        assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def served(tmp_path: Path, mosquitto):
    cli("keys", "init", "--dir", str(tmp_path / "keys"))
    port = free_port()
    argv = [sys.executable, "-m", "hub", "serve", "--db", f"sqlite:///{tmp_path / 'hub.db'}", "--broker", mosquitto.url]
    argv += ["--keys", str(tmp_path / "keys"), "--store", str(tmp_path / "store"), "--port", str(port)]
    argv += ["--token", TOKEN, "--tick", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with serving_process(argv, port, tmp_path / "hub.log", env=env, timeout=30) as url:
        yield url


def test_push_rollout_and_watch_it_complete_through_the_cli(served, mosquitto, bundle_dir, tmp_path):
    hub = ["--hub", served, "--token", TOKEN]
    dev = FakeDevice("cli-dev", mosquitto.port).connect()
    try:
        dev.send("status", status("cli-dev"), retain=True)
        pushed = json.loads(cli("models", "push", str(bundle_dir()), *hub).stdout.strip().splitlines()[-1])
        assert set(pushed) >= {"digest", "name", "version", "archive_sha256", "size"}
        rid = cli("rollouts", "create", "--bundle", pushed["digest"], "--all", *hub).stdout.strip()
        deadline = time.monotonic() + 20
        while not dev.got("desired") and time.monotonic() < deadline:
            time.sleep(0.1)
        st = json.loads(cli("rollouts", "status", rid, "--json", *hub).stdout)
        dev.send("report", report("cli-dev", 1, st["devices"][0]["seq"], bundle=pushed["digest"]))
        watched = cli("rollouts", "status", rid, "--watch", "--interval", "0.2", *hub)
        assert "1/1 installed" in watched.stdout and "completed" in watched.stdout
        listing = cli("devices", "ls", *hub).stdout
        assert "cli-dev" in listing and "(1 of 1)" in listing
        assert json.loads(cli("devices", "show", "cli-dev", *hub).stdout)["device_id"] == "cli-dev"
        enrolled = json.loads(cli("devices", "enroll", "cam-9", "--group", "lab", *hub).stdout.splitlines()[0])
        assert enrolled["device_id"] == "cam-9" and len(enrolled["token"]) > 20
    finally:
        dev.close()


def test_cli_errors_are_one_line_with_documented_exit_codes(served, tmp_path):
    hub = ["--hub", served, "--token", TOKEN]
    bad = cli("rollouts", "status", "nope", *hub, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr
    assert cli("devices", "ls", "--hub", served, "--token", "wrong", check=False).returncode == 2
    down = cli("devices", "ls", "--hub", f"http://127.0.0.1:{free_port()}", "--token", TOKEN, check=False)
    assert down.returncode == 1 and "unreachable" in down.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nodir = cli("models", "push", str(empty), *hub, check=False)
    assert nodir.returncode == 2 and "manifest.json" in nodir.stderr
    weak = cli("serve", "--keys", str(tmp_path), "--port", "1", check=False)
    assert weak.returncode == 2 and "token" in weak.stderr


def test_ls_lists_bundles_models_rollouts_and_devices_as_tables_and_as_the_api_page(served, mosquitto, bundle_dir):
    hub = ["--hub", served, "--token", TOKEN]
    dev = FakeDevice("ls-dev", mosquitto.port).connect()
    try:
        dev.send("status", status("ls-dev"), retain=True)
        pushed = [
            json.loads(cli("models", "push", str(bundle_dir(name=n, version=v)), *hub).stdout.splitlines()[-1])
            for n, v in (("digits", "1.0.0"), ("digits", "1.1.0"), ("kws", "0.1.0"))
        ]

        table = cli("models", "ls", *hub).stdout.splitlines()
        assert table[0].split() == ["name", "version", "rev", "size", "uploaded", "digest"]
        assert all(any(p["digest"] in line for line in table) for p in pushed)
        assert table[-1] == "(3 of 3)"
        digits = json.loads(cli("models", "ls", "--name", "digits", "--json", *hub).stdout)
        assert digits["total"] == 2 and {b["version"] for b in digits["items"]} == {"1.0.0", "1.1.0"}
        second = json.loads(cli("models", "ls", "--limit", "1", "--offset", "1", "--json", *hub).stdout)
        assert (second["limit"], second["offset"], second["total"], len(second["items"])) == (1, 1, 3, 1)
        assert cli("models", "ls", "--limit", "1", *hub).stdout.splitlines()[-1] == (
            "(1 of 3; --offset 1 for the next page)"
        )
        by_name = json.loads(cli("models", "ls", "--by-name", "--json", *hub).stdout)
        assert {m["name"]: m["revisions"] for m in by_name["items"]} == {"digits": 2, "kws": 1}

        rid = cli("rollouts", "create", "--bundle", pushed[0]["digest"], "--device", "ls-dev", *hub).stdout.strip()
        rollouts = cli("rollouts", "ls", *hub).stdout.splitlines()
        assert rollouts[0].split()[:3] == ["rollout", "phase", "installed"]
        assert rollouts[1].split()[:4] == [rid, "running", "0/1", pushed[0]["digest"][:12]]
        assert "devices:ls-dev" in rollouts[1]
        running = json.loads(cli("rollouts", "ls", "--phase", "running", "--json", *hub).stdout)
        assert [r["id"] for r in running["items"]] == [rid]
        assert json.loads(cli("rollouts", "ls", "--phase", "completed", "--json", *hub).stdout)["total"] == 0

        def devices(*flags: str) -> list[str]:
            page = json.loads(cli("devices", "ls", "--json", *flags, *hub).stdout)
            return [d["device_id"] for d in page["items"]]

        assert devices("--online") == ["ls-dev"] and devices("--q", "ls-") == ["ls-dev"]
        assert devices("--no-online") == [] and devices("--group", "lab") == []
        assert devices("--bundle", pushed[2]["digest"]) == []
        listing = cli("devices", "ls", *hub).stdout.splitlines()
        assert listing[0].split()[:4] == ["device", "online", "state", "group"]
        assert listing[1].split()[:2] == ["ls-dev", "yes"] and listing[-1] == "(1 of 1)"
    finally:
        dev.close()


def test_ls_bad_paging_and_filters_exit_2_with_one_line(served):
    hub = ["--hub", served, "--token", TOKEN]
    for args in (
        ("devices", "ls", "--limit", "0"),
        ("models", "ls", "--offset", "-1"),
        ("devices", "ls", "--bundle", "x"),
    ):
        bad = cli(*args, *hub, check=False)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, (args, bad.stderr)
        assert "HTTP 422" in bad.stderr
    phase = cli("rollouts", "ls", "--phase", "done", *hub, check=False)
    assert phase.returncode == 2 and "invalid choice: 'done'" in phase.stderr


def test_group_windows_are_set_listed_and_cleared_through_the_cli(served):
    hub = ["--hub", served, "--token", TOKEN]
    spec = "days=mon,tue,wed,thu,fri start=1:00 duration=180m"
    out = json.loads(cli("groups", "set-window", "night", spec, "--tz", "Europe/Berlin", *hub).stdout)
    assert out["window"]["spec"] == "days=mon-fri start=01:00 duration=3h" and out["window"]["tz"] == "Europe/Berlin"
    table = cli("groups", "ls", *hub).stdout.splitlines()
    assert table[0].split()[:3] == ["group", "devices", "window"]
    assert any(line.startswith("night") and "Europe/Berlin" in line for line in table)
    bad = cli("groups", "set-window", "night", "start=25:00 duration=1h", *hub, check=False)
    assert bad.returncode == 2 and "start=25:00" in bad.stderr
    assert json.loads(cli("groups", "clear-window", "night", *hub).stdout)["window"] is None
    assert cli("groups", "clear-window", "night", *hub, check=False).returncode == 2


def test_bulk_tags_devices_and_retries_a_failed_install_through_the_cli_with_a_line_per_device(
    served, mosquitto, bundle_dir
):
    hub = ["--hub", served, "--token", TOKEN]
    dev = FakeDevice("cli-bulk", mosquitto.port).connect()
    try:
        dev.send("status", status("cli-bulk"), retain=True)
        deadline = time.monotonic() + 20
        while "cli-bulk" not in cli("devices", "ls", *hub).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        out = cli("devices", "bulk", "tag", "cli-bulk", "nobody", "--tag", "lab", *hub, check=False)
        assert out.returncode == 1  # not every device was ok: never a silent partial
        assert out.stdout.splitlines() == ["cli-bulk\tok\tchanged", "nobody\tunknown\tno such device"]
        assert out.stderr.strip() == "1 ok, 1 unknown, 0 refused"
        assert "cli-bulk" in cli("devices", "ls", "--tag", "lab", *hub).stdout
        pushed = json.loads(cli("models", "push", str(bundle_dir()), *hub).stdout.strip().splitlines()[-1])
        policy = '{"gates": {"max_install_failure_rate": 1.0}}'
        rid = cli("rollouts", "create", "--bundle", pushed["digest"], "--all", "--policy", policy, *hub).stdout.strip()
        while not dev.got("desired") and time.monotonic() < deadline + 20:
            time.sleep(0.1)
        st = json.loads(cli("rollouts", "status", rid, "--json", *hub).stdout)
        dev.send("report", report("cli-bulk", 1, st["devices"][0]["seq"], "selftest", "failed", "selftest_failed"))
        while json.loads(cli("rollouts", "status", rid, "--json", *hub).stdout)["counts"] != {"failed": 1}:
            assert time.monotonic() < deadline + 40, "the failure report never settled the device"
            time.sleep(0.2)
        out = cli("devices", "bulk", "retry", "cli-bulk", *hub)
        assert out.stdout.strip() == f"cli-bulk\tok\tre-issued in rollout {rid} (issued)"
        assert cli("devices", "bulk", "tag", "cli-bulk", *hub, check=False).returncode == 2  # no --tag: bad input
    finally:
        dev.close()
