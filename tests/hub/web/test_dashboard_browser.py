"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against
the real hub process, a private mosquitto and simulated devices (see conftest).

One operator journey, in order: keyboard login, devices appear live, the model's eval report,
a rollout created from the form (preview first, submitted with Enter), watched until the canary
installs, paused, rolled back, audited; then a viewer who sees no action controls. Screenshots
of every page land in ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import OPERATOR, VIEWER, Stack, read_baseline

pytestmark = [pytest.mark.browser, pytest.mark.integration]

WAIT_MS = 30_000


def login(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/ui")
    assert "/ui/login" in page.url, "an anonymous visit must land on the login page"
    page.get_by_label("API token").fill(token)
    page.get_by_label("API token").press("Enter")   # keyboard submit
    page.wait_for_url(re.compile(r".*/ui$"))


def nav(page: Any, name: str, role: str = "link", **kw: Any) -> None:
    with page.expect_navigation():
        page.get_by_role(role, name=name, **kw).first.click()


UNLABELLED_JS = """() => Array.from(document.querySelectorAll('input, select, textarea, button'))
  .filter(el => el.type !== 'hidden')
  .filter(el => !((el.labels && el.labels.length) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                  || (el.tagName === 'BUTTON' && el.textContent.trim())))
  .map(el => el.outerHTML.slice(0, 80))"""


def check_page(page: Any, artifacts: Path, name: str) -> None:
    """Every control has an accessible name, one h1, the nav marks where we are; screenshot."""
    assert page.evaluate(UNLABELLED_JS) == [], f"unlabelled controls on {page.url}"
    assert page.locator("h1").count() == 1, f"{page.url} should have exactly one h1"
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def test_operator_watches_devices_and_rolls_a_model_out_pauses_and_rolls_back(
        stack: Stack, browser: Any, digits_bundle: Path, artifacts: Path) -> None:
    pushed = stack.fleet.push(digits_bundle)
    digest = pushed["digest"]
    base = read_baseline(digits_bundle)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))

    # a wrong token is refused with a message and the form stays usable
    page.goto(f"{stack.url}/ui/login")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in text(page, "#login-error")
    page.screenshot(path=str(artifacts / "00-login.png"))

    login(page, stack.url, OPERATOR)
    assert text(page, "#stat-total") == "0"
    # devices come online after the page is open: the live region picks them up without a reload
    for i, (board, tpu) in enumerate([("rpi4", False), ("rpi5", True), ("rpi4", False), ("coral-devboard", True)]):
        stack.add_device(f"sim-{i}", board=board, tpu=tpu, baselines={digest: base})
    page.wait_for_function("document.getElementById('stat-online').textContent.trim() === '4'")
    # the fleet latency chart fills from telemetry
    page.wait_for_function("Number(document.getElementById('chart-latency').dataset.points || 0) > 0")
    assert page.locator("#chart-latency canvas").count() == 1
    check_page(page, artifacts, "01-fleet")

    # devices: list, filter by TPU, detail
    nav(page, "Devices", exact=True)
    expect(page.locator("#device-table tbody tr[data-device]")).to_have_count(4)
    page.get_by_label("Edge TPU").select_option("true")
    nav(page, "Filter", role="button")
    assert "tpu=true" in page.url
    assert sorted(page.locator("#device-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.device)")) == ["sim-1", "sim-3"]
    check_page(page, artifacts, "02-devices")
    assert page.get_by_role("link", name="Devices", exact=True).get_attribute("aria-current") == "page"
    nav(page, "sim-1", exact=True)
    page.wait_for_function("Number(document.getElementById('chart-device-latency').dataset.points || 0) > 0")
    assert "coral" not in text(page, "main")  # sim-1 is the rpi5 with a TPU
    assert "rpi5" in text(page, "main")

    # models: the compiler's eval report and op mapping
    nav(page, "Models", exact=True)
    nav(page, re.compile(r"^digits@"))
    kinds = page.locator("#eval-table tbody tr td:nth-child(2)").all_inner_texts()
    assert {"float", "int8", "ONNX"} <= set(kinds)
    assert page.locator("#ops-table tbody tr").count() > 0
    check_page(page, artifacts, "03-model")

    # rollouts: the form previews the devices, then is submitted from the keyboard
    nav(page, "Rollouts", exact=True)
    page.get_by_label("Bundle").select_option(digest)
    page.get_by_label("Cohorts (cumulative)").fill("1, 100%")
    page.get_by_label("On gate breach").select_option("pause")
    expect(page.locator("#preview")).to_contain_text("Cohort 2: 3 devices", timeout=WAIT_MS)
    assert "4 devices match; 4 can run digits@" in text(page, "#preview-summary")
    assert "Cohort 1: 1 device" in text(page, "#preview")
    page.get_by_label("Soak per cohort (s)").fill("600")   # long soak: the canary waits for us
    check_page(page, artifacts, "04-rollout-form")
    page.get_by_label("Soak per cohort (s)").press("Enter")
    page.wait_for_url(re.compile(r".*/ui/rollouts/[0-9a-f]+$"))
    rid = page.url.rsplit("/", 1)[1]

    # watch it progress: the canary (cohort 1) installs, live
    page.wait_for_function("document.querySelectorAll('#rollout-devices tr[data-state=installed]').length === 1")
    assert page.locator("#rollout-phase").get_attribute("data-phase") == "running"
    check_page(page, artifacts, "05-rollout-canary")

    # the fleet overview lists it as in progress, and counts the canary's model version
    nav(page, "Fleet", exact=True)
    expect(page.locator("#h-rollouts + ul")).to_contain_text(rid)
    expect(page.locator("#h-versions + table")).to_contain_text("digits@")
    page.wait_for_function("Number(document.getElementById('chart-drift').dataset.points || 0) > 0")
    check_page(page, artifacts, "05a-fleet-rollout")
    page.go_back()
    page.wait_for_url(re.compile(r".*/ui/rollouts/[0-9a-f]+$"))

    # the canary's device page: install history with reason codes, per-feature drift chart
    nav(page, "sim-0", exact=True)
    expect(page.locator("#install-history")).to_contain_text("commit")
    expect(page.locator("#install-history")).to_contain_text("ok")
    page.wait_for_function("Number(document.getElementById('chart-device-drift').dataset.points || 0) > 0")
    legend = page.locator("#chart-device-drift .u-legend").inner_text()
    assert "inputs.brightness" in legend and "outputs.top1_class" in legend
    check_page(page, artifacts, "05b-device-canary")
    page.go_back()
    page.wait_for_url(re.compile(r".*/ui/rollouts/[0-9a-f]+$"))

    page.locator("#cmd-pause").click()
    page.wait_for_function("document.getElementById('rollout-phase').dataset.phase === 'paused'")
    assert page.locator("#cmd-resume").count() == 1
    page.locator("#cmd-rollback").click()
    page.wait_for_function("document.getElementById('rollout-phase').dataset.phase === 'rolled_back'")
    page.wait_for_function("document.querySelectorAll('#rollout-devices tr[data-state=rolled_back]').length === 1")
    assert page.locator("button[data-command]").count() == 0  # nothing left to do on a rolled-back rollout
    check_page(page, artifacts, "06-rollout-rolled-back")

    # every action is in the audit log, attributed to the operator token
    nav(page, "Audit log")
    actions = page.locator("#audit-table tbody tr td:nth-child(3)").all_inner_texts()
    assert {"rollout.create", "rollout.pause", "rollout.rollback"} <= set(actions)
    assert any(rid in t for t in page.locator("#audit-table tbody tr td:nth-child(4)").all_inner_texts())
    check_page(page, artifacts, "07-audit")
    assert not errors, f"JavaScript errors on the pages: {errors}"
    foreign = [u for u in requested if not u.startswith(stack.url)]
    assert not foreign, f"pages loaded assets from elsewhere (no CDN allowed): {foreign[:5]}"
    assert any(u.endswith("/static/vendor/uPlot.iife.min.js") for u in requested)

    # a viewer sees everything read-only: no form, no buttons, no audit
    viewer = browser.new_page(viewport={"width": 1400, "height": 1000})
    viewer.set_default_timeout(WAIT_MS)
    login(viewer, stack.url, VIEWER)
    viewer.goto(f"{stack.url}/ui/rollouts/{rid}")
    assert viewer.locator("#rollout-phase").get_attribute("data-phase") == "rolled_back"
    assert viewer.locator("button[data-command]").count() == 0
    viewer.goto(f"{stack.url}/ui/rollouts")
    assert viewer.locator("#rollout-form").count() == 0
    assert viewer.locator("#rollouts-table tbody tr").count() == 1
    viewer.goto(f"{stack.url}/ui/models")
    assert viewer.get_by_role("link", name="Roll out").count() == 0
    check_page(viewer, artifacts, "08-viewer-models")
    resp = viewer.goto(f"{stack.url}/ui/audit")
    assert resp is not None and resp.status == 403
    # and the API refuses a viewer's command even if one were crafted by hand
    status = viewer.evaluate(f"fetch('/api/v1/rollouts/{rid}/resume', {{method: 'POST'}}).then(r => r.status)")
    assert status == 403
