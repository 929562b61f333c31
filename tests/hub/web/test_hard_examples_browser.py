"""The dashboard's Hard examples page in a real browser (Debian's headless Chromium driven by
Playwright) against the real hub process and a private mosquitto: a device's uploaded examples
show as thumbnails to an operator (the images load), filter by model version, fit a phone; a
viewer sees the metadata and no picture. The device is a paho client sending protocol chunks
(the agent's side is proved in tests/hub/test_hard_examples_e2e.py)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image
from playwright.sync_api import expect

from protocol.samples import split

from ...agent.bundles import coral_bundle
from .conftest import OPERATOR, VIEWER, Stack
from .test_dashboard_browser import OVERFLOW_JS, check_page, login

pytestmark = [pytest.mark.browser, pytest.mark.integration]
WAIT_MS = 30_000


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (shade, 255 - shade, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_an_operator_browses_thumbnails_by_model_version_and_a_viewer_sees_no_picture(
    stack: Stack, browser: Any, artifacts: Path, coral_models: Path, tmp_path: Path
) -> None:
    pushed = stack.fleet.push(coral_bundle(tmp_path / "mnv1", coral_models, name="mnv1", version="7"))
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="he-sender", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", stack.port)
    c.loop_start()
    try:
        for i in range(4):
            meta = {"confidence": 0.1 * (i + 1), "measure": "max_score", "answer": {"top": [{"label": f"class {i}"}]}}
            for chunk in split(
                "cam-he", f"sample-{i:04d}", pushed["digest"], int(time.time()), "image/png", png(60 * i), meta
            ):
                c.publish("ef/v1/dev/cam-he/sample", chunk.to_bytes(), qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    login(page, stack.url, OPERATOR)
    with page.expect_navigation():
        page.get_by_role("link", name="Hard examples").first.click()
    expect(page.locator("#he-grid img")).to_have_count(4, timeout=WAIT_MS)
    expect(page.locator("#he-versions")).to_contain_text("mnv1")
    expect(page.locator("#he-versions")).to_contain_text("hard-examples export --model mnv1 --version 7")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#he-grid img')).every(i => i.complete && i.naturalWidth === 96)",
        timeout=WAIT_MS,
    )
    expect(page.locator("#he-grid")).to_contain_text("class 3")
    with page.expect_navigation():
        page.locator("#he-versions").get_by_role("link", name="mnv1").click()
    assert "model=mnv1" in page.url and "version=7" in page.url
    expect(page.locator("#h-he")).to_contain_text("4 hard examples of mnv1 7")
    check_page(page, artifacts, "hard-examples")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    fit = page.evaluate(OVERFLOW_JS)
    assert fit["scroll"] <= fit["width"] + 1 and fit["wide"] == [], f"hard examples at 390 px: {fit}"
    page.screenshot(path=str(artifacts / "phone-hard-examples.png"), full_page=True)
    page.close()

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    login(page, stack.url, VIEWER)
    page.goto(f"{stack.url}/ui/hard-examples")
    expect(page.locator("#he-grid li")).to_have_count(4, timeout=WAIT_MS)
    assert page.locator("#he-grid img").count() == 0
    expect(page.locator("#h-he").locator("..")).to_contain_text("operator role only")
    page.close()
