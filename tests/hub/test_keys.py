"""Keys: init refuses to overwrite; rotation issues root N+1 signed by old and new thresholds;
devices pinned to the old root walk to the new one and keep verifying what the hub signs."""

from __future__ import annotations

import time

import pytest

from hub import keys, rotation
from hub.__main__ import main
from hub.errors import Invalid
from hub.keys import HubKeys
from protocol.errors import VerificationError
from protocol.messages import verify_desired
from protocol.signing import SigningKey, load_root_unverified, rotate_root

from .helpers import status
from .test_api import push


def test_keys_init_cli_writes_root_and_keys_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "k"
    assert main(["keys", "init", "--dir", str(d), "--root-keys", "3", "--threshold", "2"]) == 0
    out = capsys.readouterr().out
    assert "OFFLINE" in out and (d / "root-3.pem").exists() and (d / "online.pem").stat().st_mode & 0o077 == 0
    root = load_root_unverified((d / "root.json").read_bytes())
    assert root.version == 1 and root.role("root").threshold == 2 and len(root.role("root").keyids) == 3
    before = (d / "online.pem").read_bytes()
    assert main(["keys", "init", "--dir", str(d)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (d / "online.pem").read_bytes() == before


def test_rotation_needs_a_threshold_of_current_root_keys(keys_dir):
    one = [SigningKey.from_pem((keys_dir / "root-1.pem").read_bytes())]
    with pytest.raises(Invalid, match="threshold is 2"):
        keys.rotate(keys_dir, one)
    with pytest.raises(Invalid, match="threshold is 2"):
        keys.rotate(keys_dir, [SigningKey.generate(), SigningKey.generate()])


def test_device_enrolled_before_rotation_keeps_working_after_it(client, memhub, keys_dir, bundle_dir, capsys):
    hub, pub = memhub
    pinned = HubKeys.load(keys_dir).root  # what a device got at provisioning
    hub.ingest.handle([("ef/v1/dev/old/status", status("old"))])
    b = push(client, bundle_dir())
    assert (
        main(
            [
                "keys",
                "rotate",
                "--dir",
                str(keys_dir),
                "--root-key",
                str(keys_dir / "root-1.pem"),
                "--root-key",
                str(keys_dir / "root-3.pem"),
            ]
        )
        == 0
    )
    assert "root v2" in capsys.readouterr().out
    assert rotation.reload_keys(hub.fleet) is True
    new_root_bytes = pub.retained["ef/v1/root"]
    assert load_root_unverified(new_root_bytes).version == 2
    client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
    doc = pub.retained["ef/v1/dev/old/desired"]
    now = int(time.time())
    with pytest.raises(VerificationError):  # the new online key is unknown to the old root...
        verify_desired(doc, pinned, "old", 0, now)
    walked = rotate_root(pinned, new_root_bytes, now)  # ...until the device walks to root v2
    assert verify_desired(doc, walked, "old", 0, now).bundle.digest == b["digest"]
    assert (
        client.get("/api/v1/root/1", headers={"Authorization": ""}).content == (keys_dir / "root-v1.json").read_bytes()
    )
    assert client.get("/api/v1/root/9").status_code == 404
    # a second rotation: a device two versions behind walks the chain the API serves
    v2_keys = sorted(keys_dir.glob("root-v2-*.pem"))[:2]
    keys.rotate(keys_dir, [SigningKey.from_pem(p.read_bytes()) for p in v2_keys])
    rotation.reload_keys(hub.fleet)
    root = pinned
    for v in (2, 3):
        root = rotate_root(root, client.get(f"/api/v1/root/{v}").content, now)
    assert root.version == 3 and root.raw == pub.retained["ef/v1/root"]
