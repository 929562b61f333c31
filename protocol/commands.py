"""Remote diagnostics: signed commands (hub -> agent) and their results (agent -> hub).

Topics: ``ef/v1/dev/{device}/command`` (QoS 1, never retained: a command is for the agent that is
online now) and ``ef/v1/dev/{device}/result``.

Command (signed, payload type ``command``; the hub's online key, i.e. the root's ``targets``
role, signs it like a desired document)::

    {"_type": "command", "v": 1, "id": "<8-64 of [A-Za-z0-9_-]>", "device": "<id>",
     "name": "logs" | "selftest" | "restart" | "diagnostics",
     "issued": unix_s, "expires": unix_s, "args": {...}}

``args`` of ``logs``: ``{"lines": 1..MAX_LOG_LINES}`` (default :data:`DEFAULT_LOG_LINES`); the
other commands take none. Unknown fields are kept (``extra``).

Gatekeeper (:func:`verify_command`, pure, ``now`` passed in), in this order:

1. the envelope's bytes are verified against the pinned root's ``targets`` role before anything
   is parsed (``bad_signature`` / ``unknown_key`` / ``threshold_not_met``);
2. the payload parses (``malformed``);
3. it names this device (``wrong_device``);
4. ``expires`` is in the future and at most :data:`MAX_TTL_S` after ``issued`` (``expired``);
5. its id was not seen before (``replayed``): the caller keeps the ids of commands it accepted
   until they expire, so a recorded command cannot be played again;
6. the name is one this version knows (``unknown_command``, naming it and the known ones).

Steps 1-2 fail without a trustworthy id, so the agent answers nothing (the hub's command
expires unanswered); from step 3 on the id is signed and the agent answers ``refused`` with the
reason, except a replay, which it ignores (a QoS 1 redelivery of a command it already answered).

Result (unsigned: the broker's ACL lets only the device itself write its result topic)::

    {"v": 1, "id": "<command id>", "device": "<id>", "name": "<command name>", "ts": unix_s,
     "status": "ok" | "failed" | "refused", "reason": "<protocol.errors.Reason>",
     "detail": "<one line, <= 2000 chars>", "body": {...}}

A result is at most :data:`MAX_RESULT_BYTES` encoded (the agent trims what it sends to fit;
``logs`` drops its oldest lines and says how many in ``body.truncated``), well under the
protocol's 256 KiB message limit, so a result is never cut into parts.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass, field as dc_field
from typing import Any

from .codec import canonical, extra_fields, field, load_object, nonneg_int
from .errors import BadPayload, Reason, VerificationError
from .signing import Envelope, Root, SigningKey, seal
from .topics import check_device_id

SCHEMA = 1
NAMES = ("logs", "selftest", "restart", "diagnostics")
STATUSES = ("ok", "failed", "refused")
MAX_TTL_S = 3600  # a command is answered now or never: an hour bounds what a replay could do
MAX_RESULT_BYTES = 192 * 1024
MAX_COMMAND_BYTES = 16 * 1024
MAX_LOG_LINES = 500
DEFAULT_LOG_LINES = 200
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def check_command_id(cid: str) -> str:
    if not isinstance(cid, str) or not _ID.match(cid):
        raise BadPayload("command id", f"{cid!r} must be 8-64 chars of [A-Za-z0-9_-]")
    return cid


@dataclass(frozen=True)
class Command:
    id: str
    device: str
    name: str
    issued: int
    expires: int
    args: dict[str, Any] = dc_field(default_factory=dict, hash=False)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def signed_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "_type": "command",
                "v": SCHEMA,
                "id": self.id,
                "device": self.device,
                "name": self.name,
                "issued": self.issued,
                "expires": self.expires,
                "args": self.args,
            }
        )
        return doc

    def seal(self, keys: list[SigningKey]) -> bytes:
        return seal("command", self.signed_dict(), keys).to_bytes()

    @property
    def log_lines(self) -> int:
        """``args.lines`` of a ``logs`` command, checked by :func:`parse_command_payload`."""
        return int(self.args.get("lines", DEFAULT_LOG_LINES))


_COMMAND_KNOWN = {"_type", "v", "id", "device", "name", "issued", "expires", "args"}


def parse_command_payload(payload: bytes) -> Command:
    """The signed payload's bytes -> :class:`Command`. Any name of the right shape parses: an
    unknown one is refused by :func:`verify_command` with its signed id, so it can be answered."""
    what = "command"
    obj = load_object(payload, what, MAX_COMMAND_BYTES)
    if field(obj, "v", int, what) < 1:
        raise BadPayload(what, f"schema version {obj['v']} is invalid")
    if obj.get("_type") != "command":
        raise BadPayload(what, f"_type must be 'command', got {obj.get('_type')!r}")
    name = field(obj, "name", str, what)
    if not _NAME.match(name):
        raise BadPayload(what, f"name {name[:40]!r} must be 1-32 chars of [a-z0-9_], starting with a letter")
    args = field(obj, "args", dict, what, {})
    if "lines" in args:
        lines = field(args, "lines", int, "command args")
        if not 1 <= lines <= MAX_LOG_LINES:
            raise BadPayload("command args", f"lines must be 1..{MAX_LOG_LINES}, got {lines}")
    return Command(
        id=check_command_id(field(obj, "id", str, what)),
        device=check_device_id(field(obj, "device", str, what)),
        name=name,
        issued=nonneg_int(obj, "issued", what),
        expires=nonneg_int(obj, "expires", what),
        args=args,
        extra=extra_fields(obj, _COMMAND_KNOWN),
    )


class Refused(VerificationError):
    """A command whose signature verified but that must not run; ``command`` is the signed
    command, so the refusal can be answered under its id."""

    def __init__(self, reason: Reason, detail: str, command: Command) -> None:
        super().__init__(reason, detail)
        self.command = command


def verify_command(env_bytes: bytes, root: Root, device: str, seen: Container[str], now: int) -> Command:
    """Gatekeeper for the agent (rules in the module docstring). Raises
    :class:`~protocol.errors.VerificationError` / :class:`~protocol.errors.BadPayload` before
    the id can be trusted, :class:`Refused` after."""
    if len(env_bytes) > MAX_COMMAND_BYTES:
        raise BadPayload("command envelope", f"{len(env_bytes)} bytes exceeds the limit of {MAX_COMMAND_BYTES}")
    env = Envelope.parse(env_bytes, "command envelope")
    cmd = parse_command_payload(root.verify(env, "targets", "command"))
    if cmd.device != device:
        raise Refused(Reason.WRONG_DEVICE, f"command {cmd.id} is for {cmd.device!r}, this is {device!r}", cmd)
    if cmd.expires <= now:
        raise Refused(Reason.EXPIRED, f"command {cmd.id} expired at {cmd.expires}, now {now}", cmd)
    if cmd.expires - cmd.issued > MAX_TTL_S:
        raise Refused(
            Reason.EXPIRED,
            f"command {cmd.id} is valid {cmd.expires - cmd.issued} s; at most {MAX_TTL_S} s is accepted",
            cmd,
        )
    if cmd.id in seen:
        raise Refused(Reason.REPLAYED, f"command {cmd.id} was already accepted", cmd)
    if cmd.name not in NAMES:
        raise Refused(Reason.UNKNOWN_COMMAND, f"unknown command {cmd.name!r}; this agent knows {', '.join(NAMES)}", cmd)
    return cmd


@dataclass(frozen=True)
class Result:
    id: str
    device: str
    name: str
    ts: int
    status: str
    reason: str = Reason.OK.value
    detail: str = ""
    body: dict[str, Any] = dc_field(default_factory=dict, hash=False)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "v": SCHEMA,
                "id": self.id,
                "device": self.device,
                "name": self.name,
                "ts": self.ts,
                "status": self.status,
                "reason": self.reason,
                "detail": self.detail,
                "body": self.body,
            }
        )
        return doc

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict())


_RESULT_KNOWN = {"v", "id", "device", "name", "ts", "status", "reason", "detail", "body"}


def parse_result(data: bytes) -> Result:
    what = "command result"
    obj = load_object(data, what, MAX_RESULT_BYTES)
    if field(obj, "v", int, what) < 1:
        raise BadPayload(what, f"schema version {obj['v']} is invalid")
    status = field(obj, "status", str, what)
    if status not in STATUSES:
        raise BadPayload(what, f"status must be one of {STATUSES}, got {status!r:.40}")
    reason = field(obj, "reason", str, what, Reason.OK.value)
    if reason not in {r.value for r in Reason}:
        raise BadPayload(what, f"unknown reason code {reason!r:.40}")
    name = field(obj, "name", str, what)
    if not _NAME.match(name):
        raise BadPayload(what, f"name {name[:40]!r} must be 1-32 chars of [a-z0-9_]")
    return Result(
        id=check_command_id(field(obj, "id", str, what)),
        device=check_device_id(field(obj, "device", str, what)),
        name=name,
        ts=nonneg_int(obj, "ts", what),
        status=status,
        reason=reason,
        detail=field(obj, "detail", str, what, "")[:2000],
        body=field(obj, "body", dict, what, {}),
        extra=extra_fields(obj, _RESULT_KNOWN),
    )


__all__ = [
    "Command",
    "DEFAULT_LOG_LINES",
    "MAX_LOG_LINES",
    "MAX_RESULT_BYTES",
    "MAX_TTL_S",
    "NAMES",
    "Refused",
    "Result",
    "check_command_id",
    "parse_command_payload",
    "parse_result",
    "verify_command",
]
