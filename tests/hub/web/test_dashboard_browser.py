"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against
the real hub process, a private mosquitto and simulated devices (see conftest).

One operator journey, in order: keyboard login, devices appear live, the model's eval report,
a rollout created from the form (preview first, submitted with Enter), watched until the canary
installs, paused, rolled back, audited; then a viewer who sees no action controls. Screenshots
of every page land in ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import re
import time
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
    page.get_by_label("API token").press("Enter")  # keyboard submit
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
    stack: Stack, browser: Any, digits_bundle: Path, artifacts: Path
) -> None:
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
    assert sorted(page.locator("#device-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")) == [
        "sim-1",
        "sim-3",
    ]
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
    assert page.locator("section:has(#h-tpu)").inner_text().count("pre-check") == 1  # said once, not twice
    check_page(page, artifacts, "03-model")

    # rollouts: the form previews the devices, then is submitted from the keyboard
    nav(page, "Rollouts", exact=True)
    page.get_by_label("Bundle").select_option(digest)
    page.get_by_label("Cohorts (cumulative)").fill("1, 100%")
    page.get_by_label("On gate breach").select_option("pause")
    expect(page.locator("#preview")).to_contain_text("Cohort 2: 3 devices", timeout=WAIT_MS)
    assert "4 devices match; 4 can run digits@" in text(page, "#preview-summary")
    assert "Cohort 1: 1 device" in text(page, "#preview")
    page.get_by_label("Soak per cohort (s)").fill("600")  # long soak: the canary waits for us
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
    # rolling back a whole-fleet rollout asks first, and for the rollout's id (issue 17)
    page.locator("#cmd-rollback").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    assert page.locator("#confirm-ok").is_disabled()
    page.locator("#confirm-no").click()
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert page.locator("#rollout-phase").get_attribute("data-phase") == "paused"  # kept: nothing sent
    page.locator("#cmd-rollback").click()
    page.locator("#confirm-id").fill(rid[:-1])
    assert page.locator("#confirm-ok").is_disabled()
    page.locator("#confirm-id").fill(rid)
    page.locator("#confirm-ok").click()
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


def wait_api(stack: Stack, what: str, pred: Any, path: str) -> Any:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        body = stack.fleet.api("GET", path)
        if pred(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last {path}: {str(body)[:300]}")


def phase_is(page: Any, phase: str) -> None:
    page.wait_for_function(f"document.getElementById('rollout-phase').dataset.phase === '{phase}'")


def installed(page: Any, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('#rollout-devices tr[data-state=installed]').length === {n}")


def test_operator_filters_by_tag_approves_each_cohort_pauses_resumes_and_cancels(
    stack: Stack, browser: Any, digits_bundle: Path, artifacts: Path
) -> None:
    digest = stack.fleet.push(digits_bundle)["digest"]
    base = read_baseline(digits_bundle)
    for i in range(4):
        stack.add_device(f"sim-{i}", baselines={digest: base})
    wait_api(stack, "four devices online", lambda b: sum(d["online"] for d in b["items"]) == 4, "/api/v1/devices")
    for dev, tags in {"sim-0": ["lab"], "sim-1": ["lab", "east"], "sim-2": ["lab"], "sim-3": ["lab-2"]}.items():
        stack.fleet.api("PATCH", f"/api/v1/devices/{dev}", {"tags": tags})

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, stack.url, OPERATOR)

    # the tag filter: 'lab' is a whole tag, so the 'lab-2' device stays out
    nav(page, "Devices", exact=True)
    page.get_by_label("Tag", exact=True).fill("lab")
    with page.expect_navigation():
        page.get_by_label("Tag", exact=True).press("Enter")
    assert "tag=lab" in page.url
    assert page.locator("#device-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)") == [
        "sim-0",
        "sim-1",
        "sim-2",
    ]
    expect(page.locator("tr[data-device=sim-1] td.tags")).to_have_text("lab east")
    check_page(page, artifacts, "09-devices-tag")

    # a rollout to the tag, one cohort at a time, each opened by an approval. The page's first
    # preview (all devices) is held back and answered last: it must not paint over the newer one
    held: list[Any] = []

    def hold_first(route: Any) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/ui/rollouts/preview?*", hold_first)
    nav(page, "Rollouts", exact=True)
    page.get_by_label("Bundle").select_option(digest)
    page.get_by_label("A tag").check()
    page.get_by_label("Group, tag or device ids (comma separated)").fill("lab")
    page.get_by_label("Cohorts (cumulative)").fill("1, 2, 100%")
    page.get_by_label("Soak per cohort (s)").fill("0")
    page.get_by_label("On gate breach").select_option("pause")
    page.get_by_label("Ask for approval between cohorts").check()
    expect(page.locator("#preview-summary")).to_contain_text("3 devices match; 3 can run digits@")
    assert len(held) == 1 and "target_kind=all" in held[0].request.url
    with page.expect_response(lambda r: r.request.url == held[0].request.url) as stale:
        held[0].continue_()
    stale.value.finished()
    page.evaluate("() => new Promise(done => setTimeout(done, 200))")  # let the page handle it
    page.unroute("**/ui/rollouts/preview?*")
    assert "3 devices match; 3 can run digits@" in text(page, "#preview-summary")
    assert "Cohort 3: 1 device" in text(page, "#preview")
    page.get_by_role("button", name="Start rollout").click()
    page.wait_for_url(re.compile(r".*/ui/rollouts/[0-9a-f]+$"))
    rid = page.url.rsplit("/", 1)[1]

    # cohort 1 installs, then the rollout waits for the operator
    phase_is(page, "awaiting_approval")
    installed(page, 1)
    assert page.locator("#cmd-resume").count() == 0
    # the banner counts cohorts as the page does (from 1) and says what approving does
    assert text(page, "#rollout-reason") == (
        "Cohort 1 of 3 finished its soak with no gate breach. Approve next cohort to "
        "install on cohort 2 (1 more device)."
    )
    check_page(page, artifacts, "10-rollout-awaiting-approval")
    page.locator("#cmd-approve").click()
    installed(page, 2)  # approval opened cohort 2; it installs and waits again
    phase_is(page, "awaiting_approval")
    assert page.locator("tr[data-device=sim-3]").count() == 0  # the lab-2 device is not in the rollout

    # pause while waiting, then resume: back to waiting for approval, nothing issued meanwhile
    page.locator("#cmd-pause").click()
    phase_is(page, "paused")
    expect(page.locator("#rollout-reason")).to_contain_text("paused by operator")
    page.locator("#cmd-resume").click()
    phase_is(page, "awaiting_approval")
    installed(page, 2)

    # cancel: the device not yet issued is cancelled, installed ones keep the model
    page.locator("#cmd-cancel").click()  # a tagged rollout: confirm, no id to type
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-id-row")).to_be_hidden()
    page.locator("#confirm-ok").click()
    phase_is(page, "cancelled")
    page.wait_for_function("document.querySelectorAll('#rollout-devices tr[data-state=cancelled]').length === 1")
    installed(page, 2)
    assert page.locator("button[data-command]").count() == 0
    check_page(page, artifacts, "11-rollout-cancelled")
    status = stack.fleet.api("GET", f"/api/v1/rollouts/{rid}")
    assert status["phase"] == "cancelled" and status["cohort"] == 1

    # each button press is in the audit log, attributed to the operator, newest first
    nav(page, "Audit log")
    rows = page.locator("#audit-table tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[1].innerText.trim(), r.cells[2].innerText.trim(), r.cells[3].innerText.trim()])"
    )
    mine = [action for actor, action, target in rows if target == rid and actor.startswith("operator")]
    assert mine == ["rollout.cancel", "rollout.resume", "rollout.pause", "rollout.approve", "rollout.create"]
    create = page.locator("#audit-table tbody tr", has_text="rollout.create").locator("td.detail")
    assert 'target {"tag": "lab"}' in create.inner_text()
    assert "policy cohorts 1, 2, 100% · soak 0 s · on breach pause · approval between cohorts" in create.inner_text()
    check_page(page, artifacts, "12-audit-approve-cancel")
    nav(page, "Rollouts", exact=True)
    row = page.locator("#rollouts-table tbody tr", has_text=rid)
    expect(row).to_contain_text("cancelled", ignore_case=True)
    expect(row.locator("td").nth(1)).to_have_text("digits@1.0.0")  # the bundle by name, not a digest
    check_page(page, artifacts, "13-rollouts-list")
    assert not errors, f"JavaScript errors on the pages: {errors}"


OVERFLOW_JS = """() => ({width: window.innerWidth, scroll: document.documentElement.scrollWidth,
  wide: Array.from(document.querySelectorAll('body *')).filter(el => {
    const r = el.getBoundingClientRect();
    return r.right > window.innerWidth + 1 && !el.closest('.table-wrap, .card, dialog');
  }).slice(0, 5).map(el => el.tagName + '.' + el.className),
  widest: Array.from(document.querySelectorAll('body *')).map(el => [el.getBoundingClientRect().right, el.tagName + '.'
    + el.className + '#' + el.id]).sort((a, b) => b[0] - a[0]).slice(0, 4)})"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_a_phone_and_follows_the_systems_colour_scheme(
    stack: Stack, browser: Any, digits_bundle: Path, artifacts: Path, scheme: str
) -> None:
    """Issue 17: tables overflowed at phone width (390 px) and there was no dark mode. Wide
    tables scroll inside their card; nothing else is wider than the screen; with
    prefers-color-scheme: dark the pages are dark."""
    digest = stack.fleet.push(digits_bundle)["digest"]
    rid = stack.fleet.api("POST", "/api/v1/rollouts", {"bundle": digest, "target": {"all": True}})["id"]
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme=scheme)
    page = ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    login(page, stack.url, OPERATOR)
    for path in (
        "/ui",
        "/ui/devices",
        "/ui/models",
        f"/ui/models/{digest}",
        "/ui/rollouts",
        f"/ui/rollouts/{rid}",
        "/ui/audit",
    ):
        page.goto(f"{stack.url}{path}")
        page.wait_for_load_state("networkidle")
        fit = page.evaluate(OVERFLOW_JS)
        assert fit["scroll"] <= fit["width"] + 1 and fit["wide"] == [], f"{path} at 390 px: {fit}"
        # and a card that scrolls sideways (a wide table) says so to the eye: it is the card, not the page
        bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        rgb = [int(x) for x in re.findall(r"\d+", bg)[:3]]
        assert (sum(rgb) < 150) if scheme == "dark" else (sum(rgb) > 600), f"{path} {scheme}: body {bg}"
        page.screenshot(path=str(artifacts / f"phone-{scheme}{path.replace('/', '-')[:40]}.png"), full_page=True)
    ctx.close()


WIDTH_JS = "() => ({scroll: document.scrollingElement.scrollWidth, width: window.innerWidth})"


def test_operator_tags_groups_and_retries_selected_devices_and_low_rate_charts_say_what_they_show(
    stack: Stack, browser: Any, digits_bundle: Path, artifacts: Path
) -> None:
    """Issue 17: bulk actions on the device list (select, select all on the page, tag, set the
    group, retry failed installs; one result per device) and device charts that show a device
    under 10 requests/s instead of staying empty. Then every main page at 1440 and 390 px."""
    pushed = stack.fleet.push(digits_bundle)
    digest = pushed["digest"]
    base = read_baseline(digits_bundle)
    stack.add_device("sim-0", baselines={digest: base})
    stack.add_device("sim-1", baselines={digest: base}, fail_times=1)
    names = {digest: (pushed["name"], pushed["version"])}
    stack.add_device("sim-slow", baselines={digest: base}, samples=8, active=digest, names=names)
    wait_api(stack, "three devices online", lambda b: sum(d["online"] for d in b["items"]) == 3, "/api/v1/devices")
    policy = {"gates": {"max_install_failure_rate": 1.0}}  # sim-1's failure must not pause the rollout
    rid = stack.fleet.api(
        "POST", "/api/v1/rollouts", {"bundle": digest, "target": {"devices": ["sim-0", "sim-1"]}, "policy": policy}
    )["id"]
    wait_api(
        stack,
        "sim-0 installed, sim-1 failed",
        lambda b: b["counts"] == {"installed": 1, "failed": 1},
        f"/api/v1/rollouts/{rid}",
    )

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, stack.url, OPERATOR)
    page.goto(f"{stack.url}/ui/rollouts/{rid}")  # the rollout offers to retry its failed install
    expect(page.locator("#cmd-retry")).to_have_text("Retry failed installs")
    nav(page, "Devices", exact=True)
    expect(page.locator("#device-table tbody tr[data-device]")).to_have_count(3)
    assert page.locator("#bulk-apply").is_disabled()  # nothing selected yet

    # tick two devices, add a tag: one result per device, and the selection survives the refresh
    page.get_by_label("Select sim-0", exact=True).check()
    page.get_by_label("Select sim-1", exact=True).check()
    expect(page.locator("#bulk-count")).to_have_text("2 devices selected")
    page.get_by_label("Action", exact=True).select_option("tag")
    page.locator("#bulk-value").fill("lab")
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.locator("#bulk-summary")).to_have_text("2 ok, 0 unknown, 0 refused")
    expect(page.locator("tr[data-device=sim-0] td.tags")).to_have_text("lab")
    expect(page.locator("tr[data-device=sim-1] td.tags")).to_have_text("lab")
    expect(page.locator("tr[data-device=sim-slow] td.tags")).to_have_text("–")
    expect(page.get_by_label("Select sim-1", exact=True)).to_be_checked()  # re-ticked after the swap
    expect(page.get_by_label("Select sim-slow", exact=True)).not_to_be_checked()

    # select every device on the page, set the group
    page.get_by_label("Select every device on this page").check()
    expect(page.locator("#bulk-count")).to_have_text("3 devices selected")
    page.get_by_label("Action", exact=True).select_option("set_group")
    expect(page.locator("#bulk-value-label")).to_have_text("Group (empty clears it)")
    page.locator("#bulk-value").fill("east")
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.locator("#bulk-summary")).to_have_text("3 ok, 0 unknown, 0 refused")
    expect(page.locator("tr[data-device=sim-slow] td:nth-child(6)")).to_have_text("east")

    # retry failed installs: sim-1 is re-issued (and installs), the others are refused with why
    page.get_by_label("Action", exact=True).select_option("retry")
    expect(page.locator("#bulk-value-field")).to_be_hidden()
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.locator("#bulk-summary")).to_have_text("1 ok, 0 unknown, 2 refused")
    problems = page.locator("#bulk-problems li")
    expect(problems).to_have_count(2)
    expect(page.locator("#bulk-problems li[data-device=sim-0]")).to_contain_text(
        f"refused: nothing to retry: its install in rollout {rid} is installed"
    )
    expect(page.locator("#bulk-problems li[data-device=sim-slow]")).to_contain_text(
        "refused: not in a running or completed rollout"
    )
    check_page(page, artifacts, "14-devices-bulk-retry")
    wait_api(
        stack, "sim-1 installed after the retry", lambda b: b["counts"] == {"installed": 2}, f"/api/v1/rollouts/{rid}"
    )
    page.goto(f"{stack.url}/ui/rollouts/{rid}")
    expect(page.locator("#rollout-phase")).to_have_attribute("data-phase", "completed")
    assert page.locator("#cmd-retry").count() == 0  # nothing failed any more

    # each action is audited, attributed to the operator
    nav(page, "Audit log")
    actions = page.locator("#audit-table tbody tr td:nth-child(3)").all_inner_texts()
    assert {"device.bulk.tag", "device.bulk.set_group", "rollout.retry"} <= set(actions)

    # a device at 8 requests per window: its charts fill (merged windows, hollow) and say why
    page.goto(f"{stack.url}/ui/devices/sim-slow")
    page.wait_for_function("Number(document.getElementById('chart-device-drift').dataset.points || 0) > 0")
    assert int(page.locator("#chart-device-drift").get_attribute("data-hollow") or 0) > 0
    note = text(page, "#chart-device-drift-note")
    assert "samples in the last" in note and "drift needs >= 100 per point" in note and "hollow" in note, note
    page.wait_for_function("Number(document.getElementById('chart-device-latency').dataset.hollow || 0) > 0")
    assert "had fewer than 20 requests" in text(page, "#chart-device-latency-note")
    check_page(page, artifacts, "15-device-low-rate")
    # the fleet charts say what they show too
    page.goto(f"{stack.url}/ui")
    page.wait_for_function("Number(document.getElementById('chart-drift').dataset.points || 0) > 0")
    assert "samples in the last" in text(page, "#chart-drift-note")
    assert "requests in the last" in text(page, "#chart-latency-note")
    assert not errors, f"JavaScript errors on the pages: {errors}"

    # every main page at a desktop and a phone width: nothing wider than the screen
    shots = artifacts / "widths"
    shots.mkdir(exist_ok=True)
    for width in (1440, 390):
        ctx = browser.new_context(viewport={"width": width, "height": 900})
        p = ctx.new_page()
        p.set_default_timeout(WAIT_MS)
        login(p, stack.url, OPERATOR)
        for name, path in (
            ("fleet", "/ui"),
            ("devices", "/ui/devices"),
            ("device", "/ui/devices/sim-slow"),
            ("models", "/ui/models"),
            ("model", f"/ui/models/{digest}"),
            ("rollouts", "/ui/rollouts"),
            ("rollout", f"/ui/rollouts/{rid}"),
            ("audit", "/ui/audit"),
        ):
            p.goto(f"{stack.url}{path}")
            p.wait_for_load_state("networkidle")
            fit = p.evaluate(WIDTH_JS)
            assert fit["scroll"] <= fit["width"], f"{path} at {width} px is wider than the screen: {fit}"
            p.screenshot(path=str(shots / f"{width}-{name}.png"), full_page=True)
        ctx.close()
