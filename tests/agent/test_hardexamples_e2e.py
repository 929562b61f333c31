"""Hard examples on a real agent process over a real broker, with two model channels: unsure
answers on either channel's route are kept on disk under the bundle that answered, within the
caps; the hub side of the upload is tests/hub/test_hard_examples_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.messages import ChannelDesired

from ..hub.conftest import wait_for
from .bundles import MNV1, coral_bundle

pytestmark = pytest.mark.integration

MNV1_05 = "mobilenet_v1_0.5_160_quant.tflite"


def test_unsure_answers_on_every_channel_are_kept_under_the_bundle_that_answered(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    def publish(name: str, model: str):
        env, _, archive = trust.sign_dir(coral_bundle(tmp_path / name, coral_models, model, name=name))
        return hub.publish_bundle(env, archive)

    first, second = publish("mnv1-025", MNV1), publish("mnv1-05", MNV1_05)
    agent = make_agent("dev1")
    with agent.config.open("a") as f:  # agent.toml's tables come last
        f.write("[hard_examples]\nenabled = true\nthreshold = 1.0\nper_minute = 100\nper_hour = 100\nper_day = 3\n")
    agent.start()
    hub.desire("dev1", first)
    hub.report("dev1", "commit", "ok", first.ref.digest)
    hub.desire("dev1", first, since=1, channels={"second": ChannelDesired(2, "install", second.ref, "r2")})
    hub.report("dev1", "commit", "ok", second.ref.digest)

    cat = (coral_models / "cat_720p.jpg").read_bytes()
    for path in ("/v1/predict", "/v1/models/second/predict", "/v1/predict", "/v1/models/second/predict"):
        code, out = agent.predict_image(cat, path)
        assert code == 200, out

    def judged() -> dict:
        code, st = agent.http("GET", "/v1/status")
        h = st["hard_examples"]
        return h if code == 200 and h["counts"]["sample"] + h["counts"]["day_cap"] == 4 else {}

    h = wait_for(judged, timeout=30, what="all four judged")
    assert h["counts"]["sample"] == 3 and h["counts"]["day_cap"] == 1 and h["pending"] == 3
    heads = [json.loads(p.read_text()) for p in (agent.state_dir / "hard-examples").glob("*.json") if p.stem != "caps"]
    assert {hd["bundle"] for hd in heads} == {first.ref.digest, second.ref.digest}
    assert all(hd["content_type"] == "image/jpeg" and hd["size"] == len(cat) for hd in heads)
    assert all((agent.state_dir / "hard-examples" / f"{hd['id']}.bin").read_bytes() == cat for hd in heads)
