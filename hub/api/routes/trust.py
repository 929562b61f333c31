"""Trust roots. Public by design (signed, no secrets): a device several rotations behind
fetches the chain without any API token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import Field

from ...errors import NotFound
from ..deps import FleetDep
from ..schemas import errors

router = APIRouter(prefix="/api/v1", tags=["trust"])


@router.get("/root", response_class=Response)
def root(f: FleetDep) -> Response:
    """The newest signed trust root (what a device pins at provisioning)."""
    return Response(f.keys.root_bytes, media_type="application/json")


@router.get("/root/{version}", response_class=Response, responses=errors(404, 422))
def root_version(f: FleetDep, version: Annotated[int, Field(ge=1, le=1_000_000)]) -> Response:
    """Root v{version}: a device several rotations behind walks v+1, v+2, ... in order."""
    path = f.config.keys / f"root-v{version}.json"
    if not path.is_file():
        raise NotFound("root version", str(version))
    return Response(path.read_bytes(), media_type="application/json")
