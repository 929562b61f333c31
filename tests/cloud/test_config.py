"""One typed config, validated at start: every bad option is named with its value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloud import config as cfg
from cloud.errors import ConfigError

from .conftest import Setup


def build(s: Setup, **kw: object) -> cfg.CloudConfig:
    kw.setdefault("environ", {})
    return cfg.build(bundles=str(s.bundles), root=str(s.root), **kw)  # type: ignore[arg-type]


def test_bad_options_are_named_with_their_values(setup: Setup, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"bundles": str(tmp_path / "nope")}, "--bundles"),
        ({"root": str(tmp_path / "nope.json")}, "--root"),
        ({"port": 70000}, "70000"),
        ({"max_batch": 0}, "--max-batch"),
        ({"max_queue": 4, "max_batch": 8}, "--max-queue (4)"),
        ({"optimization": "turbo"}, "'turbo'"),
        ({"hub": "ftp://hub"}, "ftp://hub"),
        ({"hub": "http://hub"}, "--token"),
        ({"api_keys": ["alice:short"]}, "need >= 16"),
        ({"api_keys": ["a" * 20, "key1:" + "b" * 20]}, "unique"),
        ({"log_level": "LOUD"}, "LOUD"),
        ({"per_key_inflight": -1}, "--per-key-inflight"),
        ({"workers": -2}, "--workers"),
        ({"processes": -1}, "--processes"),
        ({"poll_s": -1}, "--poll"),
        ({"default_model": "a b"}, "'a b'"),
    ]
    for kw, needle in cases:
        args: dict[str, object] = {"bundles": str(setup.bundles), "root": str(setup.root), "environ": {}}
        args.update(kw)
        with pytest.raises(ConfigError) as info:
            cfg.build(**args)  # type: ignore[arg-type]
        assert needle in str(info.value), (kw, str(info.value))


def test_public_host_without_keys_is_refused_unless_explicitly_insecure(setup: Setup) -> None:
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        build(setup, host="0.0.0.0")
    assert not build(setup, host="0.0.0.0", insecure_no_auth=True).auth_required
    assert build(setup, host="0.0.0.0", api_keys=["ops:" + "s" * 16]).auth_required
    assert not build(setup, host="127.0.0.1").auth_required


def test_keys_and_hub_token_come_from_the_environment_too(setup: Setup) -> None:
    env = {cfg.ENV_API_KEYS: "ci:" + "c" * 20 + ", " + "d" * 20, cfg.ENV_HUB_TOKEN: "s3cr3t-hub-value"}
    c = build(setup, api_keys=["ops:" + "o" * 20], hub="http://hub:8000/", environ=env)
    assert [k.name for k in c.api_keys] == ["ops", "ci", "key3"]
    assert c.hub is not None and c.hub.url == "http://hub:8000" and c.hub.token == "s3cr3t-hub-value"
    assert "o" * 20 not in repr(c) and "s3cr3t" not in repr(c)
    assert c.batch.max_wait_s == 0.0 and c.batch.workers >= 1
    assert build(setup, max_wait_ms=2.5, workers=3).batch == cfg.BatchPolicy(4, 0.0025, 256, 5.0, 3)


def test_processes_share_out_the_cpus_as_workers_unless_workers_are_given(setup: Setup) -> None:
    cpus = os.cpu_count() or 1
    one = build(setup)
    assert one.processes == 1 and one.batch.workers == cpus
    two = build(setup, processes=2)
    assert two.processes == 2 and two.batch.workers == max(1, cpus // 2)
    assert build(setup, processes=0).processes == cpus
    assert build(setup, processes=2, workers=3).batch.workers == 3


def test_default_model_comes_from_the_flag_or_the_environment(setup: Setup) -> None:
    assert build(setup).default_model is None
    assert build(setup, environ={cfg.ENV_DEFAULT_MODEL: "digits"}).default_model == "digits"
    assert build(setup, environ={cfg.ENV_DEFAULT_MODEL: " "}).default_model is None  # compose's empty default
    assert build(setup, default_model="birds", environ={cfg.ENV_DEFAULT_MODEL: "digits"}).default_model == "birds"
