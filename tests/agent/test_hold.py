"""App-controlled update deferral: the pure decision (``agent.install.hold_request`` and
``hold_verdict``) table-tested, and a real agent process over a real broker whose app holds
an update through the local API: the new bundle waits (reported with the hold), the old one
keeps serving, and the switch happens when the app lets go."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import HoldRefused
from agent.install import AppHold, hold_request, hold_verdict

from .bundles import coral_bundle

NOW = 1_000_000


@pytest.mark.parametrize(
    ("minutes", "reason", "max_minutes", "needle"),
    [
        (0, "", 60, "from 1 to 60, got 0"),
        (61, "", 60, "from 1 to 60, got 61"),
        (True, "", 60, "got True"),
        (1.5, "", 60, "got 1.5"),
        ("5", "", 60, "got '5'"),
        (None, "", 60, "got None"),
        (5, 7, 60, "reason must be a string"),
        (5, "x" * 201, 60, "at most 200"),
        (5, "", 0, "disabled"),
    ],
)
def test_a_bad_hold_request_is_refused_naming_the_value(minutes, reason, max_minutes, needle):
    with pytest.raises(HoldRefused, match=needle):
        hold_request(minutes, reason, NOW, max_minutes)


def test_a_hold_runs_for_the_minutes_asked():
    assert hold_request(30, "surgery", NOW, 60) == AppHold(NOW + 1800, "surgery")


@pytest.mark.parametrize(
    ("hold", "ready_since", "now", "expect_until"),
    [
        (None, NOW, NOW, None),  # no hold: switch now
        (AppHold(NOW + 600, "r"), NOW, NOW, NOW + 600),  # held until the hold ends
        (AppHold(NOW + 600, "r"), NOW, NOW + 600, None),  # it ended
        (AppHold(NOW - 1, "r"), NOW, NOW, None),  # an expired hold holds nothing
        # renewed again and again: one install waits at most max_minutes after it was ready
        (AppHold(NOW + 3000, "r"), NOW - 3000, NOW, NOW + 600),
        (AppHold(NOW + 3000, "r"), NOW - 3600, NOW, None),
    ],
)
def test_a_hold_stops_the_switch_until_it_ends_and_never_past_the_maximum(hold, ready_since, now, expect_until):
    got = hold_verdict(hold, ready_since, now, 60)
    assert (got.until if got else None) == expect_until


@pytest.mark.integration
def test_an_app_holds_an_update_through_the_local_api_and_the_switch_waits_for_it(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    cat = (coral_models / "cat_720p.jpg").read_bytes()
    env1, _, ar1 = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
    v1 = hub.publish_bundle(env1, ar1)
    env2, _, ar2 = trust.sign_dir(coral_bundle(tmp_path / "b2", coral_models, version="2"))
    v2 = hub.publish_bundle(env2, ar2)
    agent = make_agent("dev1", max_hold_minutes=10).start()
    hub.desire("dev1", v1)
    hub.report("dev1", "commit", "ok", v1.ref.digest)

    for bad, code, needle in (
        (b'{"minutes": 11}', 422, "from 1 to 10, got 11"),
        (b'{"minutes": 5, "until": 0}', 422, "unknown fields ['until']"),
        (b"[5]", 422, "JSON object"),
        (b'{"minutes": NaN}', 400, "NaN"),
    ):
        got = agent.http("POST", "/v1/update/hold", bad, {"Content-Type": "application/json"})
        assert got[0] == code and needle in got[1]["detail"], got
    assert agent.http("PUT", "/v1/update/hold")[0] == 405

    code, held = agent.http("POST", "/v1/update/hold", b'{"minutes": 5, "reason": "surgery in progress"}')
    assert code == 200 and held["held"] and held["reason"] == "surgery in progress" and held["max_minutes"] == 10
    hub.desire("dev1", v2)
    rep = hub.wait(
        lambda: next((r for r in hub.reports if r.stage == "switch" and r.hold is not None), None), 60, "held report"
    )
    assert rep.status == "progress" and rep.bundle == v2.ref.digest and rep.hold.until == held["until"]
    assert rep.hold.reason == "surgery in progress" and rep.desired_seq == 2
    st = agent.http("GET", "/v1/status")[1]
    assert st["state"] == "held" and st["update_hold"]["install_waiting"] == v2.ref.digest
    assert agent.predict_image(cat)[1]["bundle"]["digest"] == v1.ref.digest  # the old model still serves
    assert not [r for r in hub.reports if r.stage == "commit" and r.bundle == v2.ref.digest]

    code, released = agent.http("DELETE", "/v1/update/hold")
    assert code == 200 and released["held"] is False
    hub.report("dev1", "commit", "ok", v2.ref.digest)
    assert agent.predict_image(cat)[1]["bundle"]["digest"] == v2.ref.digest
