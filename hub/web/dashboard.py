"""The operator dashboard: server-rendered pages under ``/ui`` and the small feeds their
script polls for live updates.

Pages: ``/ui`` (fleet), ``/ui/devices`` (+ ``/{id}``), ``/ui/models`` (+ ``/{digest}``),
``/ui/rollouts`` (+ ``/{id}``), ``/ui/audit``, ``/ui/hard-examples`` (thumbnails of the inputs for
the operator role only); ``/ui/login`` and ``/ui/logout``.
Live updates: every page marks regions ``data-live="<part>"``; the script re-fetches
``<page url>?part=<part>`` (the same template partial the page was rendered with) every few
seconds and swaps it in. Charts read JSON from ``/ui/feed/...``.

Read-only by design: buttons and the rollout form call the REST API (``/api/v1/...``) from the
page; the API checks the role and writes the audit entry. The session is the ``ef_token``
cookie (HttpOnly, SameSite=Strict) that :mod:`hub.auth` reads for the API too, so the same
token authorises both. The viewer role gets no action controls.

Every page asks for its caller with one dependency (:func:`page_caller`): a missing session
redirects to the sign-in page (a live part or feed gets a 401 JSON instead), a role too low
gets the "denied" page. :func:`install` adds the pages, ``/`` and the static files to an app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import commands, devices, groups, hardexamples, rollouts
from ..auth import COOKIE, Caller, caller_for, caller_of
from ..errors import HubError, NotFound
from ..fleet import Fleet
from . import catalog, queries
from .queries import DeviceFilter, QueryError
from .templating import HERE, make_templates

STATIC_DIR = HERE / "static"
TEMPLATES = make_templates()
SPANS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}
SERIES_TTL_S = 4.0
NAV = {
    "fleet.html": "fleet",
    "devices_list.html": "devices",
    "device.html": "devices",
    "models.html": "models",
    "model.html": "models",
    "rollouts.html": "rollouts",
    "rollout.html": "rollouts",
    "audit.html": "audit",
    "hard_examples.html": "hard-examples",
}


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
        return int(v)
    except ValueError:
        raise QueryError(f"{name} must be an integer, got {v!r}") from None


def device_filter(p: Mapping[str, str]) -> DeviceFilter:
    """The devices page's query string as a :class:`DeviceFilter` (raises QueryError)."""
    return DeviceFilter(
        q=p.get("q", "").strip(),
        online=_bool_param("online", p.get("online")),
        group=p.get("group", ""),
        board=p.get("board", ""),
        tpu=_bool_param("tpu", p.get("tpu")),
        tag=p.get("tag", "").strip(),
        bundle=p.get("bundle", ""),
        limit=_int_param("limit", p.get("limit"), 50),
        offset=_int_param("offset", p.get("offset"), 0),
        sort=p.get("sort", "") or "health",
    )


# ---- the router --------------------------------------------------------------------------------
class Bounce(Exception):
    """A page's answer instead of the page (sign-in redirect, 401 for a live part, denied)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def page_caller(need: str = "viewer") -> Callable[[Request], Caller]:
    def dep(request: Request) -> Caller:
        caller = caller_of(request)
        if caller is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.query_params.get("part") or request.url.path.startswith("/ui/feed"):
                raise Bounce(JSONResponse({"error": "session expired; log in again"}, 401))
            raise Bounce(RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303))
        if not caller.may(need):
            raise Bounce(
                TEMPLATES.TemplateResponse(
                    request,
                    "denied.html",
                    {"caller": caller, "need": need, "can_act": False, "nav": "", "now": int(time.time())},
                    status_code=403,
                )
            )
        return caller

    return dep


def fleet_of(request: Request) -> Fleet:
    return request.app.state.fleet  # type: ignore[no-any-return]


PageViewer = Annotated[Caller, Depends(page_caller("viewer"))]
PageOperator = Annotated[Caller, Depends(page_caller("operator"))]
WebFleet = Annotated[Fleet, Depends(fleet_of)]


def render(
    request: Request, caller: Caller, page: str, ctx: dict[str, Any], parts: Sequence[str] = (), status: int = 200
) -> Response:
    part = request.query_params.get("part")
    base = {"caller": caller, "can_act": caller.may("operator"), "now": int(time.time()), "nav": NAV.get(page, "")}
    if part:
        if part not in parts:
            return JSONResponse({"error": f"page has no live part {part!r}; known: {list(parts)}"}, 404)
        return TEMPLATES.TemplateResponse(request, f"parts/{part}.html", {**base, **ctx}, status_code=status)
    return TEMPLATES.TemplateResponse(request, page, {**base, **ctx}, status_code=status)


def bad_input(request: Request, caller: Caller, exc: Exception) -> Response:
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"caller": caller, "can_act": caller.may("operator"), "nav": "", "now": int(time.time()), "message": str(exc)},
        status_code=400 if isinstance(exc, QueryError) else 404,
    )


def install(app: FastAPI) -> None:
    """Add the dashboard to ``app``: ``/``, the pages under ``/ui`` and ``/static``."""
    app.include_router(dashboard_router())
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.exception_handler(Bounce)
    async def bounce(_r: Request, exc: Bounce) -> Response:
        return exc.response


def dashboard_router() -> APIRouter:
    """Pages and feeds (see :func:`install`). Needs ``app.state.fleet`` and ``app.state.tokens``."""
    router = APIRouter(include_in_schema=False)
    # every open fleet page polls the same series; merging 20k sketches is the costly part
    series_cache: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}

    @router.get("/favicon.ico")
    def favicon() -> Response:
        """Browsers ask for /favicon.ico whatever the page links: send them to the icon."""
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @router.get("/", response_class=HTMLResponse)
    def index(
        request: Request, f: WebFleet, offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0, q: str | None = None
    ) -> Response:
        # A token in a URL lands in browser history, proxy and access logs, so ``/?token=`` does
        # not sign in: the sign-in form POSTs the token instead.
        caller = caller_of(request)
        if caller is None or "token" in request.query_params:
            return TEMPLATES.TemplateResponse(
                request,
                "dash_login.html",
                {
                    "next": "/ui",
                    "error": "A token in a URL is not accepted: sign in here."
                    if "token" in request.query_params
                    else "",
                },
                status_code=401,
            )
        page = devices.listing(f, limit=200, offset=offset, q=q)
        recent = rollouts.listing(f, limit=10)
        return TEMPLATES.TemplateResponse(
            request,
            "devices.html",
            {
                "devices": page["items"],
                "total": page["total"],
                "offset": offset,
                "limit": 200,
                "q": q or "",
                "rollouts": recent["items"],
            },
        )

    # ---- session -------------------------------------------------------------------------
    @router.get("/ui/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/ui") -> Response:
        return TEMPLATES.TemplateResponse(request, "dash_login.html", {"next": _safe_next(next), "error": ""})

    @router.post("/ui/login", response_class=HTMLResponse)
    def login(request: Request, token: str = Form(""), next: str = Form("/ui")) -> Response:
        token = token.strip()
        if caller_for(request.app.state.tokens, token) is None:
            return TEMPLATES.TemplateResponse(
                request,
                "dash_login.html",
                {
                    "next": _safe_next(next),
                    "error": "That token is not valid for this hub. Check it and try again."
                    if token
                    else "Enter an API token.",
                },
                status_code=401,
            )
        resp = RedirectResponse(_safe_next(next), status_code=303)
        # SameSite=Strict is what keeps cross-site pages from riding this cookie into the API
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/", secure=request.url.scheme == "https")
        return resp

    @router.post("/ui/logout")
    def logout() -> Response:
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ---- fleet ---------------------------------------------------------------------------
    @router.get("/ui", response_class=HTMLResponse)
    def fleet_page(request: Request, caller: PageViewer, f: WebFleet, span: str = "1h") -> Response:
        with f.session() as s:
            ctx = queries.fleet_overview(s, int(time.time()), f)
        return render(
            request,
            caller,
            "fleet.html",
            {
                "o": ctx,
                "span": span if span in SPANS else "1h",
                "spans": list(SPANS),
                "groups": groups.listing(f)["items"],
            },
            parts=("fleet_cards", "fleet_alerts"),
        )

    @router.get("/ui/feed/fleet-series")
    def fleet_series(request: Request, caller: PageViewer, f: WebFleet, span: str = "1h") -> Response:
        if span not in SPANS:
            return JSONResponse({"error": f"span must be one of {list(SPANS)}, got {span!r}"}, 400)
        now = time.monotonic()
        hit = series_cache.get((id(f), span))
        if hit is None or now - hit[0] > SERIES_TTL_S:
            with f.session() as s:
                hit = series_cache[(id(f), span)] = (
                    now,
                    queries.fleet_series(s, int(time.time()), f.store.baseline_of, SPANS[span]),
                )
        return JSONResponse(hit[1])

    # ---- devices -------------------------------------------------------------------------
    @router.get("/ui/devices", response_class=HTMLResponse)
    def devices_page(request: Request, caller: PageViewer, f: WebFleet) -> Response:
        try:
            flt = device_filter(request.query_params)
        except QueryError as exc:
            return bad_input(request, caller, exc)
        with f.session() as s:
            page = queries.device_page(s, flt)
            facets = queries.device_facets(s)
        return render(
            request,
            caller,
            "devices_list.html",
            {"page": page, "f": flt, "facets": facets, "page_sizes": queries.PAGE_SIZES},
            parts=("device_table",),
        )

    @router.get("/ui/feed/devices")
    def devices_feed(request: Request, caller: PageViewer, f: WebFleet) -> Response:
        """The devices page's data as JSON (same filters and pagination as the page)."""
        try:
            flt = device_filter(request.query_params)
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        with f.session() as s:
            return JSONResponse(queries.device_page(s, flt))

    @router.get("/ui/devices/{device_id}", response_class=HTMLResponse)
    def device_page(request: Request, caller: PageViewer, f: WebFleet, device_id: str) -> Response:
        try:
            d = devices.get(f, device_id)
        except NotFound as exc:
            return bad_input(request, caller, exc)
        with f.session() as s:
            history = queries.device_history(s, device_id)
            series = queries.device_series(s, device_id, f.store.baseline_of, limit=1)
        recent = commands.listing(f, device_id, limit=10)["items"]
        return render(
            request,
            caller,
            "device.html",
            {
                "d": d,
                "history": history,
                "health": series["health"],
                "commands": recent,
                "latest": _latest(recent),
                "drift_signals": catalog.drift_by_signal(d.get("recent", {}).get("drift") or {}),
            },
            parts=("device_summary", "device_history", "device_commands"),
        )

    @router.get("/ui/feed/devices/{device_id}/series")
    def device_series(request: Request, caller: PageViewer, f: WebFleet, device_id: str) -> Response:
        with f.session() as s:
            return JSONResponse(queries.device_series(s, device_id, f.store.baseline_of))

    # ---- models --------------------------------------------------------------------------
    @router.get("/ui/models", response_class=HTMLResponse)
    def models_page(request: Request, caller: PageViewer, f: WebFleet) -> Response:
        with f.session() as s:
            items = catalog.model_list(s)
        return render(request, caller, "models.html", {"models": items}, parts=("models_table",))

    @router.get("/ui/models/{digest}", response_class=HTMLResponse)
    def model_page(request: Request, caller: PageViewer, f: WebFleet, digest: str) -> Response:
        with f.session() as s:
            b = catalog.bundle_detail(s, digest)
        if b is None:
            return bad_input(request, caller, NotFound("bundle", digest))
        return render(request, caller, "model.html", {"b": b}, parts=("model_running",))

    # ---- rollouts ------------------------------------------------------------------------
    @router.get("/ui/rollouts", response_class=HTMLResponse)
    def rollouts_page(request: Request, caller: PageViewer, f: WebFleet, bundle: str = "") -> Response:
        listing = rollouts.listing(f, limit=50)
        with f.session() as s:
            bundles = catalog.model_list(s)
            facets = queries.device_facets(s)
        return render(
            request,
            caller,
            "rollouts.html",
            {
                "rollouts": listing["items"],
                "total": listing["total"],
                "bundles": bundles,
                "facets": facets,
                "names": {m["digest"]: f"{m['name']}@{m['version']}" for m in bundles},
                "chosen": bundle,
            },
            parts=("rollouts_table",),
        )

    @router.get("/ui/rollouts/preview", response_class=HTMLResponse)
    def preview(
        request: Request,
        caller: PageViewer,
        f: WebFleet,
        bundle: str = "",
        target_kind: str = "all",
        target_value: str = "",
        cohorts: str = "100%",
    ) -> Response:
        try:
            if not bundle:
                raise QueryError("choose a bundle to preview the rollout")
            target = catalog.parse_target(target_kind, target_value)
            sizes = catalog.parse_cohorts(cohorts)
            with f.session() as s:
                pv = catalog.rollout_preview(s, bundle, target, sizes)
        except (QueryError, HubError) as exc:
            return TEMPLATES.TemplateResponse(
                request, "parts/preview.html", {"error": str(exc), "pv": None}, status_code=400
            )
        return TEMPLATES.TemplateResponse(request, "parts/preview.html", {"error": "", "pv": pv})

    @router.get("/ui/rollouts/{rid}", response_class=HTMLResponse)
    def rollout_page(request: Request, caller: PageViewer, f: WebFleet, rid: str) -> Response:
        try:
            r = rollouts.status(f, rid, limit=200)
        except NotFound as exc:
            return bad_input(request, caller, exc)
        with f.session() as s:
            b = catalog.bundle_detail(s, r["bundle"])
        return render(
            request,
            caller,
            "rollout.html",
            {"r": r, "b": b, "cohorts": _cohort_progress(r)},
            parts=("rollout_progress", "rollout_devices"),
        )

    # ---- audit ---------------------------------------------------------------------------
    @router.get("/ui/audit", response_class=HTMLResponse)
    def audit_page(
        request: Request,
        caller: PageOperator,
        f: WebFleet,
        action: str = "",  # operator, as the API
        offset: Annotated[int, Query(ge=0, le=queries.MAX_OFFSET)] = 0,
    ) -> Response:
        with f.session() as s:
            page = catalog.audit_page(s, 50, offset, action[:64])
        return render(request, caller, "audit.html", {"page": page, "action": action[:64]}, parts=("audit_table",))

    # ---- hard examples ---------------------------------------------------------------------
    @router.get("/ui/hard-examples", response_class=HTMLResponse)
    def hard_examples_page(
        request: Request,
        caller: PageViewer,
        f: WebFleet,
        model: Annotated[str, Query(max_length=128)] = "",
        version: Annotated[str, Query(max_length=64)] = "",
        offset: Annotated[int, Query(ge=0, le=queries.MAX_OFFSET)] = 0,
    ) -> Response:
        page = hardexamples.listing(f, 48, offset, model or None, version or None)
        for it in page["items"]:
            it["predicted"] = hardexamples.predicted(it["answer"])
        ctx = {"page": page, "model": model, "version": version, "versions": hardexamples.versions(f)}
        return render(request, caller, "hard_examples.html", ctx, parts=("hard_examples_grid",))

    @router.get("/ui/hard-examples/{ident}/content")
    def hard_example_content(
        caller: PageOperator, f: WebFleet, ident: Annotated[int, Path(ge=1, le=2**31 - 1)]
    ) -> Response:
        """The input (operator role, as the API), for the page's thumbnails and links."""
        ctype, data = hardexamples.content(f, ident)
        return Response(data, media_type=ctype, headers={"Cache-Control": "private, max-age=3600"})

    return router


def _latest(recent: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The newest answered command of each name, newest first (the device page shows its result),
    with its body as indented JSON text (``pretty``; the template escapes it once, as text)."""
    seen: dict[str, dict[str, Any]] = {}
    for c in recent:
        if c["answered"] and c["name"] not in seen:
            seen[c["name"]] = {**c, "pretty": json.dumps(c["body"] or {}, indent=2, ensure_ascii=False)}
    return sorted(seen.values(), key=lambda c: -int(c["answered"]))


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
        out.append(
            {
                "index": i,
                "spec": (r.get("policy") or {}).get("cohorts", [])[i]
                if i < len((r.get("policy") or {}).get("cohorts", []))
                else "",
                "size": n,
                "opened": i <= int(r.get("cohort", -1)),
                "states": states,
                "done": done,
                "bad": bad,
                "pct": round(100 * done / n) if n else 0,
            }
        )
    return out
