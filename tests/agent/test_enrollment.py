"""Enrollment: the hub's answer is checked (root self-signed, fingerprint pinned), then written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load
from agent.enrollment import parse_answer, render_config
from agent.errors import EnrollError
from tests.conftest import REPO


def _answer(trust, **over):
    doc = {
        "device_id": "pi-7",
        "broker": "mqtt://10.0.0.2:1883",
        "mqtt": {"username": "pi-7", "password": 'p"w\\d'},
        "root": trust.root_bytes.decode(),
    }
    doc.update(over)
    return doc


def test_answer_with_a_self_signed_root_and_matching_fingerprint_is_accepted(trust, tmp_path: Path):
    fp = hashlib.sha256(trust.root_bytes).hexdigest()
    e = parse_answer(_answer(trust), fp, int(time.time()))
    assert e.device_id == "pi-7" and e.root_sha256 == fp
    (tmp_path / "root.json").write_bytes(e.root)
    (tmp_path / "agent.toml").write_text(render_config(e, tmp_path / "root.json", tmp_path / "st", "rpi5", 8780))
    cfg = load(tmp_path / "agent.toml", env={})  # the written file is a valid config, quotes escaped
    assert (cfg.device_id, cfg.username, cfg.password, cfg.board) == ("pi-7", "pi-7", 'p"w\\d', "rpi5")


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"root": "{}"}, "does not verify"),
        ({"device_id": "a/b"}, "device id"),
        ({"mqtt": None}, "lacks field"),
    ],
)
def test_bad_answer_is_refused_with_the_reason(trust, over, needle):
    with pytest.raises(EnrollError, match=needle):
        parse_answer(_answer(trust, **over), None, int(time.time()))


def test_root_with_another_fingerprint_is_refused(trust):
    with pytest.raises(EnrollError, match="does not match the expected"):
        parse_answer(_answer(trust), "0" * 64, int(time.time()))


def test_enrollment_refuses_a_trust_root_that_expired_yesterday(trust):
    """A hub whose root.json has expired hands it out: the device would pin a root that
    verifies nothing, so enrollment stops and names the expiry."""
    from protocol.signing import root_document, seal

    now = int(time.time())
    expired = seal(
        "root", root_document(1, now - 86400, trust.root_keys, 2, [trust.targets_key]), trust.root_keys[:2]
    ).to_bytes()
    with pytest.raises(EnrollError, match=rf"expired root: trust root v1 expired at .*\({now - 86400}\)"):
        parse_answer(_answer(trust, root=expired.decode()), hashlib.sha256(expired).hexdigest(), now)


@pytest.mark.integration
@pytest.mark.slow
def test_device_enrolls_at_the_real_hub_and_comes_online(tmp_path: Path):
    from demo.launcher import Fleet

    fleet = Fleet(tmp_path / "fleet")
    agent = None
    try:
        fleet.start_broker()
        root = fleet.init_keys()
        fleet.start_hub()
        token = fleet.api("POST", "/api/v1/devices/enroll", {"device": "pi-enrolled"})["token"]
        conf = tmp_path / "dev" / "agent.toml"
        argv = [
            sys.executable,
            "-m",
            "agent",
            "enroll",
            "--hub",
            fleet.hub_url,
            "--token",
            token,
            "--config",
            str(conf),
            "--state-dir",
            str(tmp_path / "dev" / "state"),
            "--http-port",
            "0",
            "--root-sha256",
            hashlib.sha256(root.read_bytes()).hexdigest(),
        ]
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "exists" in again.stderr
        assert oct(conf.stat().st_mode & 0o777) == "0o600"
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(conf)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        dev = {}
        while time.monotonic() < deadline:
            dev = fleet.api("GET", "/api/v1/devices/pi-enrolled")
            if dev.get("online"):
                break
            time.sleep(0.5)
        assert dev.get("online"), json.dumps(dev)[:500]
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        fleet.stop_all()


def test_files_for_the_service_group_are_0640_owned_by_that_group_from_their_first_byte(tmp_path: Path):
    """The systemd unit runs as User=edgefleet: a config written 0600 root:root by an enroll run as
    root (issue 16) made the service restart forever. With --group the file is the group's."""
    import grp
    import os

    from agent.enrollment import _write_private, group_id

    other = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    if os.geteuid() != 0 and other.gr_name not in [grp.getgrgid(g).gr_name for g in os.getgroups()]:
        pytest.skip("needs root (or membership of a second group) to hand a file to another group")
    path = tmp_path / "etc" / "agent.toml"
    _write_private(path, b"x = 1\n", False, group_id(other.gr_name))
    st = path.stat()
    assert (oct(st.st_mode & 0o777), st.st_gid, path.read_bytes()) == ("0o640", other.gr_gid, b"x = 1\n")
    _write_private(tmp_path / "plain.toml", b"", False)
    assert oct((tmp_path / "plain.toml").stat().st_mode & 0o777) == "0o600"


def test_enrolling_for_a_group_that_does_not_exist_is_refused_before_the_token_is_spent(tmp_path: Path):
    from agent.enrollment import enroll

    # the hub URL is unreachable: a refusal naming the group proves no request was made first
    with pytest.raises(EnrollError, match="group 'no-such-group-x' does not exist"):
        enroll("http://127.0.0.1:9", "t", tmp_path / "agent.toml", tmp_path / "st", group="no-such-group-x")
