"""The device page's Diagnostics section in a real browser (Debian's headless Chromium driven by
Playwright) against the real hub process and a private mosquitto: an operator fetches logs and
sees the device's answer appear, restart asks first (dismissed: nothing is sent; accepted: the
command goes out). The device is a paho client that verifies nothing and answers every command
(the agent's side is proved in tests/hub/test_remote_diagnostics.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import expect

from protocol.commands import Result, parse_command_payload
from protocol.signing import Envelope

from ..helpers import status
from .conftest import OPERATOR, Stack
from .test_dashboard_browser import OVERFLOW_JS, check_page, login

pytestmark = [pytest.mark.browser, pytest.mark.integration]
WAIT_MS = 30_000


class AnsweringDevice:
    def __init__(self, device: str, port: int) -> None:
        self.device = device
        self.commands: list[str] = []
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"answer-{device}", protocol=mqtt.MQTTv5)
        c.on_message = self._on_message
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(f"ef/v1/dev/{device}/command", qos=1)
        c.publish(f"ef/v1/dev/{device}/status", status(device, ts=int(time.time())), qos=1, retain=True)
        self.client = c

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        cmd = parse_command_payload(Envelope.parse(bytes(msg.payload)).payload)
        self.commands.append(cmd.name)
        body: dict[str, Any] = {"lines": ["INFO agent.daemon: serving digits 1.0.0", "<b>not bold</b>"]}
        answer = Result(cmd.id, self.device, cmd.name, int(time.time()), "ok", detail="2 log lines", body=body)
        self.client.publish(f"ef/v1/dev/{self.device}/result", answer.to_bytes(), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_operator_fetches_logs_and_restart_asks_first(stack: Stack, browser: Any, artifacts: Path) -> None:
    dev = AnsweringDevice("cam-diag", stack.port)
    try:
        assert dev.subscribed.wait(10)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        login(page, stack.url, OPERATOR)
        page.goto(f"{stack.url}/ui/devices/cam-diag")
        logs = page.get_by_role("button", name="Fetch logs")
        expect(logs).to_be_enabled(timeout=WAIT_MS)  # the device is online
        logs.click()
        expect(page.locator("#toast")).to_contain_text("logs sent to cam-diag", timeout=WAIT_MS)
        result = page.locator("#diag-result-logs")
        expect(result).to_contain_text("serving digits 1.0.0", timeout=WAIT_MS)
        expect(result.locator("pre")).to_contain_text("<b>not bold</b>")  # text, not markup
        assert result.locator("b").count() == 0
        expect(page.locator("#command-history")).to_contain_text("logs")

        page.once("dialog", lambda d: d.dismiss())
        page.get_by_role("button", name="Restart agent").click()
        time.sleep(1.0)
        assert dev.commands == ["logs"], "a dismissed confirm must send nothing"
        asked: list[str] = []

        def accept(d: Any) -> None:
            asked.append(d.message)
            d.accept()

        page.once("dialog", accept)
        page.get_by_role("button", name="Restart agent").click()
        expect(page.locator("#toast")).to_contain_text("restart sent to cam-diag", timeout=WAIT_MS)
        assert asked and asked[0].startswith("Restart the agent on cam-diag?")
        expect(page.locator("#diag-result-restart")).to_be_attached(timeout=WAIT_MS)
        assert dev.commands == ["logs", "restart"]
        check_page(page, artifacts, "device-diagnostics")
        page.set_viewport_size({"width": 390, "height": 844})  # the answers fit a phone too
        page.reload()
        expect(page.locator("#diag-result-logs")).to_be_attached(timeout=WAIT_MS)
        fit = page.evaluate(OVERFLOW_JS)
        assert fit["scroll"] <= fit["width"] + 1 and fit["wide"] == [], f"device page at 390 px: {fit}"
        page.screenshot(path=str(artifacts / "phone-device-diagnostics.png"), full_page=True)
        page.close()
    finally:
        dev.close()
