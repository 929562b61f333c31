"""Per-device broker credentials: Mosquitto password and ACL files, and enrollment tokens.

Enrollment: an operator asks for a one-time token for a device id (``edgefleet-hub devices
enroll``); the device trades it once at ``POST /api/v1/enroll`` for its MQTT username and
password and the pinned trust root. Only the token's SHA-256 is stored.

The hub renders the whole password file (Mosquitto ``$7$`` PBKDF2-SHA512 lines, as
``mosquitto_passwd`` writes them) and the ACL file from the registry, writes them atomically
and sends the broker SIGHUP (it re-reads both). ACL (``%u`` = the authenticated username,
which is the device id; the client-chosen client id is never trusted)::

    user <hub>                      topic readwrite ef/v1/#
    pattern write ef/v1/dev/%u/{status,report,telemetry,fetch,result,sample}
    pattern read  ef/v1/dev/%u/{desired,ack,command,sampled}
    pattern read  ef/v1/bundle/+/chunk/+, ef/v1/bundle/+/delta/+/chunk/+,
                  ef/v1/bundle/+/plan, ef/v1/bundle/+/manifest and ef/v1/root

so a device can publish only on its own topics (MQTT v5 PUBACK 135 otherwise) and read only
its own desired state, acks and commands, bundle chunks and the root: it can neither read
another device's commands nor answer them in its name (its results go on its own topic only).

Beside them the hub writes ``edgefleet.conf``, the broker listener the two files need, for
the operator's ``mosquitto.conf`` to ``include_dir``: the hub's broker port (bound to loopback
when the hub reaches the broker there), no anonymous clients, the files, the client id
replaced by the username (otherwise a device connecting with another device's
client id knocks it off and takes over its session), a packet-size limit, and a per-session
queue long enough for the largest archive's chunks (:func:`max_queued_messages`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
from collections.abc import Iterable
from pathlib import Path

from .store import MAX_ARCHIVE_CHUNKS

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
DEVICE_WRITE = ("status", "report", "telemetry", "fetch", "result", "sample")
DEVICE_READ = ("desired", "ack", "command", "sampled")


def new_secret(nbytes: int = 24) -> str:
    """A URL-safe random secret that never starts with ``-``: enrollment tokens are pasted
    after ``--token`` on a command line, where argparse would take ``-x...`` for an option
    (one token in 64 did, and ``edgefleet-agent enroll`` failed with "expected one argument")."""
    while True:
        secret = secrets.token_urlsafe(nbytes)
        if not secret.startswith("-"):
            return secret


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def password_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(12)
    dig = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(dig).decode()}"


def check_password(password: str, hashed: str) -> bool:
    _, alg, it, salt, dig = hashed.split("$")
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(it), 64)
    return alg == "7" and secrets.compare_digest(base64.b64encode(got).decode(), dig)


def render_passwd(users: Iterable[tuple[str, str]]) -> str:
    """``(username, $7$ hash)`` pairs -> password file text."""
    return "".join(f"{u}:{h}\n" for u, h in sorted(users))


def render_acl(hub_user: str | None) -> str:
    lines = ["# written by the edgefleet hub; edits are overwritten", ""]
    if hub_user:
        lines += [f"user {hub_user}", "topic readwrite ef/v1/#", ""]
    lines += ["# every other user is a device; %u is its authenticated username (= device id)"]
    lines += [f"pattern write ef/v1/dev/%u/{k}" for k in DEVICE_WRITE]
    lines += [f"pattern read ef/v1/dev/%u/{k}" for k in DEVICE_READ]
    lines += [
        "pattern read ef/v1/bundle/+/chunk/+",
        "pattern read ef/v1/bundle/+/delta/+/chunk/+",
        "pattern read ef/v1/bundle/+/plan",
        "pattern read ef/v1/bundle/+/manifest",
        "pattern read ef/v1/root",
        "",
    ]
    return "\n".join(lines)


MIN_PACKET_BYTES = 1024 * 1024  # status/report/telemetry are <= 256 KiB (protocol.messages)


def max_packet_bytes(chunk_size: int) -> int:
    """The largest MQTT packet the fleet sends: a bundle chunk plus topic and headers."""
    return max(MIN_PACKET_BYTES, chunk_size + 64 * 1024)


QUEUED_BESIDE_CHUNKS = 1000  # desired documents, acks and commands a session may queue beside a download


def max_queued_messages() -> int:
    """The per-session queue a download needs: every chunk of the largest archive the hub cuts
    (:data:`hub.store.MAX_ARCHIVE_CHUNKS`) plus what else the device is sent meanwhile. The
    broker's default (1,000) drops the rest of a retained replay: a device then gets the tail of
    a bundle over 1,000 chunks only through repair requests. The queue holds references to the
    one stored copy of each retained chunk, not copies."""
    return MAX_ARCHIVE_CHUNKS + QUEUED_BESIDE_CHUNKS


def render_broker_conf(directory: Path, chunk_size: int, port: int, bind: str | None) -> str:
    """A listener section: ``use_username_as_clientid`` belongs to the listener above it, so the
    file opens its own (a TLS listener instead: copy the lines below ``listener`` after it)."""
    d = directory.resolve()
    return "\n".join(
        [
            "# written by the edgefleet hub; edits are overwritten. In mosquitto.conf (and no other",
            f"# listener on port {port}):  include_dir {d}",
            f"listener {port}{' ' + bind if bind else ''}",
            "allow_anonymous false",
            f"password_file {d / 'passwd'}",
            f"acl_file {d / 'acl'}",
            "# a client's id is its username: no device can take over another's session",
            "use_username_as_clientid true",
            f"max_packet_size {max_packet_bytes(chunk_size)}",
            "# a download queues every chunk of its bundle (the broker drops what does not fit)",
            f"max_queued_messages {max_queued_messages()}",
            "",
        ]
    )


def write_files(directory: Path, passwd: str, acl: str, conf: str | None = None) -> tuple[Path, Path]:
    """Atomic rewrite. New files are 0640; an existing file keeps its mode and group, so an
    operator can ``chgrp mosquitto`` them once (the broker reads them after dropping root)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    files = [("passwd", passwd), ("acl", acl)] + ([("edgefleet.conf", conf)] if conf is not None else [])
    for name, text in files:
        path = directory / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(text)
        if path.exists():
            st = path.stat()
            os.chmod(tmp, st.st_mode & 0o777)
            if st.st_gid != tmp.stat().st_gid:
                try:
                    os.chown(tmp, -1, st.st_gid)
                except PermissionError:
                    pass
        else:
            os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        out.append(path)
    return out[0], out[1]


def reload_broker(pid_file: Path | None) -> bool:
    """SIGHUP the broker whose pid is in ``pid_file``; False if there is none to signal."""
    if pid_file is None or not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True
