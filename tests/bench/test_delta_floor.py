"""The per-tensor coding floor `python -m bench delta` prints (bench/_delta_tensors.py), on the
digits builds the bench uses: it names the tensors the retraining changed and no others, and the
entropy it reports is what those differences carry, not a constant."""

from __future__ import annotations

import numpy as np
import pytest

from bench._delta_models import bundles as delta_bundles
from bench._delta_tensors import _entropy_bytes, tensor_floor

pytestmark = pytest.mark.integration


def test_a_retrained_head_changes_only_the_head_tensors_and_the_floor_is_their_entropy():
    paths = delta_bundles()  # TensorFlow training and builds the first time (cached)
    base = (paths["base"] / "model_int8.tflite").read_bytes()
    head = (paths["head"] / "model_int8.tflite").read_bytes()
    fine = (paths["finetune"] / "model_int8.tflite").read_bytes()
    assert tensor_floor(base, base) == {"tensors": [], "changed": 0, "entropy_bytes": 0}
    h = tensor_floor(base, head)
    assert h["tensors"] and all("scores" in t["tensor"] for t in h["tensors"]), h["tensors"]
    assert 0 < h["entropy_bytes"] < sum(t["changed"] for t in h["tensors"])  # under a byte per changed weight
    f = tensor_floor(base, fine)
    assert f["changed"] > 10 * h["changed"] and f["entropy_bytes"] > 10 * h["entropy_bytes"]


def test_entropy_of_differences_is_zero_for_one_value_and_a_bit_each_for_two_equally_common():
    assert _entropy_bytes(np.zeros(64, np.int64)) == 0
    assert _entropy_bytes(np.array([0, 1] * 32)) == pytest.approx(8.0)
