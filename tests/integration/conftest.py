from __future__ import annotations

from pathlib import Path

import pytest

from demo.launcher import Fleet


@pytest.fixture
def fleet(tmp_path: Path):
    """A broker (private mosquitto), the hub's keys and the hub on SQLite, torn down afterwards."""
    f = Fleet(tmp_path / "fleet")
    try:
        f.start_broker()
        f.init_keys()
        f.start_hub()
        yield f
    finally:
        f.stop_all()
