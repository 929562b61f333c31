"""FastAPI app factory and routes.

Errors are JSON ``{"error": "<one line naming the thing and the problem>"}`` with 400 (bad
input), 401/403 (auth), 404 (unknown id), 409 (state conflict), 413 (body too large),
422 (schema validation, FastAPI's detail kept under ``detail``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol.topics import check_device_id
from protocol.errors import BadPayload

from ..errors import Conflict, Denied, HubError, NotFound
from ..fleet import Fleet
from .deps import Admin, FleetDep, Operator, Viewer, caller_of
from .textguard import TextGuard

log = logging.getLogger(__name__)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "web" / "templates"))
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip")]
DIGEST_RE = r"^[0-9a-f]{64}$"


class BundleOut(BaseModel):
    digest: str
    name: str
    version: str
    archive_sha256: str
    size: int
    revision: int


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(pattern=DIGEST_RE, description="bundle digest (64 hex)")
    target: dict[str, Any] = Field(description='{"all": true} | {"devices": [...]} | {"group": g} | {"tag": t}')
    policy: dict[str, Any] = Field(default_factory=dict, description="cohorts, soak, gates (see hub.rollout)")


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="device id to enroll")
    group: str = Field(default="", max_length=64)
    tags: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)


class RedeemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=8, max_length=200)


class DevicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str | None = Field(default=None, max_length=64)
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=64)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(fleet: Fleet, connected: Any = None) -> FastAPI:
    """``connected``: optional object with ``is_set()`` (the bridge's connected event)."""
    app = FastAPI(title="edgefleet hub", version="1",
                  description="Registry, signing, rollouts and telemetry for an edge-ML fleet. "
                              "Authenticate with `Authorization: Bearer <token>`.")
    app.add_middleware(TextGuard)
    app.state.fleet = fleet
    app.state.tokens = dict(fleet.config.tokens)
    metrics = fleet.metrics

    @app.exception_handler(HubError)
    async def hub_error(_r: Request, exc: HubError) -> JSONResponse:
        status = (404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict)
                  else 403 if isinstance(exc, Denied) else 400)
        metrics.http_errors.labels(str(status)).inc()
        return _error(status, str(exc))

    @app.exception_handler(BadPayload)
    async def bad_payload(_r: Request, exc: BadPayload) -> JSONResponse:
        metrics.http_errors.labels("400").inc()
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> Response:
        metrics.http_errors.labels(str(exc.status_code)).inc()
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.http_errors.labels("422").inc()
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, f"invalid {where}: {first.get('msg', 'validation failed')}",
                      detail=[{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errs])

    # ---- health, metrics, page ----------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    def healthz(f: FleetDep) -> dict[str, Any]:
        with f.session() as s:
            s.exec(text("SELECT 1"))  # type: ignore[call-overload]
        mqtt = connected.is_set() if connected is not None else None
        return {"status": "ok", "db": "ok", "mqtt": mqtt}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus(f: FleetDep) -> Response:
        f.refresh_gauges()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, f: FleetDep, offset: Offset = 0, q: str | None = None) -> Response:
        # A token in a URL lands in browser history, proxy and access logs, so ``/?token=`` no
        # longer signs in (it set the cookie): the sign-in form POSTs the token instead.
        if caller_of(request) is None or "token" in request.query_params:
            return TEMPLATES.TemplateResponse(request, "dash_login.html", {
                "next": "/ui", "error": "A token in a URL is not accepted: sign in here."
                if "token" in request.query_params else ""}, status_code=401)
        page = f.list_devices(limit=200, offset=offset, q=q)
        rollouts = f.list_rollouts(limit=10)
        return TEMPLATES.TemplateResponse(request, "devices.html", {
            "devices": page["items"], "total": page["total"], "offset": offset, "limit": 200, "q": q or "",
            "rollouts": rollouts["items"]})

    # ---- bundles -------------------------------------------------------------------------
    @app.post("/api/v1/bundles", tags=["bundles"], response_model=BundleOut,
              openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                  "schema": {"type": "string", "format": "binary"}}},
                  "description": "a bundle archive as written by protocol.bundle.pack_archive"}})
    async def push_bundle(request: Request, caller: Operator, f: FleetDep) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BUNDLE_BYTES:
            raise HTTPException(413, f"bundle of {declared} bytes exceeds {MAX_BUNDLE_BYTES}")
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > MAX_BUNDLE_BYTES:
                raise HTTPException(413, f"bundle exceeds {MAX_BUNDLE_BYTES} bytes")
            chunks.append(part)
        data = b"".join(chunks)
        from starlette.concurrency import run_in_threadpool
        return await run_in_threadpool(f.push_archive, data, caller.actor)

    @app.get("/api/v1/bundles", tags=["bundles"])
    def list_bundles(_c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0,
                     name: str | None = None) -> dict[str, Any]:
        return f.list_bundles(limit, offset, name)

    @app.get("/api/v1/bundles/{digest}", tags=["bundles"])
    def get_bundle(_c: Viewer, f: FleetDep, digest: Annotated[str, Field(pattern=DIGEST_RE)]) -> dict[str, Any]:
        return f.get_bundle(digest)

    @app.get("/api/v1/bundles/{digest}/archive", tags=["bundles"], response_class=FileResponse)
    def get_archive(_c: Viewer, f: FleetDep, digest: Annotated[str, Field(pattern=DIGEST_RE)]) -> FileResponse:
        b = f.get_bundle(digest)
        path = f.store.archive_path(b["archive_sha256"])
        if not path.exists():
            raise NotFound("archive", b["archive_sha256"])
        return FileResponse(path, media_type="application/octet-stream", filename=f"{digest}.efb")

    # ---- devices -------------------------------------------------------------------------
    @app.get("/api/v1/devices", tags=["devices"])
    def list_devices(_c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0,
                     online: bool | None = None, q: Annotated[str | None, Query(max_length=64)] = None,
                     group: str | None = None, tag: str | None = None,
                     bundle: Annotated[str | None, Query(pattern=DIGEST_RE)] = None) -> dict[str, Any]:
        return f.list_devices(limit, offset, online, q, group, tag, bundle)

    @app.get("/api/v1/devices/{device_id}", tags=["devices"])
    def get_device(_c: Viewer, f: FleetDep, device_id: str) -> dict[str, Any]:
        check_device_id(device_id)
        return f.get_device(device_id)

    @app.patch("/api/v1/devices/{device_id}", tags=["devices"])
    def patch_device(caller: Operator, f: FleetDep, device_id: str, body: DevicePatch) -> dict[str, Any]:
        check_device_id(device_id)
        return f.set_device_meta(device_id, body.group, body.tags, caller.actor)

    @app.post("/api/v1/devices/enroll", tags=["devices"], status_code=201)
    def enroll(caller: Admin, f: FleetDep, body: EnrollIn) -> dict[str, Any]:
        """A one-time enrollment token for a device (valid ``enroll_ttl`` seconds). Admin only:
        a token becomes a broker identity."""
        return f.create_enrollment(body.device, body.group, body.tags, caller.actor)

    @app.post("/api/v1/enroll", tags=["devices"])
    def redeem(f: FleetDep, body: RedeemIn) -> dict[str, Any]:
        """Device side, no bearer token: trade the one-time token for MQTT credentials and the
        pinned trust root (``root`` is the root envelope JSON text)."""
        return f.redeem_enrollment(body.token)

    # ---- rollouts ------------------------------------------------------------------------
    @app.post("/api/v1/rollouts", tags=["rollouts"], status_code=201)
    def create_rollout(caller: Operator, f: FleetDep, body: RolloutIn) -> dict[str, Any]:
        return f.create_rollout(body.bundle, body.target, body.policy, caller.actor)

    @app.get("/api/v1/rollouts", tags=["rollouts"])
    def list_rollouts(_c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0,
                      phase: str | None = None) -> dict[str, Any]:
        return f.list_rollouts(limit, offset, phase)

    @app.get("/api/v1/rollouts/{rid}", tags=["rollouts"])
    def get_rollout(_c: Viewer, f: FleetDep, rid: Annotated[str, Field(max_length=32)], limit: Limit = 1000,
                    offset: Offset = 0, state: str | None = None) -> dict[str, Any]:
        return f.rollout_status(rid, limit, offset, state)

    @app.post("/api/v1/rollouts/{rid}/{command}", tags=["rollouts"])
    def rollout_command(caller: Operator, f: FleetDep, rid: Annotated[str, Field(max_length=32)],
                        command: Literal["pause", "resume", "cancel", "approve", "rollback"]) -> dict[str, Any]:
        return f.rollout_command(rid, command, caller.actor)

    @app.get("/api/v1/telemetry/summary", tags=["devices"])
    def telemetry_summary(_c: Viewer, f: FleetDep, bundle: Annotated[str | None, Query(pattern=DIGEST_RE)] = None,
                          device: Annotated[str | None, Query(max_length=64)] = None,
                          group: Annotated[str | None, Query(max_length=64)] = None,
                          since: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
                          until: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> dict[str, Any]:
        """Telemetry merged over devices and time: per bundle (model version), device, group
        (cohorts are groups or device lists) and window range."""
        return f.telemetry_summary(bundle, device, group, since, until)

    # ---- registry: models, alerts, audit ---------------------------------------------------
    @app.get("/api/v1/models", tags=["bundles"])
    def list_models(_c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
        return f.list_models(limit, offset)

    @app.get("/api/v1/alerts", tags=["alerts"])
    def list_alerts(_c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0,
                    kind: Literal["offline", "latency_regression", "drift", "rollout_gate"] | None = None,
                    device: Annotated[str | None, Query(max_length=64)] = None,
                    open: bool = False) -> dict[str, Any]:
        return f.list_alerts(limit, offset, kind, device, open)

    @app.get("/api/v1/audit", tags=["alerts"])
    def list_audit(_c: Operator, f: FleetDep, limit: Limit = 50, offset: Offset = 0,
                   action: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, Any]:
        return f.list_audit(limit, offset, action)

    # ---- trust ---------------------------------------------------------------------------
    # root documents are public by design (signed, no secrets): a device several rotations
    # behind fetches the chain without any API token
    @app.get("/api/v1/root", tags=["trust"], response_class=Response)
    def root(f: FleetDep) -> Response:
        """The newest signed trust root (what a device pins at provisioning)."""
        return Response(f.keys.root_bytes, media_type="application/json")

    @app.get("/api/v1/root/{version}", tags=["trust"], response_class=Response)
    def root_version(f: FleetDep, version: Annotated[int, Field(ge=1, le=1_000_000)]) -> Response:
        """Root v{version}: a device several rotations behind walks v+1, v+2, ... in order."""
        path = f.config.keys / f"root-v{version}.json"
        if not path.is_file():
            raise NotFound("root version", str(version))
        return Response(path.read_bytes(), media_type="application/json")

    # ---- operator dashboard (hub/web) ---------------------------------------------------------
    from ..web.dashboard import STATIC_DIR, dashboard_router  # here: hub.web imports hub.api.deps
    app.include_router(dashboard_router())
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    return app
