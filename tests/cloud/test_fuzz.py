"""Property test: whatever schemathesis sends to any route of the OpenAPI schema, the real
server (uvicorn subprocess) answers without a 5xx and keeps serving."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import free_port, serving_process

from .conftest import drop, make_archive, tiny_model


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, trust: Any) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    (tmp / "b").mkdir()
    (tmp / "root.json").write_bytes(trust.root_bytes)
    drop(tmp / "b", make_archive(trust.targets_key, "tiny", "1", tiny_model().onnx))
    port = free_port()
    argv = [sys.executable, "-m", "cloud", "serve", "--bundles", str(tmp / "b"), "--root", str(tmp / "root.json")]
    with serving_process([*argv, "--port", str(port), "--poll", "0"], port, tmp / "cloud.log") as url:
        yield url
    assert "Traceback" not in (tmp / "cloud.log").read_text()


@pytest.mark.integration
def test_no_generated_request_gets_a_server_error(live: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.path for op in operations} >= {"/predict", "/v1/models/{name}/predict", "/v1/models"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_5xx(case: Any) -> None:
            case.call_and_validate(base_url=live, checks=[not_a_server_error])

        no_5xx()
    assert httpx.get(f"{live}/healthz").status_code == 200
