"""The vendored front-end assets are exactly what ``scripts/vendor-assets.sh`` recorded, and
the templates reference nothing outside the hub (no CDN at run time)."""

from __future__ import annotations

import hashlib
import re

from hub.web.dashboard import HERE, STATIC_DIR


def test_vendored_assets_match_the_hashes_the_vendor_script_recorded() -> None:
    lines = (STATIC_DIR / "vendor" / "VERSIONS").read_text().splitlines()
    assert lines[0].startswith("uplot@") and "(MIT)" in lines[0]
    recorded = dict(reversed(line.split()) for line in lines[1:] if line.strip())
    assert set(recorded) == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in recorded.items():
        assert hashlib.sha256((STATIC_DIR / "vendor" / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (STATIC_DIR / "vendor" / "uPlot.LICENSE").read_text()


def test_templates_and_scripts_load_nothing_from_other_origins() -> None:
    pattern = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)
    files = [*sorted((HERE / "templates").rglob("*.html")), STATIC_DIR / "dashboard.js", STATIC_DIR / "dashboard.css"]
    offenders = [str(p.relative_to(HERE)) for p in files if pattern.search(p.read_text())]
    assert offenders == []
    assert "@import" not in (STATIC_DIR / "dashboard.css").read_text()


def test_the_dashboard_has_a_favicon_and_browsers_asking_for_favicon_ico_find_it(client):
    r = client.get("/favicon.ico", follow_redirects=False)
    assert r.status_code == 301 and r.headers["location"] == "/static/favicon.svg"
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon" href="/static/favicon.svg"' in client.get("/ui/login").text
