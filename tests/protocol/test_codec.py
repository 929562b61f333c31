"""protocol.codec.loads: orjson's fast path (when installed) gives json's answer, or json's refusal."""

from __future__ import annotations

import json

import pytest

from protocol import codec
from protocol.errors import BadPayload

SAME = [
    b'{"a":1,"a":2}',
    b'{"x":"\\ud800"}',
    b'{"f":0.1,"g":-0.0,"h":1e308,"i":5e-324,"j":2.5E3,"k":1.7976931348623157e308}',
    b'[1,2,{"a":[]}]',
    b'"text"',
    b'{"max":9223372036854775807,"min":-9223372036854775808}',
    '{"é":1,"s":"\u2603"}',
    b'{"nested":' + b"[" * 30 + b"]" * 30 + b"}",
]
REFUSED = [
    b'{"a":1e999}',
    b'{"a":-1e999}',
    b'{"a":NaN}',
    b'{"a":-Infinity}',
    b'{"a":9223372036854775808}',
    b'{"a":123456789012345678901234567890}',
    b'{"a": 1}x',
    b"[" * 40 + b"]" * 40,
    b"{",
    b"\xff",
]


@pytest.mark.parametrize("text", SAME)
def test_a_tame_document_parses_as_json_parses_it(text: bytes | str) -> None:
    got = codec.loads(text, "doc")
    assert got == json.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(json.loads(text), sort_keys=True)  # types too (-0.0, ints)


@pytest.mark.parametrize("text", REFUSED)
def test_what_json_refuses_or_the_walk_refuses_is_refused_with_or_without_orjson(
    text: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadPayload) as fast:
        codec.loads(text, "doc")
    monkeypatch.setattr(codec, "orjson", None)
    with pytest.raises(BadPayload) as slow:
        codec.loads(text, "doc")
    assert str(fast.value) == str(slow.value)


def test_a_big_integer_is_never_read_as_a_float() -> None:
    """orjson reads 2**64 as 1.8e19: the fast path must never see such a text."""
    with pytest.raises(BadPayload, match="does not fit 64 bits"):
        codec.loads(b'{"counts":{"inferences":18446744073709551616}}', "telemetry")
