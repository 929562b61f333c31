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
