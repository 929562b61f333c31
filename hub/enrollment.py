"""Enrollment: one-time tokens a device trades for its broker identity and the pinned root, and
the broker's passwd/ACL/listener files written from the registry (see hub.credentials)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select

from protocol.errors import BadPayload
from protocol.topics import check_device_id

from . import credentials
from .errors import Denied, Invalid
from .fleet import Fleet
from .models import (
    Device,
    EnrollToken,
)

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def create(
    fleet: Fleet, device_id: str, group: str = "", tags: Sequence[str] = (), actor: str = "api"
) -> dict[str, Any]:
    """A one-time token the device trades for its identity (see hub.credentials)."""
    try:
        check_device_id(device_id)
    except BadPayload as exc:
        raise Invalid("device id", str(exc)) from None
    token = credentials.new_secret()
    now = fleet.clock()
    with fleet.session() as s:
        s.add(
            EnrollToken(
                token_hash=credentials.token_hash(token),
                device=device_id,
                group=group,
                tags=list(dict.fromkeys(tags)),
                created=now,
                expires=now + fleet.config.enroll_ttl,
                created_by=actor,
            )
        )
        fleet.audit(s, actor, "device.enroll", device_id, group=group, tags=list(tags))
        s.commit()
    return {"device_id": device_id, "token": token, "expires": now + fleet.config.enroll_ttl}


def redeem(fleet: Fleet, token: str) -> dict[str, Any]:
    now = fleet.clock()
    password = credentials.new_secret()
    with fleet.session() as s:
        row = s.get(EnrollToken, credentials.token_hash(token))
        if row is None or row.used or row.expires <= now:
            raise Denied("enrollment token is unknown, already used or expired")
        row.used = now
        d = s.get(Device, row.device) or Device(id=row.device, created=now)
        d.enrolled = True
        d.mqtt_username = row.device
        d.mqtt_password_hash = credentials.password_hash(password)
        if row.group:
            d.group = row.group
        if row.tags:
            d.tags = list(row.tags)
        s.add(row)
        s.add(d)
        fleet.audit(s, f"device:{row.device}", "device.enrolled", row.device)
        s.commit()
        device_id = row.device
    write_broker_auth(fleet)
    return {
        "device_id": device_id,
        "broker": fleet.config.broker_for_devices,
        "mqtt": {"username": device_id, "password": password},
        "root": fleet.keys.root_bytes.decode(),
    }


def write_broker_auth(fleet: Fleet) -> bool:
    """Rewrite passwd + acl from the registry and SIGHUP the broker. False if not configured."""
    if fleet.config.mqtt_auth_dir is None:
        return False
    url = fleet.config.broker_url
    with fleet.session() as s:
        users = [
            (d.mqtt_username, d.mqtt_password_hash)
            for d in s.exec(select(Device).where(col(Device.mqtt_password_hash).is_not(None))).all()
            if d.mqtt_username and d.mqtt_password_hash
        ]
    if url.username and url.password:
        users.append((url.username, credentials.password_hash(url.password)))
    # over TLS the listener is the operator's (its certificates are not the hub's to name):
    # no edgefleet.conf, whose plain listener would take the TLS port
    conf = (
        None
        if url.tls
        else credentials.render_broker_conf(
            fleet.config.mqtt_auth_dir, fleet.config.chunk_size, url.port, url.host if url.host in LOOPBACK else None
        )
    )
    credentials.write_files(
        fleet.config.mqtt_auth_dir, credentials.render_passwd(users), credentials.render_acl(url.username), conf
    )
    reloaded = credentials.reload_broker(fleet.config.broker_pid_file)
    log.info("broker credentials written for %d users%s", len(users), " (broker reloaded)" if reloaded else "")
    return True
