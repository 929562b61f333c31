"""The PyTorch route end to end over real processes: the digits CNN trained in torch, exported
with the seed's ``torch.onnx.export`` and built (tests/pytorch_builds.py), pushed to the hub
(which signs it), rolled out to a real agent that answers held-out digits through its local API
as PNG images, and the cloud fallback answering the same images from the bundle's twin (the
user's own ONNX, NCHW). Both are held to what the torch model itself answers."""

from __future__ import annotations

import numpy as np
import pytest

from demo.client import get_json, png_bytes, post_image, top1
from tests.integration.test_walking_skeleton import active_digest, device, wait_for
from tests.pytorch_builds import require_torch, torch_digits, torch_digits_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 40


def test_a_pytorch_model_serves_on_a_device_and_in_the_cloud_as_torch_answers(fleet) -> None:
    require_torch()
    digits = torch_digits()
    bundle = torch_digits_bundle("onnx")
    val = np.load(digits / "val.npz")
    xs, ys = val["x"][:N], val["y"][:N]
    torch_top1 = np.load(digits / "torch_scores.npy")[:N].argmax(axis=1)

    pushed = fleet.push(bundle)
    digest = pushed["digest"]
    fleet.start_agent("torch-dev", telemetry_interval=1.0)
    wait_for("agent online", lambda: device(fleet, "torch-dev").get("online"), fleet)
    fleet.api("POST", "/api/v1/rollouts", {"bundle": digest, "target": {"devices": ["torch-dev"]}})
    wait_for("bundle installed", lambda: active_digest(device(fleet, "torch-dev")) == digest, fleet)

    port = fleet.agent_port("torch-dev")
    on_device = []
    for x in xs:
        answer = post_image(f"http://127.0.0.1:{port}/v1/predict", png_bytes(x))
        assert "error" not in answer, answer
        assert answer["bundle"]["digest"] == digest and answer["served_by"] == "cpu"
        on_device.append(top1(answer))

    cloud = fleet.start_cloud()
    wait_for(
        "the cloud serves the bundle",
        lambda: "torch-digits-onnx" in str(get_json(f"{cloud}/v1/models")),
        fleet,
    )
    in_cloud = []
    for x in xs:
        answer = post_image(f"{cloud}/v1/models/torch-digits-onnx/predict/image", png_bytes(x))
        assert "error" not in answer, answer
        in_cloud.append(top1(answer))

    # the cloud runs the float original: exactly torch's answers; the device the int8 model
    assert in_cloud == torch_top1.tolist()
    agree = float(np.mean(np.array(on_device) == torch_top1))
    assert agree >= 0.95, f"device agrees with torch on {agree:.0%} of {N} digits"
    assert float(np.mean(np.array(on_device) == ys)) >= 0.9
