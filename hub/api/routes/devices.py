"""Devices, their enrollment and their telemetry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from protocol.topics import check_device_id

from ... import bulk, commands, devices, enrollment, telemetry
from ...errors import RateLimited
from ..deps import Admin, FleetDep, Operator, Viewer
from ..params import Limit, Offset
from ..schemas import (
    DIGEST_RE,
    CommandIn,
    CommandPublic,
    DeviceBulkIn,
    DeviceBulkOut,
    DeviceDetail,
    DevicePatch,
    DevicePublic,
    Enrolled,
    EnrollIn,
    EnrollmentPublic,
    KeysetPage,
    Page,
    RedeemIn,
    TelemetrySummary,
    errors,
)

router = APIRouter(prefix="/api/v1", tags=["devices"])


@router.get("/devices", response_model=KeysetPage[DevicePublic], responses=errors(401, 422))
def list_devices(
    _c: Viewer,
    f: FleetDep,
    limit: Limit = 50,
    offset: Offset = 0,
    online: bool | None = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
    group: str | None = None,
    tag: str | None = None,
    bundle: Annotated[str | None, Query(pattern=DIGEST_RE)] = None,
    after: Annotated[
        str | None, Query(max_length=64, description="device id: the page starts after it (the last page's next_after)")
    ] = None,
) -> dict[str, Any]:
    """Devices by id. Page with ``after=<next_after>``: offsets read every row they skip."""
    return devices.listing(f, limit, offset, online, q, group, tag, bundle, after)


@router.get("/devices/{device_id}", response_model=DeviceDetail, responses=errors(400, 401, 404, 422))
def get_device(_c: Viewer, f: FleetDep, device_id: str) -> dict[str, Any]:
    check_device_id(device_id)
    return devices.get(f, device_id)


@router.patch("/devices/{device_id}", response_model=DeviceDetail, responses=errors(400, 401, 403, 404, 422))
def patch_device(caller: Operator, f: FleetDep, device_id: str, body: DevicePatch) -> dict[str, Any]:
    check_device_id(device_id)
    return devices.set_meta(f, device_id, body.group, body.tags, caller.actor)


@router.post("/devices/bulk", response_model=DeviceBulkOut, responses=errors(400, 401, 403, 422))
def bulk_devices(caller: Operator, f: FleetDep, body: DeviceBulkIn) -> dict[str, Any]:
    """Tag, untag, set the group of, or retry the failed install of up to 1000 devices: one
    result per id (ok / unknown / refused with the reason), audited."""
    return bulk.apply(f, body.action, body.devices, caller.actor, body.tag, body.group)


@router.post("/devices/enroll", status_code=201, response_model=EnrollmentPublic, responses=errors(400, 401, 403, 422))
def enroll(caller: Admin, f: FleetDep, body: EnrollIn) -> dict[str, Any]:
    """A one-time enrollment token for a device (valid ``enroll_ttl`` seconds). Admin only:
    a token becomes a broker identity."""
    return enrollment.create(f, body.device, body.group, body.tags, caller.actor)


@router.post("/enroll", response_model=Enrolled, responses=errors(403, 413, 422))
def redeem(f: FleetDep, body: RedeemIn) -> dict[str, Any]:
    """Device side, no bearer token: trade the one-time token for MQTT credentials and the
    pinned trust root (``root`` is the root envelope JSON text)."""
    return enrollment.redeem(f, body.token)


@router.get("/telemetry/summary", response_model=TelemetrySummary, responses=errors(401, 422))
def telemetry_summary(
    _c: Viewer,
    f: FleetDep,
    bundle: Annotated[str | None, Query(pattern=DIGEST_RE)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    until: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    """Telemetry merged over devices and time: per bundle (model version), device, group
    (cohorts are groups or device lists) and window range."""
    return telemetry.summary(f, bundle, device, group, since, until)


@router.post(
    "/devices/{device_id}/commands",
    status_code=202,
    response_model=CommandPublic,
    responses=errors(400, 401, 403, 404, 409, 422, 429),
)
def issue_command(caller: Operator, f: FleetDep, device_id: str, body: CommandIn) -> dict[str, Any]:
    """Remote diagnostics: sign the command, send it to the (online) device, answer at once with
    status ``sent``; poll ``GET .../commands/{id}`` for the result. Audited; rate-limited per
    device and per operator token (429 with ``Retry-After``)."""
    check_device_id(device_id)
    args = {"lines": body.lines} if body.lines is not None else {}
    try:
        return commands.issue(f, device_id, body.name, args, caller.actor)
    except RateLimited as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None


@router.get("/devices/{device_id}/commands", response_model=Page[CommandPublic], responses=errors(400, 401, 404, 422))
def list_commands(_c: Viewer, f: FleetDep, device_id: str, limit: Limit = 20, offset: Offset = 0) -> dict[str, Any]:
    """The device's remote-diagnostics commands and results, newest first."""
    check_device_id(device_id)
    return commands.listing(f, device_id, limit, offset)


@router.get(
    "/devices/{device_id}/commands/{command_id}", response_model=CommandPublic, responses=errors(400, 401, 404, 422)
)
def get_command(_c: Viewer, f: FleetDep, device_id: str, command_id: str) -> dict[str, Any]:
    check_device_id(device_id)
    return commands.get(f, device_id, command_id)
