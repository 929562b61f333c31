"""Remote diagnostics on the device: what to do with a command, and what may leave the device.

Pure decisions (no I/O, ``now`` passed in); the daemon runs them and :mod:`agent.diagnostics`
does the work.

:func:`decide` turns the bytes off ``ef/v1/dev/{device}/command`` into one of:

* :class:`Run`: verified (:func:`protocol.commands.verify_command`), for this device, fresh,
  never seen, a known name: remember its id (:func:`remember`), run it, answer;
* :class:`Answer`: signed but refused (wrong device, expired, unknown name): answer ``refused``
  under the signed id with the reason, run nothing;
* :class:`Ignore`: nothing to answer: a bad signature or a malformed payload (no id can be
  trusted: answering a forged id could fail the hub's real command) or a replay of an id already
  answered (a QoS 1 redelivery).

Seen ids are kept until their command expires (a replay after that fails the expiry check), and
at most :data:`MAX_SEEN`; the daemon persists them, so a restart does not forget them.

Redaction (:func:`redact`, :func:`redact_config`): nothing secret leaves the device in a log
line or a diagnostics bundle. Removed: the agent's own secrets wherever they appear (MQTT password,
cloud API key), ``Authorization``/``Bearer`` values, ``password``/``token``/``secret``/``api_key``
assignments (``k=v``, ``k: v``, JSON ``"k": "v"``), credentials in URLs (``scheme://user:pass@``)
and PEM private key blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from protocol.commands import MAX_RESULT_BYTES, Command, Refused, Result, verify_command
from protocol.errors import BadPayload, Reason, VerificationError
from protocol.signing import Root

MAX_SEEN = 1000
REDACTED = "[REDACTED]"
LOG_MAX_LINES = 500
LOG_MAX_BYTES = 64 * 1024
LOG_LINE_MAX_CHARS = 2000


@dataclass(frozen=True)
class Run:
    command: Command


@dataclass(frozen=True)
class Answer:
    result: Result


@dataclass(frozen=True)
class Ignore:
    why: str


Decision = Run | Answer | Ignore


def decide(env_bytes: bytes, root: Root, device: str, seen: Mapping[str, int], now: int) -> Decision:
    try:
        cmd = verify_command(env_bytes, root, device, seen, now)
    except Refused as exc:
        if exc.reason is Reason.REPLAYED:
            return Ignore(str(exc))
        c = exc.command
        return Answer(Result(c.id, device, c.name, now, "refused", exc.reason.value, str(exc)[:2000]))
    except (VerificationError, BadPayload) as exc:
        return Ignore(f"command refused, not answered (no trustworthy id): {exc}")
    return Run(cmd)


def remember(seen: Mapping[str, int], cid: str, expires: int, now: int) -> dict[str, int]:
    """``seen`` with ``cid`` (kept until ``expires``), expired ids dropped, at most ``MAX_SEEN``
    (the ones expiring soonest go first)."""
    out = {k: e for k, e in seen.items() if e > now}
    out[cid] = expires
    if len(out) > MAX_SEEN:
        out = dict(sorted(out.items(), key=lambda kv: kv[1])[-MAX_SEEN:])
    return out


# ---- redaction -------------------------------------------------------------------------------
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_URL_CREDS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@")
_AUTH = re.compile(r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token|digest)\s+)?[^\s\"',;]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_SECRET_KEYS = r"(?:[a-z0-9_-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key))"
_ASSIGN = re.compile(rf"(?i)(\b{_SECRET_KEYS}[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s\"',;&}}]+)")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret replaced by ``[REDACTED]`` (rules in the module docstring)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    text = _PEM.sub("[REDACTED PRIVATE KEY]", text)
    text = _URL_CREDS.sub(rf"\1{REDACTED}@", text)
    text = _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)

    def assign(m: re.Match[str]) -> str:
        value = m.group(2)
        if value == REDACTED or value.strip("\"'") == REDACTED:
            return m.group(0)
        quote = value[0] if value[:1] in ("'", '"') else ""
        return f"{m.group(1)}{quote}{REDACTED}{quote}"

    return _ASSIGN.sub(assign, text)


_SECRET_NAME = re.compile(rf"(?i)^{_SECRET_KEYS}$")


def redact_config(doc: Mapping[str, Any], secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """A config as plain data with secret-named keys' values replaced and every string redacted."""
    keep = tuple(secrets)
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if _SECRET_NAME.match(str(k)) and v is not None:
            out[k] = REDACTED
        elif isinstance(v, Mapping):
            out[k] = redact_config(v, keep)
        elif isinstance(v, str):
            out[k] = redact(v, keep)
        elif isinstance(v, (list, tuple)):
            out[k] = [redact(x, keep) if isinstance(x, str) else x for x in v]
        else:
            out[k] = v
    return out


def tail(lines: Sequence[str], want: int, max_bytes: int) -> tuple[list[str], int]:
    """The last ``want`` lines that fit ``max_bytes`` (UTF-8, a newline each) and how many of
    the ``want`` newest were left out to fit."""
    picked: list[str] = []
    size = 0
    newest = list(lines[-want:]) if want > 0 else []
    for line in reversed(newest):
        size += len(line.encode("utf-8")) + 1
        if size > max_bytes:
            break
        picked.append(line)
    picked.reverse()
    return picked, len(newest) - len(picked)


def fit(result: Result, max_bytes: int = MAX_RESULT_BYTES) -> Result:
    """``result`` as it may be sent: at most ``max_bytes`` encoded. Log lines are dropped oldest
    first (``truncated`` counts them: JSON escapes can make a line of control characters six
    times its size); any other answer too large becomes ``failed`` naming its size, never a
    message the hub would refuse unread."""
    size = len(result.to_bytes())
    if size <= max_bytes:
        return result
    lines = result.body.get("lines")
    if isinstance(lines, list):
        kept = list(lines)
        while kept:
            kept = kept[len(kept) // 4 + 1 :]  # the oldest quarter (at least one line) goes
            body = {
                **result.body,
                "lines": kept,
                "truncated": int(result.body.get("truncated", 0)) + len(lines) - len(kept),
            }
            trimmed = replace(result, body=body)
            if len(trimmed.to_bytes()) <= max_bytes:
                return trimmed
    return replace(
        result,
        status="failed",
        reason=Reason.INTERNAL.value,
        detail=f"{result.name} answer of {size} bytes exceeds the {max_bytes}-byte result limit",
        body={},
    )
