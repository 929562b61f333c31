"""The self-test an agent runs before switching to a bundle, on every Coral CPU model imported
without data: the compiler now ships synthetic in-range vectors (compiler.selftest.synthetic)
instead of a smoke test, and the agent's own backend reproduces them within tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import selftest
from tests.agent.test_tasks import open_model
from tests.coral_imports import CASES, imported

pytestmark = pytest.mark.slow  # imports every Coral CPU model (cached by source)


@pytest.mark.parametrize("key", sorted(CASES))
def test_an_imported_coral_model_passes_its_synthetic_self_test_on_the_agent(coral_models: Path, key: str):
    bundle = imported(key, coral_models)
    doc = json.loads((bundle / "selftest.json").read_text())
    want = "calibration" if CASES[key].calibration else "synthetic"
    assert doc["inputs"] == want and len(doc["cases"]) >= 1 and "smoke" not in doc
    model = open_model(bundle)
    try:
        result = selftest.run(model.backend, model.selftest)
    finally:
        model.close()
    assert result.ok, result.detail
    assert result.cases == len(doc["cases"])
