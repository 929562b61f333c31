"""The recorder's drift features from raw 8-bit pixels are protocol's features of the float input."""

from __future__ import annotations

import numpy as np
import pytest

from agent.telemetry import Recorder, raw_image_features
from protocol.baseline import Baseline, Feature
from protocol.features import input_features

PRE = {"kind": "image", "height": 32, "width": 24, "channels": 3}


def inputs_on(edges: dict[str, list[float]]) -> Baseline:
    """A baseline with these input features' edges (reference counts play no part here)."""
    return Baseline(1, {name: Feature(tuple(e), (1,) * (len(e) + 1)) for name, e in edges.items()})


@pytest.mark.parametrize(
    "dtype, affine",
    [
        (np.uint8, (1 / 128, -1.0)),  # Coral's MobileNet preprocess
        (np.uint8, (1 / 255, 0.0)),
        (np.int8, (0.0078125, 0.0078125)),  # an int8 input: x = (q - zp) * scale, zp = -1
    ],
)
def test_raw_pixel_features_equal_the_float_input_features(dtype, affine):
    rng = np.random.default_rng(3)
    raw = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, (1, 32, 24, 3)).astype(dtype)
    raw[0, :4] = np.iinfo(dtype).max  # some skew, so the channels differ
    want = input_features(raw.astype(np.float32) * affine[0] + affine[1], PRE)
    got = raw_image_features(raw, affine, PRE)
    assert got is not None and list(got) == list(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-5), name


def test_a_constant_image_has_zero_spread_not_a_negative_variance():
    raw = np.full((1, 32, 24, 3), 200, np.uint8)
    got = raw_image_features(raw, (1 / 128, -1.0), PRE)
    assert got is not None
    assert [got[f"std_c{i}"] for i in range(3)] == [0.0, 0.0, 0.0]
    assert got["brightness"] == pytest.approx(200 / 128 - 1)


def test_float_inputs_and_tensor_models_take_the_float_way():
    assert raw_image_features(np.zeros((1, 32, 24, 3), np.float32), (1.0, 0.0), PRE) is None
    assert raw_image_features(np.zeros((1, 8), np.uint8), (1.0, 0.0), {"kind": "tensor"}) is None


def test_raw_pixels_land_in_the_same_drift_bins_as_their_floats():
    """End to end through the recorder's worker: a raw request and the same request as floats
    are binned alike."""
    edges = [-0.5, 0.0, 0.5]
    baseline = inputs_on({f"mean_c{i}": edges for i in range(3)} | {"brightness": edges})
    raw = np.zeros((1, 32, 24, 3), np.uint8)
    raw[..., 0], raw[..., 1], raw[..., 2] = 40, 128, 250  # floats ~ -0.69, 0.0, 0.95
    bins = []
    for x, affine in ((raw, (1 / 128, -1.0)), (raw.astype(np.float32) / 128 - 1.0, None)):
        r = Recorder()
        r.set_bundle("a" * 64, baseline, PRE)
        r.record("cpu", 0.01, True, x, None, affine)
        r.drain()
        bins.append(r.rotate()[0]["drift"]["inputs"])
    assert bins[0] == bins[1]
    assert bins[0]["mean_c0"] == [1, 0, 0, 0] and bins[0]["mean_c2"] == [0, 0, 0, 1]


def _drift_bins(r: Recorder) -> dict:
    return r.rotate()[0]["drift"]["inputs"]


def test_a_drift_sample_is_binned_while_a_model_runs_not_right_after_the_answer(monkeypatch):
    """The worker holds a fresh sample until the serving path signals an invoke (which frees the
    GIL), so binning does not hold the GIL while the next request is being read."""
    import agent.telemetry as telemetry

    monkeypatch.setattr(telemetry, "DRIFT_WAIT_S", 30.0)
    r = Recorder()
    r.set_bundle("a" * 64, inputs_on({"brightness": [0.0]}), PRE)
    r.record("cpu", 0.01, True, np.full((1, 32, 24, 3), 250, np.uint8), None, (1 / 128, -1.0))
    r.drain(timeout=0.2)
    assert r._drift_q.unfinished_tasks == 1  # still held: no model has run since
    r.invoking.set()
    r.drain()
    assert r._drift_q.unfinished_tasks == 0
    assert _drift_bins(r)["brightness"] == [0, 1]


def test_an_idle_agent_still_bins_its_last_samples():
    r = Recorder()
    r.set_bundle("a" * 64, inputs_on({"brightness": [0.0]}), PRE)
    for value in (10, 250, 250):
        r.record("cpu", 0.01, True, np.full((1, 32, 24, 3), value, np.uint8), None, (1 / 128, -1.0))
    r.drain()  # no invoke at all: each waits DRIFT_WAIT_S at most
    assert _drift_bins(r)["brightness"] == [1, 2]


def test_a_second_shadow_candidate_starts_a_new_window_so_agreement_is_never_mixed():
    rec = Recorder()
    rec.set_bundle("a" * 64, None, {})
    rec.record_shadow(False, 0.001, "b" * 64)
    rec.record_shadow(False, 0.001, "b" * 64)
    rec.record_shadow(True, 0.002, "c" * 64)  # the hub replaced the candidate mid-window
    rec.record_shadow(None, 0.0, "c" * 64)
    first, second = rec.rotate()
    assert (first["shadow"].bundle, first["shadow"].samples, first["shadow"].agreement) == ("b" * 64, 2, 0.0)
    assert "end" in first
    assert (second["shadow"].bundle, second["shadow"].samples, second["shadow"].errors) == ("c" * 64, 1, 1)
    assert second["shadow"].agreement == 1.0
    assert second["shadow"].to_dict()["bundle"] == "c" * 64
