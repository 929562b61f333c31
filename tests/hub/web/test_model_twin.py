"""The model page says whether the bundle's ONNX twin was verified or withheld, and why."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from hub import bundles
from hub.server import Hub
from hub.store import read_bundle_dir
from hub.transport import MemoryPublisher
from hub.web.catalog import twin_summary

from ..conftest import VIEWER
from .test_dashboard import session_for


def test_the_model_page_shows_why_the_twin_was_withheld(memhub: tuple[Hub, MemoryPublisher], inat_bundle: Path) -> None:
    """The real iNat bird import: its twin was withheld on 32 synthetic inputs."""
    hub, _ = memhub
    env, arts = read_bundle_dir(inat_bundle)
    digest = bundles.push(hub.fleet, env, arts, "test")["digest"]
    page = session_for(hub, VIEWER).get(f"/ui/models/{digest}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    section = text[text.index('id="twin"') : text.index('id="h-tpu"')]
    assert "Cloud twin (ONNX)" in section and '<span class="sev sev-alert">withheld</span>' in section
    assert (
        "Not in the bundle; the cloud answers 404 for this model: top-1 agreement 9.38% < 99.00%; "
        "largest difference 207 quantization steps > 32 on 32 synthetic inputs" in section
    )
    assert "Parity measured on 32 synthetic inputs (classification)." in section
    assert 'top1 agreement</td><td class="num">0.0938' in section and "max step diff" in section


def test_the_model_page_shows_a_verified_twin(memhub: tuple[Hub, MemoryPublisher], digits_bundle: Path) -> None:
    hub, _ = memhub
    env, arts = read_bundle_dir(digits_bundle)
    digest = bundles.push(hub.fleet, env, arts, "test")["digest"]
    text = html.unescape(session_for(hub, VIEWER).get(f"/ui/models/{digest}").text)
    section = text[text.index('id="twin"') : text.index('id="h-tpu"')]
    assert '<span class="sev sev-ok">verified</span>' in section
    assert "top-1 agreement 100.00% >= 99.00%" in section and "on 360 user inputs" in section


def test_twin_summary_prefers_the_manifest_and_survives_old_or_odd_bundles() -> None:
    signed: dict[str, Any] = {"twin": {"status": "none", "reason": "--no-onnx"}}
    report: dict[str, Any] = {"twin": {"status": "verified", "reason": "from the report"}}
    assert twin_summary(signed, report, False)["reason"] == "--no-onnx"
    assert twin_summary({}, report, True)["status"] == "verified"
    old = twin_summary({}, {}, True)
    assert old["status"] == "unknown" and old["reason"].startswith("an ONNX twin ships, with no parity verdict")
    assert twin_summary({"twin": {"status": 3}}, {}, False)["reason"].startswith("unreadable twin status")
