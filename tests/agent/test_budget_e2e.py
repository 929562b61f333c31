"""Metered links with a real agent and broker: the daily byte budget holds telemetry and a
download back while install reports still get through; the rate cap slows a download to it."""

from __future__ import annotations

import time

import pytest

from .bundles import MNV1, coral_bundle
from .test_telemetry_e2e import _pending

pytestmark = pytest.mark.integration


def test_a_spent_daily_budget_holds_telemetry_and_defers_a_download_but_reports_get_through(
    tmp_path, coral_models, trust, hub, make_agent
):
    agent = make_agent("cell1", daily_byte_budget=6000).start()
    hub.wait(lambda: len(hub.telemetry) >= 2, 30, "telemetry while the budget lasts")
    hub.wait(lambda: len(_pending(agent)) >= 3, 60, "telemetry held back in the backlog once the budget is spent")
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models, MNV1))
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    r = hub.wait(
        lambda: next((r for r in hub.reports if r.bundle == pub.ref.digest and "deferred until" in r.detail), None),
        30,
        "the deferral report",
    )
    assert "daily_byte_budget" in r.detail and "UTC" in r.detail
    st = agent.http("GET", "/v1/status")[1]
    used = st["bytes_today"]
    assert used["budget"] == 6000 and used["bundle"] == 0  # not one chunk fetched
    assert used["telemetry"] <= 6000 and used["report"] > 0  # reports went past the budget
    assert st["state"] == "download" and st["active"] is None
    sent = len(hub.telemetry)
    assert hub.telemetry[-1].usage["budget"] == 6000
    held = len(_pending(agent))
    time.sleep(3)  # three more windows: still held back, still counted in the backlog
    assert len(hub.telemetry) == sent and len(_pending(agent)) > held


def test_the_download_rate_cap_slows_a_download_to_it(tmp_path, coral_models, trust, hub, make_agent):
    rate = 200_000
    agent = make_agent("cell2", download_rate_bytes_s=rate).start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models, MNV1))
    pub = hub.publish_bundle(env, archive)
    t0 = time.monotonic()
    hub.desire(agent.device, pub)
    hub.report(agent.device, "verify", "ok", pub.ref.digest)
    took = time.monotonic() - t0
    # a lower bound only (a busy machine makes it longer): the first second's bytes may burst
    assert took >= (len(archive) - rate) / rate, (took, len(archive))
    st = agent.http("GET", "/v1/status")[1]
    assert st["bytes_today"]["bundle"] >= len(archive) and st["bytes_today"]["rate_bytes_s"] == rate
