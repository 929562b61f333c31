"""The operator dashboard: server-rendered pages under ``/ui`` and the small feeds their
script polls for live updates.

Pages: ``/ui`` (fleet), ``/ui/devices`` (+ ``/{id}``), ``/ui/models`` (+ ``/{digest}``),
``/ui/rollouts`` (+ ``/{id}``), ``/ui/audit``; ``/ui/login`` and ``/ui/logout``.
Live updates: every page marks regions ``data-live="<part>"``; the script re-fetches
``<page url>?part=<part>`` (the same template partial the page was rendered with) every few
seconds and swaps it in. Charts read JSON from ``/ui/feed/...``.

Read-only by design: buttons and the rollout form call the REST API (``/api/v1/...``) from the
page; the API checks the role and writes the audit entry. The session is the ``ef_token``
cookie (HttpOnly, SameSite=Strict) that :mod:`hub.api.deps` already accepts, so the same
token authorises both. The viewer role gets no action controls.
"""

from __future__ import annotations

import hmac
import json
import time
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from protocol.errors import BadPayload

from ..api.deps import RANK, Caller, caller_of
from ..errors import HubError, NotFound
from ..fleet import Fleet
from . import queries
from .queries import DeviceFilter, QueryError

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
COOKIE = "ef_token"
POLL_MS = 3000
SPANS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}
SERIES_TTL_S = 4.0
NAV = {"fleet.html": "fleet", "devices_list.html": "devices", "device.html": "devices", "models.html": "models",
       "model.html": "models", "rollouts.html": "rollouts", "rollout.html": "rollouts", "audit.html": "audit"}


# ---- template helpers --------------------------------------------------------------------------
def _ago(ts: Any, now: int | None = None) -> str:
    if not ts:
        return "never"
    d = int((now or time.time()) - int(ts))
    if d < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return f"{d // size}{unit} ago"
    return f"{d}s ago"


def _utc(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(ts))) if ts else "-"


def _num(v: Any, nd: int = 2) -> str:
    if v is None or isinstance(v, bool):
        return "–"
    try:
        return f"{float(v):.{nd}f}"
    except (TypeError, ValueError):
        return str(v)


def _pct(v: Any, nd: int = 1) -> str:
    return "–" if v is None or isinstance(v, bool) else f"{float(v) * 100:.{nd}f} %"


def _size(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    n = float(v)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(v)


def _tojson_attr(v: Any) -> Markup:
    return Markup(json.dumps(v, separators=(",", ":")).replace("&", "&amp;").replace('"', "&quot;")
                  .replace("<", "&lt;").replace(">", "&gt;"))


# inventory / health keys as an operator reads them; units come from the key's suffix
LABELS = {"edgetpu": "Edge TPU", "free_disk_mb": "free disk", "disk_free_mb": "free disk",
          "mem_available_mb": "memory available", "mem_total_mb": "memory", "ram_mb": "memory",
          "cpu_temp_c": "CPU temperature", "load1": "load (1 min)", "arch": "architecture", "os": "OS",
          "tflite_runtime": "TFLite runtime", "pycoral": "PyCoral", "python": "Python"}
UNITS = (("_mb", "MB"), ("_c", "°C"), ("_ms", "ms"), ("_s", "s"))


def _label(key: Any) -> str:
    k = str(key)
    if k in LABELS:
        return LABELS[k]
    for suffix, _unit in UNITS:
        if k.endswith(suffix):
            k = k[: -len(suffix)]
            break
    return k.replace("_", " ")


def _fact(v: Any, key: Any = "") -> str:
    """An inventory or health value in words: yes/no, units from the key, the Edge TPU's
    ``{"present": bool, ...}`` as present/absent plus its details."""
    k = str(key)
    if k == "edgetpu" and isinstance(v, dict):
        rest = {a: b for a, b in v.items() if a != "present"}
        head = "present" if v.get("present") else "absent"
        return head + (" (" + ", ".join(f"{_label(a)} {_fact(b, a)}" for a, b in rest.items()) + ")" if rest else "")
    if isinstance(v, bool):
        return ("present" if v else "absent") if k == "edgetpu" else ("yes" if v else "no")
    if v is None or v == "":
        return "–"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": "))
    for suffix, unit in UNITS:
        if k.endswith(suffix) and isinstance(v, (int, float)):
            return f"{v:g} {unit}" if unit != "°C" else f"{v:.1f} °C"
    return str(v)


def _policy_summary(p: Any) -> str:
    """A rollout policy in one line: cohorts, soak, breach action, approval."""
    if not isinstance(p, dict):
        return str(p)
    parts = [f"cohorts {', '.join(str(c) for c in p.get('cohorts') or [])}"]
    if p.get("soak_s") is not None:
        parts.append(f"soak {p['soak_s']} s")
    if p.get("on_breach"):
        parts.append(f"on breach {p['on_breach']}")
    if p.get("approve_each_cohort"):
        parts.append("approval between cohorts")
    return " · ".join(parts)


def make_templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters.update(ago=_ago, utc=_utc, num=_num, pct=_pct, size=_size, jsonattr=_tojson_attr, label=_label,
                         fact=_fact, policy_summary=_policy_summary)
    t.env.globals.update(poll_ms=POLL_MS, urlencode=urlencode)
    return t


class Baselines:
    """Baseline reference counts per bundle (``{"inputs.f": ref}``), read once from the store."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._cache: dict[str, dict[str, list[int]]] = {}

    def __call__(self, digest: str) -> Mapping[str, Sequence[int]] | None:
        if digest not in self._cache:
            refs: dict[str, list[int]] = {}
            try:
                obj = self.fleet.store.baseline(digest, self.fleet.store.manifest(digest)) or {}
            except (HubError, OSError, BadPayload, ValueError):
                obj = {}
            for side in ("inputs", "outputs"):
                for name, spec in (obj.get(side) or {}).items():
                    if isinstance(spec, dict) and isinstance(spec.get("ref"), list):
                        refs[f"{side}.{name}"] = [int(x) for x in spec["ref"]]
            self._cache[digest] = refs
        return self._cache[digest]


def _bool_param(name: str, v: str | None) -> bool | None:
    if v in (None, ""):
        return None
    if v in ("true", "1", "yes", "online"):
        return True
    if v in ("false", "0", "no", "offline"):
        return False
    raise QueryError(f"{name} must be true or false, got {v!r}")


def _int_param(name: str, v: str | None, default: int) -> int:
    if v in (None, ""):
        return default
    try:
        return int(v)  # type: ignore[arg-type]
    except ValueError:
        raise QueryError(f"{name} must be an integer, got {v!r}") from None


def device_filter(p: Mapping[str, str]) -> DeviceFilter:
    """The devices page's query string as a :class:`DeviceFilter` (raises QueryError)."""
    return DeviceFilter(q=p.get("q", "").strip(), online=_bool_param("online", p.get("online")),
                        group=p.get("group", ""), board=p.get("board", ""), tpu=_bool_param("tpu", p.get("tpu")),
                        tag=p.get("tag", "").strip(), bundle=p.get("bundle", ""), limit=_int_param("limit", p.get("limit"), 50),
                        offset=_int_param("offset", p.get("offset"), 0))


# ---- the router --------------------------------------------------------------------------------
def dashboard_router() -> APIRouter:
    """Pages and feeds; include with ``app.include_router(dashboard_router())`` and mount
    :data:`STATIC_DIR` at ``/static``. Needs ``app.state.fleet`` and ``app.state.tokens``."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    templates = make_templates()
    caches: dict[int, Baselines] = {}
    # every open fleet page polls the same series; merging 20k sketches is the costly part
    series_cache: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}

    def fleet_of(request: Request) -> Fleet:
        return request.app.state.fleet  # type: ignore[no-any-return]

    def baselines(fleet: Fleet) -> Baselines:
        return caches.setdefault(id(fleet), Baselines(fleet))

    def render(request: Request, caller: Caller, page: str, ctx: dict[str, Any], parts: Sequence[str] = (),
               status: int = 200) -> Response:
        part = request.query_params.get("part")
        base = {"caller": caller, "can_act": RANK[caller.role] >= RANK["operator"], "now": int(time.time()),
                "nav": NAV.get(page, "")}
        if part:
            if part not in parts:
                return JSONResponse({"error": f"page has no live part {part!r}; known: {list(parts)}"}, 404)
            return templates.TemplateResponse(request, f"parts/{part}.html", {**base, **ctx}, status_code=status)
        return templates.TemplateResponse(request, page, {**base, **ctx}, status_code=status)

    def guard(request: Request, need: str = "viewer") -> Caller | Response:
        caller = caller_of(request)
        if caller is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.query_params.get("part") or request.url.path.startswith("/ui/feed"):
                return JSONResponse({"error": "session expired; log in again"}, 401)
            return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)
        if RANK[caller.role] < RANK[need]:
            return templates.TemplateResponse(request, "denied.html", {
                "caller": caller, "need": need, "can_act": False, "nav": "", "now": int(time.time())},
                status_code=403)
        return caller

    def bad_input(request: Request, caller: Caller, exc: Exception) -> Response:
        return templates.TemplateResponse(request, "error.html", {
            "caller": caller, "can_act": RANK[caller.role] >= RANK["operator"], "nav": "",
            "now": int(time.time()), "message": str(exc)}, status_code=400 if isinstance(exc, QueryError) else 404)

    # ---- session -------------------------------------------------------------------------
    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/ui") -> Response:
        return templates.TemplateResponse(request, "dash_login.html", {"next": _safe_next(next), "error": ""})

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, token: str = Form(""), next: str = Form("/ui")) -> Response:
        token = token.strip()
        tokens: dict[str, str] = request.app.state.tokens
        role = None
        for known, r in tokens.items():
            if token and hmac.compare_digest(known.encode(), token.encode()):
                role = r
        if role is None:
            return templates.TemplateResponse(request, "dash_login.html", {
                "next": _safe_next(next),
                "error": "That token is not valid for this hub. Check it and try again." if token
                else "Enter an API token."}, status_code=401)
        resp = RedirectResponse(_safe_next(next), status_code=303)
        # SameSite=Strict is what keeps cross-site pages from riding this cookie into the API
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
        return resp

    @router.post("/logout")
    def logout() -> Response:
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ---- fleet ---------------------------------------------------------------------------
    @router.get("", response_class=HTMLResponse)
    def fleet_page(request: Request, span: str = "1h") -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        with f.session() as s:
            ctx = queries.fleet_overview(s, int(time.time()))
        return render(request, caller, "fleet.html", {"o": ctx, "span": span if span in SPANS else "1h",
                                                      "spans": list(SPANS)}, parts=("fleet_cards", "fleet_alerts"))

    @router.get("/feed/fleet-series")
    def fleet_series(request: Request, span: str = "1h") -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        if span not in SPANS:
            return JSONResponse({"error": f"span must be one of {list(SPANS)}, got {span!r}"}, 400)
        f = fleet_of(request)
        now = time.monotonic()
        hit = series_cache.get((id(f), span))
        if hit is None or now - hit[0] > SERIES_TTL_S:
            with f.session() as s:
                hit = series_cache[(id(f), span)] = (now, queries.fleet_series(s, int(time.time()), baselines(f),
                                                                              SPANS[span]))
        return JSONResponse(hit[1])

    # ---- devices -------------------------------------------------------------------------
    @router.get("/devices", response_class=HTMLResponse)
    def devices_page(request: Request) -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        try:
            flt = device_filter(request.query_params)
        except QueryError as exc:
            return bad_input(request, caller, exc)
        f = fleet_of(request)
        with f.session() as s:
            page = queries.device_page(s, flt)
            facets = queries.device_facets(s)
        return render(request, caller, "devices_list.html", {"page": page, "f": flt, "facets": facets,
                                                             "page_sizes": queries.PAGE_SIZES},
                      parts=("device_table",))

    @router.get("/feed/devices")
    def devices_feed(request: Request) -> Response:
        """The devices page's data as JSON (same filters and pagination as the page)."""
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        try:
            flt = device_filter(request.query_params)
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        f = fleet_of(request)
        with f.session() as s:
            return JSONResponse(queries.device_page(s, flt))

    @router.get("/devices/{device_id}", response_class=HTMLResponse)
    def device_page(request: Request, device_id: str) -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        try:
            d = f.get_device(device_id)
        except NotFound as exc:
            return bad_input(request, caller, exc)
        with f.session() as s:
            history = queries.device_history(s, device_id)
            series = queries.device_series(s, device_id, baselines(f), limit=1)
        return render(request, caller, "device.html", {"d": d, "history": history, "health": series["health"]},
                      parts=("device_summary", "device_history"))

    @router.get("/feed/devices/{device_id}/series")
    def device_series(request: Request, device_id: str) -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        with f.session() as s:
            return JSONResponse(queries.device_series(s, device_id, baselines(f)))

    # ---- models --------------------------------------------------------------------------
    @router.get("/models", response_class=HTMLResponse)
    def models_page(request: Request) -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        with f.session() as s:
            items = queries.model_list(s)
        return render(request, caller, "models.html", {"models": items}, parts=("models_table",))

    @router.get("/models/{digest}", response_class=HTMLResponse)
    def model_page(request: Request, digest: str) -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        with f.session() as s:
            b = queries.bundle_detail(s, digest)
        if b is None:
            return bad_input(request, caller, NotFound("bundle", digest))
        return render(request, caller, "model.html", {"b": b}, parts=("model_running",))

    # ---- rollouts ------------------------------------------------------------------------
    @router.get("/rollouts", response_class=HTMLResponse)
    def rollouts_page(request: Request, bundle: str = "") -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        listing = f.list_rollouts(limit=50)
        with f.session() as s:
            bundles = queries.model_list(s)
            facets = queries.device_facets(s)
        return render(request, caller, "rollouts.html", {
            "rollouts": listing["items"], "total": listing["total"], "bundles": bundles, "facets": facets,
            "names": {m["digest"]: f"{m['name']}@{m['version']}" for m in bundles},
            "chosen": bundle}, parts=("rollouts_table",))

    @router.get("/rollouts/preview", response_class=HTMLResponse)
    def preview(request: Request, bundle: str = "", target_kind: str = "all", target_value: str = "",
                cohorts: str = "100%") -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        try:
            if not bundle:
                raise QueryError("choose a bundle to preview the rollout")
            target = queries.parse_target(target_kind, target_value)
            sizes = queries.parse_cohorts(cohorts)
            with f.session() as s:
                pv = queries.rollout_preview(s, bundle, target, sizes)
        except (QueryError, HubError) as exc:
            return templates.TemplateResponse(request, "parts/preview.html", {"error": str(exc), "pv": None},
                                              status_code=400)
        return templates.TemplateResponse(request, "parts/preview.html", {"error": "", "pv": pv})

    @router.get("/rollouts/{rid}", response_class=HTMLResponse)
    def rollout_page(request: Request, rid: str) -> Response:
        caller = guard(request)
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        try:
            r = f.rollout_status(rid, limit=200)
        except NotFound as exc:
            return bad_input(request, caller, exc)
        with f.session() as s:
            b = queries.bundle_detail(s, r["bundle"])
        return render(request, caller, "rollout.html", {"r": r, "b": b, "cohorts": _cohort_progress(r)},
                      parts=("rollout_progress", "rollout_devices"))

    # ---- audit ---------------------------------------------------------------------------
    @router.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, action: str = "",
                   offset: Annotated[int, Query(ge=0, le=queries.MAX_OFFSET)] = 0) -> Response:
        caller = guard(request, need="operator")  # the API's audit route needs operator too
        if isinstance(caller, Response):
            return caller
        f = fleet_of(request)
        with f.session() as s:
            page = queries.audit_page(s, 50, offset, action[:64])
        return render(request, caller, "audit.html", {"page": page, "action": action[:64]},
                      parts=("audit_table",))

    return router


def _safe_next(target: str) -> str:
    """Only same-site paths under /ui (no open redirect)."""
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui"


def _cohort_progress(r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per cohort: its cumulative size, how many of its devices are in each state."""
    sizes: list[int] = list(r.get("cohort_sizes") or [])
    per: dict[int, dict[str, int]] = {}
    for d in r.get("devices") or []:
        if d.get("cohort") is not None:
            per.setdefault(int(d["cohort"]), {}).setdefault(d["state"], 0)
            per[int(d["cohort"])][d["state"]] += 1
    out, prev = [], 0
    for i, size in enumerate(sizes):
        states = per.get(i, {})
        n = size - prev
        prev = size
        done = sum(v for k, v in states.items() if k in ("installed", "rolled_back"))
        bad = sum(v for k, v in states.items() if k in ("failed", "timed_out", "incompatible"))
        out.append({"index": i, "spec": (r.get("policy") or {}).get("cohorts", [])[i]
                    if i < len((r.get("policy") or {}).get("cohorts", [])) else "", "size": n,
                    "opened": i <= int(r.get("cohort", -1)), "states": states, "done": done, "bad": bad,
                    "pct": round(100 * done / n) if n else 0})
    return out

