"""Hard examples devices uploaded (:mod:`hub.hardexamples`): list (viewer), read the input and
delete (operator; deletions are audited)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from ... import hardexamples
from ..deps import FleetDep, Operator, Viewer
from ..params import Limit, Offset
from ..schemas import HardExamplePublic, HardExamplesDeleted, HardExampleVersions, Page, errors

router = APIRouter(prefix="/api/v1", tags=["hard examples"])
Ident = Annotated[int, Path(ge=1, le=2**31 - 1)]  # an INTEGER key
Name = Annotated[str | None, Query(max_length=128)]


@router.get("/hard-examples", response_model=Page[HardExamplePublic], responses=errors(401, 422))
def list_hard_examples(
    _c: Viewer,
    f: FleetDep,
    limit: Limit = 50,
    offset: Offset = 0,
    model: Name = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Newest first; filtered by model name, version and device."""
    return hardexamples.listing(f, limit, offset, model, version, device)


@router.delete("/hard-examples", response_model=HardExamplesDeleted, responses=errors(401, 403, 422))
def delete_hard_examples(
    caller: Operator,
    f: FleetDep,
    model: Annotated[str, Query(min_length=1, max_length=128)],
    version: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Delete a model's hard examples (one version's with ``version``): rows and files."""
    return {"deleted": hardexamples.delete(f, model, version or None, caller.actor)}


@router.get("/hard-examples/versions", response_model=HardExampleVersions, responses=errors(401))
def hard_example_versions(_c: Viewer, f: FleetDep) -> dict[str, Any]:
    """Every model version with hard examples, and how many (``items``)."""
    return {"items": hardexamples.versions(f)}


@router.get("/hard-examples/{ident}", response_model=HardExamplePublic, responses=errors(401, 404, 422))
def get_hard_example(_c: Viewer, f: FleetDep, ident: Ident) -> dict[str, Any]:
    return hardexamples.get(f, ident)


@router.get(
    "/hard-examples/{ident}/content",
    response_class=Response,
    responses={**errors(401, 403, 404, 422), 200: {"content": {"application/octet-stream": {}}}},
)
def get_hard_example_content(_c: Operator, f: FleetDep, ident: Ident) -> Response:
    """The input's bytes as the device sent them (operator role: they may show people or places)."""
    ctype, data = hardexamples.content(f, ident)
    return Response(data, media_type=ctype, headers={"Cache-Control": "private, max-age=3600"})
