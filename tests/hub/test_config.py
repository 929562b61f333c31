"""The hub's one typed config: bad values stop start-up with the key and the value named."""

from __future__ import annotations

import pytest

from hub.config import HubConfig
from hub.errors import ConfigError


@pytest.mark.parametrize("given,message", [
    ({"port": "abc"}, "port: 'abc' is not an integer"),
    ({"port": 99999999}, "port: 99999999 must be within 0..65535"),
    ({"tick": "x"}, "tick: 'x' is not a number"),
])
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
    cfg = HubConfig.load({}, environ={"EDGEFLEET_HUB_TOKEN_FILE": str(tmp_path / "token"),
                                      "EDGEFLEET_HUB_BROKER_FILE": str(tmp_path / "broker")})
    assert cfg.tokens == {"a-strong-admin-token-from-a-file": "admin"}
    assert cfg.broker_url.password == "s3cret" and cfg.broker_for_devices == "mqtt://broker:1883"
    with pytest.raises(ConfigError, match="EDGEFLEET_HUB_TOKEN_FILE"):
        HubConfig.load({}, environ={"EDGEFLEET_HUB_TOKEN_FILE": str(tmp_path / "missing")})
