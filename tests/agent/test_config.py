"""Config: one typed object from TOML, bad values named with their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load
from agent.errors import ConfigError


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "root.json").write_text("{}")
    p = tmp_path / "agent.toml"
    p.write_text(
        'device_id = "dev1"\nbroker = "mqtt://127.0.0.1:1883"\nstate_dir = "state"\nroot = "root.json"\n' + body
    )
    return p


def test_minimal_config_gets_defaults_and_relative_paths(tmp_path: Path):
    cfg = load(_write(tmp_path, ""), env={})
    assert cfg.broker.host == "127.0.0.1" and cfg.broker.port == 1883 and not cfg.broker.tls
    assert cfg.state_dir == tmp_path / "state" and cfg.http_host == "127.0.0.1" and cfg.edgetpu == "auto"
    assert cfg.crash_at is None


@pytest.mark.parametrize(
    "body, key",
    [
        ("http_port = 70000\n", "http_port"),
        ('edgetpu = "maybe"\n', "edgetpu"),
        ("telemetry_interval_s = 0\n", "telemetry_interval_s"),
        ('board = "rpi 4"\n', "board"),
        ('cloud_url = "ftp://x"\n', "cloud_url"),
        ('username = "u"\n', "username/password"),
    ],
)
def test_bad_value_is_reported_with_its_key(tmp_path: Path, body: str, key: str):
    with pytest.raises(ConfigError, match=key):
        load(_write(tmp_path, body), env={})


def test_bad_broker_url_and_device_id_are_named(tmp_path: Path):
    p = _write(tmp_path, "")
    p.write_text(p.read_text().replace("mqtt://127.0.0.1:1883", "http://x"))
    with pytest.raises(ConfigError, match="broker: expected mqtt://"):
        load(p, env={})
    p.write_text(p.read_text().replace('"dev1"', '"dev/1"').replace("http://x", "mqtt://h"))
    with pytest.raises(ConfigError, match="device_id"):
        load(p, env={})


def test_missing_root_file_and_invalid_toml_are_clear(tmp_path: Path):
    p = _write(tmp_path, "")
    (tmp_path / "root.json").unlink()
    with pytest.raises(ConfigError, match="root: pinned trust root"):
        load(p, env={})
    p.write_text("device_id = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p, env={})


def test_crash_hook_accepts_only_install_stages(tmp_path: Path):
    p = _write(tmp_path, "")
    assert load(p, env={"EDGEFLEET_AGENT_CRASH_AT": "switch"}).crash_at == "switch"
    with pytest.raises(ConfigError, match="EDGEFLEET_AGENT_CRASH_AT"):
        load(p, env={"EDGEFLEET_AGENT_CRASH_AT": "lunch"})


def test_max_packet_size_defaults_to_what_the_hub_sizes_its_broker_for(tmp_path: Path):
    from agent.config import packet_bytes_for
    from hub.credentials import max_packet_bytes

    assert load(_write(tmp_path, ""), env={}).max_packet_bytes == max_packet_bytes(64 * 1024) == 1 << 20
    for chunk in (1024, 64 * 1024, 1 << 20, 8 << 20):
        assert packet_bytes_for(chunk) == max_packet_bytes(chunk)
    assert load(_write(tmp_path, "max_packet_bytes = 4194304\n"), env={}).max_packet_bytes == 4 << 20
    with pytest.raises(ConfigError, match="max_packet_bytes: expected 1048576..268435455, got 65536"):
        load(_write(tmp_path, "max_packet_bytes = 65536\n"), env={})


def test_broker_may_list_a_clusters_nodes_and_a_bad_one_is_named(tmp_path: Path):
    p = _write(tmp_path, "")
    p.write_text(p.read_text().replace('"mqtt://127.0.0.1:1883"', '["mqtt://a:1883", "mqtts://b"]'))
    cfg = load(p, env={})
    assert [str(b) for b in cfg.brokers] == ["mqtt://a:1883", "mqtts://b:8883"] and cfg.broker == cfg.brokers[0]
    p.write_text(p.read_text().replace('"mqtts://b"', '"tcp://b"'))
    with pytest.raises(ConfigError, match="broker: expected mqtt://host:port or mqtts://host:port, got 'tcp://b'"):
        load(p, env={})
    p.write_text(p.read_text().replace('["mqtt://a:1883", "tcp://b"]', "[]"))
    with pytest.raises(ConfigError, match=r"broker: expected a URL or a non-empty list of URLs, got \[\]"):
        load(p, env={})
