"""JSON helpers shared by every wire document: canonical bytes and typed field access.

Canonical JSON = UTF-8, sorted keys, no insignificant whitespace, no NaN/Infinity. Signed
payloads are these bytes; they are shipped unchanged and verified before they are parsed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Set as AbstractSet
from typing import Any, TypeVar

from .errors import BadPayload

T = TypeVar("T")

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32  # objects/arrays inside each other; our deepest document has 5
MAX_INT = 2**63 - 1  # every integer must fit a signed 64-bit column (SQLite, PostgreSQL)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):  # 1e999 parses as inf: JSON has no such number
        raise ValueError(f"number {text[:40]} is out of range (not a finite float)")
    return value


# 2**63 has 19 digits: a text without a run of 19 digits (but fractions) holds no integer too big for 64 bits
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


def _no_long_run(raw: bytes) -> bool:
    """No run of 19 digits but after a decimal point: the text holds no integer that may not fit
    64 bits. (A fraction's digits are no integer: ``0.0012345678901234567``, a latency, has a run
    of 19 and parses to the same float on either path.)"""
    t = raw.translate(_DIGITS_AS_ZERO)
    at = t.find(_LONG_RUN)  # the first such run starts here (a digit before it would start one)
    while at >= 0:
        if at == 0 or raw[at - 1] != 0x2E:  # not after "."
            return False
        end = t.find(b" ", at)  # every non-digit became a space
        if end < 0:
            return True
        at = t.find(_LONG_RUN, end)
    return True


def check_tree(obj: Any, what: str, max_depth: int = MAX_DEPTH, data: bytes | str | None = None) -> None:
    """Every document off the wire: nesting at most ``max_depth``, integers within 64 bits.
    One bad number or a deep nest in a device's message must be a :class:`BadPayload` for that
    message, not an overflow in the database or a RecursionError that takes a batch with it.

    Given the raw ``data``, the walk is skipped when the text itself proves both (few enough
    brackets, no run of 19 digits): the hub parses thousands of messages a second."""
    if data is not None:
        raw = data.encode() if isinstance(data, str) else data
        if raw.count(b"[") + raw.count(b"{") <= max_depth and _no_long_run(raw):
            return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise BadPayload(what, f"nested deeper than {max_depth} levels")
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif type(child) is int and not -MAX_INT - 1 <= child <= MAX_INT:
                raise BadPayload(what, f"integer {str(child)[:40]} does not fit 64 bits")


# one decoder for every document (json.loads with hooks builds a decoder and its scanner per call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


_fast_loads: Callable[[bytes | bytearray], Any] | None = None  # use_fast_loads
_fast_error: type[Exception] = ValueError


def use_fast_loads(parse: Callable[[bytes | bytearray], Any], error: type[Exception]) -> None:
    """Give :func:`loads` a faster parser for the documents where its answer is json's; ``error``
    is what it raises on a document it refuses. The hub gives orjson's (``hub.ingest``); protocol
    itself imports nothing outside the standard library and cryptography
    (tests/test_architecture.py), and without one every document takes json's path."""
    global _fast_loads, _fast_error
    _fast_loads, _fast_error = parse, error


def _fast(data: bytes | bytearray) -> Any:
    """The fast parser's answer for ``data`` where it is known to equal :data:`_DECODER`'s, else
    ``_SLOW``. Past 64 bits orjson turns an integer into a float, so a text with a run of 19 digits
    is not given to it; whatever it refuses (also what json accepts: UTF-16, a lone escaped
    surrogate) takes json's path, which answers as it always did. orjson is ~4x faster on a
    telemetry window (the hub parses thousands a second); tests/protocol/test_codec.py holds both
    paths equal."""
    if _fast_loads is None or not _no_long_run(bytes(data)):
        return _SLOW
    try:
        return _fast_loads(data)
    except _fast_error:
        return _SLOW


_SLOW = object()


def loads_stored(data: bytes | str) -> Any:
    """What ``json.loads(data)`` answers, refusals and all, through the fast parser where that
    answer is known to be the same (:func:`_fast`): for JSON the process wrote itself with
    json.dumps, such as the hub's JSON columns (``hub.db``), which it reads back by the million."""
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:  # a lone surrogate, which json.dumps never writes unescaped
        return json.loads(data)
    obj = _fast(raw)
    return json.loads(data) if obj is _SLOW else obj


def loads(data: bytes | str, what: str) -> Any:
    """Any JSON value off the wire, or :class:`BadPayload` naming ``what`` and the problem:
    no NaN/Infinity (nor 1e999), integers within 64 bits, nesting within ``MAX_DEPTH``."""
    if isinstance(data, (bytes, bytearray)):
        obj = _fast(data)
        if obj is not _SLOW:  # no integer past 64 bits (no run of 19 digits); nesting as below
            if data.count(b"[") + data.count(b"{") > MAX_DEPTH:
                check_tree(obj, what)
            return obj
    return _loads_json(data, what)


def _loads_json(data: bytes | str, what: str) -> Any:
    try:
        if isinstance(data, (bytes, bytearray)):  # as json.loads decodes them
            text = data.decode(json.detect_encoding(data), "surrogatepass")
        elif isinstance(data, str):
            text = data
        else:
            raise TypeError(f"a JSON document must be str or bytes, not {type(data).__name__}")
        if text.startswith("\ufeff"):  # what json.loads refuses too
            raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        obj = _DECODER.decode(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadPayload(what, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise BadPayload(what, f"nested deeper than {MAX_DEPTH} levels") from None
    check_tree(obj, what, data=data)
    return obj


def load_object(data: bytes | str, what: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """Parse bytes as a JSON object, or raise :class:`BadPayload` naming ``what``."""
    if len(data) > max_bytes:
        raise BadPayload(what, f"{len(data)} bytes exceeds the limit of {max_bytes}")
    obj = loads(data, what)
    if not isinstance(obj, dict):
        raise BadPayload(what, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def field(
    obj: dict[str, Any],
    key: str,
    kind: type[T] | tuple[type, ...],
    what: str,
    default: Any = ...,
    allow_none: bool = False,
) -> T:
    """Typed access: ``obj[key]`` must be of ``kind``; missing uses ``default`` or raises."""
    if key not in obj:
        if default is ...:
            raise BadPayload(what, f"missing field {key!r}")
        return default  # type: ignore[no-any-return]
    value = obj[key]
    if value is None and allow_none:
        return value  # type: ignore[return-value]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass; never accept it where a number is expected
    if isinstance(value, bool) and bool not in kinds:
        raise BadPayload(what, f"field {key!r} must be {_names(kinds)}, got {value!r}")
    if float in kinds and isinstance(value, int):
        return value  # type: ignore[return-value]
    if not isinstance(value, kinds):
        raise BadPayload(what, f"field {key!r} must be {_names(kinds)}, got {value!r:.80}")
    return value  # type: ignore[return-value]


def nonneg_int(obj: dict[str, Any], key: str, what: str, default: Any = ...) -> int:
    value = field(obj, key, int, what, default)
    if value < 0:
        raise BadPayload(what, f"field {key!r} must be >= 0, got {value}")
    return value


def int_list(obj: dict[str, Any], key: str, what: str, default: Any = ...) -> list[int]:
    values = field(obj, key, list, what, default)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BadPayload(what, f"field {key!r} must hold ints >= 0, found {v!r:.40}")
    return values


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def extra_fields(obj: dict[str, Any], known: AbstractSet[str]) -> dict[str, Any]:
    """Fields a newer peer sent that this version does not know: kept, never dropped."""
    return {k: v for k, v in obj.items() if k not in known}
