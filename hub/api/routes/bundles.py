"""Bundles (signed model packages) and models (a name's revisions)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ... import bundles
from ...errors import NotFound
from ..deps import FleetDep, Operator, Viewer
from ..params import Limit, Offset
from ..schemas import DIGEST_RE, BundleDetail, BundlePublic, BundlePushed, ModelPublic, Page, errors

router = APIRouter(prefix="/api/v1", tags=["bundles"])
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
Digest = Annotated[str, Field(pattern=DIGEST_RE)]


@router.post(
    "/bundles",
    response_model=BundlePushed,
    responses=errors(400, 401, 403, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "a bundle archive as written by protocol.bundle.pack_archive",
        }
    },
)
async def push_bundle(request: Request, caller: Operator, f: FleetDep) -> dict[str, Any]:
    """Store, check and sign a bundle archive; the same bytes twice give the same answer."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BUNDLE_BYTES:
        raise HTTPException(413, f"bundle of {declared} bytes exceeds {MAX_BUNDLE_BYTES}")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BUNDLE_BYTES:
            raise HTTPException(413, f"bundle exceeds {MAX_BUNDLE_BYTES} bytes")
        chunks.append(part)
    return await run_in_threadpool(bundles.push_archive, f, b"".join(chunks), caller.actor)


@router.get("/bundles", response_model=Page[BundlePublic], responses=errors(401, 422))
def list_bundles(
    _c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0, name: str | None = None
) -> dict[str, Any]:
    return bundles.listing(f, limit, offset, name)


@router.get("/bundles/{digest}", response_model=BundleDetail, responses=errors(401, 404, 422))
def get_bundle(_c: Viewer, f: FleetDep, digest: Digest) -> dict[str, Any]:
    return bundles.get(f, digest)


@router.get("/bundles/{digest}/archive", response_class=FileResponse, responses=errors(401, 404, 422))
def get_archive(_c: Viewer, f: FleetDep, digest: Digest) -> FileResponse:
    """The signed archive, as agents download it in chunks (and the cloud fallback reads it)."""
    b = bundles.get(f, digest)
    path = f.store.archive_path(b["archive_sha256"])
    if not path.exists():
        raise NotFound("archive", b["archive_sha256"])
    return FileResponse(path, media_type="application/octet-stream", filename=f"{digest}.efb")


@router.get("/models", response_model=Page[ModelPublic], responses=errors(401, 422))
def list_models(_c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return bundles.models(f, limit, offset)
