"""Device groups and their maintenance windows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field

from ... import groups, rollouts
from ..deps import FleetDep, Operator, Viewer
from ..schemas import GroupPublic, Page, WindowIn, errors

router = APIRouter(prefix="/api/v1", tags=["groups"])
GroupName = Annotated[str, Field(min_length=1, max_length=64)]


@router.get("/groups", response_model=Page[GroupPublic], responses=errors(401))
def list_groups(_c: Viewer, f: FleetDep) -> dict[str, Any]:
    return groups.listing(f)


@router.get("/groups/{group}", response_model=GroupPublic, responses=errors(401, 404, 422))
def get_group(_c: Viewer, f: FleetDep, group: GroupName) -> dict[str, Any]:
    return groups.get(f, group)


@router.put("/groups/{group}/window", response_model=GroupPublic, responses=errors(400, 401, 403, 422))
def set_window(caller: Operator, f: FleetDep, group: GroupName, body: WindowIn) -> dict[str, Any]:
    """Rollouts issue installs to the group's devices only while the window is open."""
    out = groups.set_window(f, group, body.spec, body.tz, caller.actor)
    rollouts.tick(f)  # devices waiting for this window go now if it is open
    return out


@router.delete("/groups/{group}/window", response_model=GroupPublic, responses=errors(401, 403, 404, 422))
def clear_window(caller: Operator, f: FleetDep, group: GroupName) -> dict[str, Any]:
    out = groups.clear_window(f, group, caller.actor)
    rollouts.tick(f)
    return out
