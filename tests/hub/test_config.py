"""The hub's one typed config: bad values stop start-up with the key and the value named."""

from __future__ import annotations

import pytest

from hub.config import HubConfig
from hub.errors import ConfigError


@pytest.mark.parametrize(
    "given,message",
    [
        ({"port": "abc"}, "port: 'abc' is not an integer"),
        ({"port": 99999999}, "port: 99999999 must be within 0..65535"),
        ({"tick": "x"}, "tick: 'x' is not a number"),
    ],
)
def test_bad_numbers_name_the_key_and_the_value(given, message):
    with pytest.raises(ConfigError, match=message):
        HubConfig.load({"dev": True, **given}, {})


def test_numbers_come_from_the_environment_too():
    cfg = HubConfig.load({"dev": True}, {"EDGEFLEET_HUB_PORT": "8123"})
    assert cfg.port == 8123


def test_secrets_come_from_files_so_they_never_sit_in_argv(tmp_path):
    """EDGEFLEET_HUB_<NAME>_FILE: Docker/Kubernetes secrets and systemd credentials, not `ps`."""
    (tmp_path / "token").write_text("a-strong-admin-token-from-a-file\n")
    (tmp_path / "broker").write_text("mqtt://hub:s3cret@broker:1883")
    cfg = HubConfig.load(
        {},
        environ={
            "EDGEFLEET_HUB_TOKEN_FILE": str(tmp_path / "token"),
            "EDGEFLEET_HUB_BROKER_FILE": str(tmp_path / "broker"),
        },
    )
    assert cfg.tokens == {"a-strong-admin-token-from-a-file": "admin"}
    assert cfg.broker_url.password == "s3cret" and cfg.broker_for_devices == "mqtt://broker:1883"
    with pytest.raises(ConfigError, match="EDGEFLEET_HUB_TOKEN_FILE"):
        HubConfig.load({}, environ={"EDGEFLEET_HUB_TOKEN_FILE": str(tmp_path / "missing")})


def test_mqtts_broker_defaults_to_8883_and_is_handed_out_as_mqtts_without_credentials(tmp_path):
    from hub.config import BrokerUrl

    u = BrokerUrl.parse("mqtts://hub:secret@broker.example")
    assert (u.tls, u.port) == (True, 8883)
    assert u.without_credentials() == "mqtts://broker.example:8883"
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    c = HubConfig.load(
        {"token": "a-strong-token", "broker": "mqtts://hub:secret@broker.example", "broker_ca": str(ca)}, {}
    )
    assert c.broker_tls.ca == ca and c.broker_for_devices == "mqtts://broker.example:8883"


@pytest.mark.parametrize(
    "given, message",
    [
        ({"broker_ca": "CA"}, "not mqtts://"),
        ({"broker": "mqtts://b:8883", "broker_cert": "CA"}, "needs its key"),
        (
            {"broker": "mqtts://b:8883", "broker_ca": "/nonexistent/ca.pem"},
            "'/nonexistent/ca.pem' is not a readable file",
        ),
    ],
)
def test_tls_files_that_cannot_work_are_refused_at_start(tmp_path, given, message):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    given = {k: str(ca) if v == "CA" else v for k, v in given.items()}
    with pytest.raises(ConfigError, match=message):
        HubConfig.load({"token": "a-strong-token", **given}, {})


def test_shared_group_comes_from_the_flag_or_the_environment_and_defaults_to_plain_subscriptions():
    assert HubConfig.load({"dev": True}, {}).shared_group == ""
    assert HubConfig.load({"dev": True}, {"EDGEFLEET_HUB_SHARED_GROUP": ""}).shared_group == ""
    assert HubConfig.load({"dev": True}, {"EDGEFLEET_HUB_SHARED_GROUP": "hubs"}).shared_group == "hubs"
    assert (
        HubConfig.load({"dev": True, "shared_group": "ingest"}, {"EDGEFLEET_HUB_SHARED_GROUP": "hubs"}).shared_group
        == "ingest"
    )


@pytest.mark.parametrize(
    "name, message",
    [
        ("a/b", r"shared_group: 'a/b' contains '/'"),
        ("hubs+", r"shared_group: 'hubs\+' contains '\+'"),
        ("#", r"shared_group: '#' contains '#'"),
        ("nul\x00", r"shared_group: 'nul\\x00' contains '\\x00'"),
        ("", r"shared_group: '' is empty"),
    ],
)
def test_a_shared_group_that_is_not_one_topic_level_is_refused_naming_it(name, message):
    with pytest.raises(ConfigError, match=message):
        HubConfig.load({"dev": True, "shared_group": name}, {})


def test_a_bad_shared_group_from_the_environment_is_refused_too():
    with pytest.raises(ConfigError, match="shared_group: 'a/b'"):
        HubConfig.load({"dev": True}, {"EDGEFLEET_HUB_SHARED_GROUP": "a/b"})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"raw_retention": 600}, "raw_retention.*600.*3600"),
        ({"raw_retention": 30 * 86400, "minute_retention": 7 * 86400}, "raw <= minute <= hour.*2592000 s, 604800 s"),
        ({"minute_retention": 200 * 86400, "hour_retention": 100 * 86400}, "raw <= minute <= hour"),
    ],
)
def test_telemetry_retentions_must_grow_from_raw_to_minute_to_hour_rollups(given, message):
    with pytest.raises(ConfigError, match=message):
        HubConfig.load({"dev": True, **given}, {})
    assert HubConfig.load({"dev": True}, {}).raw_retention == 48 * 3600
