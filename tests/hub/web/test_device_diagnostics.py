"""The device page's Diagnostics section: buttons for operators only (restart behind a confirm),
the commands sent and the latest answer of each, rendered as text (a device's log line is never
markup)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from hub.server import Hub
from hub.transport import MemoryPublisher
from protocol.commands import Result

from ..conftest import OPERATOR, VIEWER
from ..helpers import status
from .test_dashboard import session_for


def issue(hub: Hub, name: str) -> str:
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {OPERATOR}"})
    r = api.post("/api/v1/devices/pi-1/commands", json={"name": name})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_operators_get_diagnostics_buttons_and_restart_asks_first(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    page = session_for(hub, OPERATOR).get("/ui/devices/pi-1").text
    for name in ("logs", "selftest", "diagnostics", "restart"):
        assert f'data-device-command="{name}"' in page
    restart = page[page.index('id="diag-restart"') :].split(">", 1)[0]
    assert 'data-confirm="Restart the agent on pi-1?' in restart and "disabled" not in restart
    viewer = session_for(hub, VIEWER).get("/ui/devices/pi-1").text
    assert "data-device-command" not in viewer and "No diagnostics commands sent" in viewer
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1", online=False))])
    offline = session_for(hub, OPERATOR).get("/ui/devices/pi-1").text
    assert "commands are answered only by a connected agent" in offline
    assert offline[offline.index('id="diag-logs"') :].split(">", 1)[0].endswith("disabled")


def test_the_latest_answers_show_on_the_device_page_as_text(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    logs, diag, _pending = issue(hub, "logs"), issue(hub, "diagnostics"), issue(hub, "selftest")
    hostile = "<script>alert(1)</script> token=[REDACTED]"
    hub.ingest.handle(
        [
            (
                "ef/v1/dev/pi-1/result",
                Result(logs, "pi-1", "logs", 1, "ok", body={"lines": ["started", hostile]}).to_bytes(),
            ),
            (
                "ef/v1/dev/pi-1/result",
                Result(
                    diag,
                    "pi-1",
                    "diagnostics",
                    1,
                    "ok",
                    detail="7 checks, failing: disk",
                    body={"checks": [{"name": "disk", "ok": False, "detail": "1024 bytes free, reserve 16777216"}]},
                ).to_bytes(),
            ),
        ]
    )
    part = session_for(hub, VIEWER).get("/ui/devices/pi-1?part=device_commands").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; token=[REDACTED]" in part and "<script>" not in part
    assert 'id="diag-result-logs"' in part and 'id="diag-result-diagnostics"' in part
    assert "1024 bytes free, reserve 16777216" in part and "7 checks, failing: disk" in part
    assert 'id="diag-result-selftest"' not in part  # not answered yet: listed as sent only
    assert part.count('class="sev sev-warn">sent<') == 1
