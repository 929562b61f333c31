"""Self-test before switching: vectors when the bundle has them, an explicit smoke test when not."""

from __future__ import annotations

from agent.runtime import LiteRTBackend
from agent.selftest import run


def test_bundle_without_vectors_that_asks_for_a_smoke_test_passes_on_a_working_model(coral_models):
    backend = LiteRTBackend(coral_models / "mobilenet_v1_0.25_128_quant.tflite")
    result = run(backend, {"cases": [], "smoke": True, "max_latency_ms": 60_000})
    assert result.ok and "smoke test only" in result.detail


def test_broken_model_never_reaches_a_smoke_test(coral_models):
    import pytest

    from agent.errors import ModelError

    with pytest.raises(ModelError, match="fake-op-double"):
        LiteRTBackend(coral_models / "model_invoking_error.tflite")


def test_bundle_without_vectors_and_without_smoke_opt_in_is_refused(coral_models):
    backend = LiteRTBackend(coral_models / "mobilenet_v1_0.25_128_quant.tflite")
    result = run(backend, {"cases": []})
    assert not result.ok and "does not ask for a smoke test" in result.detail
