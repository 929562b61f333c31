"""Enrollment: trade a one-time hub token for this device's identity, then write its config.

``POST {hub}/api/v1/enroll {"token"}`` answers ``{"device_id", "broker", "mqtt": {"username",
"password"}, "root": "<root envelope JSON>"}``. The root must be self-signed by its own root
role (and, when the operator passes ``--root-sha256``, match that fingerprint exactly: that is
what makes first contact trustworthy over an unauthenticated channel) and not expired (a device
pinned to an expired root could verify nothing). Files are written 0600 and never overwritten
without ``force``; with ``group`` (``--group edgefleet``, what ``firmware_images/install.sh``
passes when it enrolls as root) they are 0640 and owned by that group, so the service user can
read its config and nobody else can.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import ProtocolError
from protocol.signing import load_root_unverified
from protocol.topics import check_device_id

from .errors import EnrollError, RootExpired
from .install import require_fresh_root


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    broker: str
    username: str
    password: str
    root: bytes

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.root).hexdigest()


def parse_answer(doc: Any, root_sha256: str | None, now: int) -> Enrollment:
    """Check the hub's answer (pure): fields present, device id valid, root self-signed, pinned
    and not expired at ``now``."""
    if not isinstance(doc, dict):
        raise EnrollError(f"hub answer is not a JSON object: {str(doc)[:80]!r}")
    try:
        mqtt = doc["mqtt"]
        e = Enrollment(
            check_device_id(str(doc["device_id"])),
            str(doc["broker"]),
            str(mqtt["username"]),
            str(mqtt["password"]),
            str(doc["root"]).encode(),
        )
    except (KeyError, TypeError) as exc:
        raise EnrollError(f"hub answer lacks field {exc}") from None
    except ProtocolError as exc:
        raise EnrollError(f"hub answer: {exc}") from None
    try:
        root = load_root_unverified(e.root)
    except ProtocolError as exc:
        raise EnrollError(f"hub sent a root that does not verify: {exc}") from None
    if root_sha256 is not None and e.root_sha256 != root_sha256.lower():
        raise EnrollError(f"root fingerprint {e.root_sha256} does not match the expected {root_sha256}")
    try:
        require_fresh_root(root, now)
    except RootExpired as exc:
        raise EnrollError(f"hub sent an expired root: {exc.detail}") from None
    return e


def render_config(e: Enrollment, root_path: Path, state_dir: Path, board: str, http_port: int) -> str:
    values: dict[str, Any] = {
        "device_id": e.device_id,
        "broker": e.broker,
        "state_dir": str(state_dir),
        "root": str(root_path),
        "board": board,
        "username": e.username,
        "password": e.password,
        "http_host": "127.0.0.1",
        "http_port": http_port,
        "telemetry_interval_s": 10,
        "edgetpu": "auto",
    }
    lines = ["# written by `edgefleet-agent enroll`; see firmware_images/agent.toml.example"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # JSON scalars are valid TOML here
    return "\n".join(lines) + "\n"


def request(hub: str, token: str, timeout: float = 15.0) -> Any:
    url = f"{hub.rstrip('/')}/api/v1/enroll"
    req = urllib.request.Request(
        url,
        data=json.dumps({"token": token}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read(1 << 20))
    except urllib.error.HTTPError as exc:
        raise EnrollError(f"{url}: HTTP {exc.code} {exc.read(500).decode('utf-8', 'replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnrollError(f"{url}: {exc}") from None


def group_id(name: str) -> int:
    """The id of group ``name`` (the service user's group; a number is taken as the id, for an
    installer writing into another root), or EnrollError naming it."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise EnrollError(f"group {name!r} does not exist (create the service user first)") from None


def _write_private(path: Path, data: bytes, force: bool, gid: int | None = None) -> None:
    """Write ``path`` atomically: 0600, or 0640 owned by group ``gid`` before any byte is in it."""
    if path.exists() and not force:
        raise EnrollError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        if gid is not None:
            try:
                os.fchown(f.fileno(), -1, gid)
            except OSError as exc:
                raise EnrollError(f"{path}: cannot give it to group id {gid} ({exc.strerror})") from None
            os.fchmod(f.fileno(), 0o640)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def enroll(
    hub: str,
    token: str,
    config: Path,
    state_dir: Path,
    board: str = "rpi4",
    http_port: int = 8780,
    root_sha256: str | None = None,
    force: bool = False,
    group: str | None = None,
) -> Enrollment:
    if config.exists() and not force:
        raise EnrollError(f"{config} exists; pass --force to replace it")
    gid = group_id(group) if group is not None else None  # before the token is spent
    e = parse_answer(request(hub, token), root_sha256, int(time.time()))
    root_path = config.resolve().parent / "root.json"
    _write_private(root_path, e.root, force, gid)
    _write_private(config, render_config(e, root_path, state_dir.resolve(), board, http_port).encode(), force, gid)
    return e
