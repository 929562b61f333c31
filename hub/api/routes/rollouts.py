"""Rollouts: create, list, watch, command."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from ... import rollouts
from ..deps import FleetDep, Operator, Viewer
from ..params import Limit, Offset
from ..schemas import Page, RolloutIn, RolloutPublic, RolloutStatus, errors

router = APIRouter(prefix="/api/v1", tags=["rollouts"])
RolloutId = Annotated[str, Field(max_length=32)]


@router.post("/rollouts", status_code=201, response_model=RolloutStatus, responses=errors(400, 401, 403, 404, 422))
def create_rollout(caller: Operator, f: FleetDep, body: RolloutIn) -> dict[str, Any]:
    return rollouts.create(f, body.bundle, body.target, body.policy, caller.actor, body.channel)


@router.get("/rollouts", response_model=Page[RolloutPublic], responses=errors(401, 422))
def list_rollouts(
    _c: Viewer, f: FleetDep, limit: Limit = 50, offset: Offset = 0, phase: str | None = None
) -> dict[str, Any]:
    return rollouts.listing(f, limit, offset, phase)


@router.get("/rollouts/{rid}", response_model=RolloutStatus, responses=errors(401, 404, 422))
def get_rollout(
    _c: Viewer,
    f: FleetDep,
    rid: RolloutId,
    limit: Limit = 1000,
    offset: Offset = 0,
    state: str | None = None,
    after: Annotated[str | None, Query(max_length=64, description="device id: devices after it (next_after)")] = None,
) -> dict[str, Any]:
    """The rollout, its counts and one page of its devices by id (page with ``after``)."""
    return rollouts.status(f, rid, limit, offset, state, after)


@router.post("/rollouts/{rid}/{command}", response_model=RolloutStatus, responses=errors(401, 403, 404, 409, 422))
def rollout_command(
    caller: Operator,
    f: FleetDep,
    rid: RolloutId,
    command: Literal["pause", "resume", "cancel", "approve", "rollback", "retry"],
) -> dict[str, Any]:
    """retry: re-issue every failed or timed-out install of the rollout (running or completed)."""
    return rollouts.command(f, rid, command, caller.actor)
