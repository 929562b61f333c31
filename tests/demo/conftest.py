"""Fixtures for the demo tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One parent for every demo run's state directory (``demo_dir / "state-NAME"``): the demo keeps
    its model build beside its state (``build-cache``), so the first run of the session trains and
    converts the digits model and the others use that build, as a second ``make demo`` does."""
    return tmp_path_factory.mktemp("demo")
