"""Drift features and the preprocess spec: the same numbers on the compiler and the agent."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.features import class_edges, input_features, output_features, resize_filter


def test_image_features_are_per_channel_mean_std_and_brightness():
    x = np.zeros((1, 2, 2, 3), dtype=np.float32)
    x[..., 0] = 1.0
    x[0, 0, 0, 2] = 4.0
    f = input_features(x, {"kind": "image", "channels": 3})
    assert f["mean_c0"] == 1.0 and f["std_c0"] == 0.0
    assert f["mean_c2"] == 1.0 and f["std_c2"] == pytest.approx(np.std([4, 0, 0, 0]))
    assert f["brightness"] == pytest.approx(x.mean())


def test_tensor_features_take_the_first_32_values():
    f = input_features(np.arange(100, dtype=np.float32).reshape(1, 100), {"kind": "tensor"})
    assert list(f) == [f"f{i}" for i in range(32)] and f["f31"] == 31.0


def test_output_features_and_class_edges():
    f = output_features(np.array([[0.1, 0.7, 0.2]]))
    assert f == {"top1_confidence": pytest.approx(0.7), "top1_class": 1.0}
    assert class_edges(3) == [0.5, 1.5]


def test_resize_filter_defaults_to_bicubic_and_rejects_unknown_filters():
    assert resize_filter({}) == "bicubic"
    assert resize_filter({"resize": "bilinear"}) == "bilinear"
    with pytest.raises(ValueError, match="preprocess.resize must be one of"):
        resize_filter({"resize": "lanczos3"})
