"""`codec.loads` parses with orjson where that gives json's answer, and with json elsewhere: the
two paths must accept, refuse and return exactly the same for any document off the wire; and
`codec.loads_stored` (the hub's JSON columns) answers exactly what `json.loads` does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from protocol import codec
from protocol.errors import BadPayload

orjson = pytest.importorskip("orjson")


@pytest.fixture(autouse=True, scope="module")
def _orjson_as_the_hub_gives_it():
    before = (codec._fast_loads, codec._fast_error)
    codec.use_fast_loads(orjson.loads, orjson.JSONDecodeError)
    yield
    codec._fast_loads, codec._fast_error = before


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits too: orjson would make them floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=30
)


def _answer(data: bytes | str, parse: Any) -> tuple[str, str]:
    """What a parse gives: the value's repr (-0.0 and 0 told apart, key order kept), or the refusal."""
    try:
        return "ok", repr(parse(data, "doc"))
    except BadPayload as exc:
        return "refused", str(exc)[:9]  # both say "bad doc:"; the reason may be worded differently


def _same(data: bytes) -> None:
    assert _answer(data, codec.loads) == _answer(data, codec._loads_json)


@settings(max_examples=400, deadline=None)
@given(_VALUES, st.booleans(), st.booleans())
def test_any_document_parses_the_same_on_both_paths(value: Any, spaced: bool, ascii_only: bool) -> None:
    sep = (", ", ": ") if spaced else (",", ":")
    _same(json.dumps(value, separators=sep, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_refused_or_accepted_the_same_on_both_paths(data: bytes) -> None:
    _same(data)


@pytest.mark.parametrize(
    "data",
    [
        b"18446744073709551616",  # 2**64: orjson alone would answer a float
        b'{"n": -9223372036854775809}',
        b"[1e999]",
        b"NaN",
        b'{"a": "\\ud800"}',  # a lone escaped surrogate: json accepts it, orjson does not
        '{"a": 1}'.encode("utf-16"),  # json detects the encoding, orjson does not
        b"\xef\xbb\xbf{}",
        b"[" * 40 + b"]" * 40,  # deeper than MAX_DEPTH
        b'{"a": 1, "a": 2}',
        b'{"a": "x\ty"}',
        b"[0.30000000000000004, 4.9e-324, 1e308, -0.0, 9007199254740993]",
        b'{"min": 0.0012345678901234567, "sum": 1.0000000000000000000000000001}',  # long fractions: fast
        b"[0.0012345678901234567, 18446744073709551616]",  # ... and a long integer after one
        b"[1.0000000000000000000001e0000000000000000000005]",  # a long exponent
        b"[12345678901234567890.5]",  # a long integer part
    ],
)
def test_documents_where_the_parsers_differ_answer_as_json_did(data: bytes) -> None:
    _same(data)


def _plain_answer(data: bytes | str, parse: Any) -> tuple[str, str]:
    try:
        return "ok", repr(parse(data))
    except (ValueError, TypeError) as exc:  # json's own errors, message and all
        return type(exc).__name__, str(exc)


def _same_as_json(data: bytes) -> None:
    assert _plain_answer(data, codec.loads_stored) == _plain_answer(data, json.loads)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert _plain_answer(text, codec.loads_stored) == _plain_answer(text, json.loads)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.booleans())
def test_a_stored_column_reads_back_as_json_loads_reads_it(value: Any, ascii_only: bool) -> None:
    _same_as_json(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=32).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_stored_text_is_read_or_refused_as_json_loads_does(data: bytes) -> None:
    _same_as_json(data)


@pytest.mark.parametrize(
    "data",
    [
        b"18446744073709551616",
        b"[1e999]",
        b"NaN",
        b"[Infinity, -Infinity]",
        b'{"a": "\\ud800"}',
        '{"a": 1}'.encode("utf-16"),
        b"\xef\xbb\xbf{}",
        b'{"a": 1, "a": 2}',
        b"[0.30000000000000004, 4.9e-324, 1e308, -0.0, 9007199254740993]",
    ],
)
def test_stored_texts_where_the_parsers_differ_read_as_json_loads_does(data: bytes) -> None:
    _same_as_json(data)


def test_a_stored_str_with_a_lone_surrogate_reads_as_json_loads_does() -> None:
    assert codec.loads_stored('"\ud800"') == json.loads('"\ud800"')


@pytest.mark.parametrize(
    ("data", "fast"),
    [
        (b'{"min": 0.0012345678901234567}', True),  # a fraction's digits are no integer
        (b"[0.00123456789012345678901234, 0.5000000000000000000000001]", True),
        (b"[0.0012345678901234567, 9223372036854775808]", False),  # an integer after a fraction
        (b"9223372036854775808", False),
        (b"[-9223372036854775809]", False),
        (b"[12345678901234567890.5]", False),  # integer part
        (b"[1e0000000000000000005]", False),  # exponent: left to json (no case to win)
        (b'["1234567890123456789"]', False),  # in a string: left to json, which answers the same
    ],
)
def test_only_a_text_with_no_long_integer_goes_the_fast_way(data: bytes, fast: bool) -> None:
    assert codec._no_long_run(data) is fast


_LONG_FRACTIONS = st.builds(
    lambda whole, frac, exp: f"[{whole}.{frac}{exp}]".encode(),
    st.sampled_from(["0", "1", "3", "-0", "-2", "9007199254740992"]),
    st.text("0123456789", min_size=19, max_size=60),
    st.sampled_from(["", "e-5", "E+12", "e-300", "e300", "e-330"]),
)


@settings(max_examples=500, deadline=None)
@given(_LONG_FRACTIONS)
def test_a_long_fraction_the_fast_path_now_takes_parses_as_json_does(data: bytes) -> None:
    """Runs of 19 digits or more after a decimal point go the fast way (latencies under 10 ms):
    every such float must round to what json rounds it to, halfway cases included."""
    assert codec._no_long_run(data)  # every integer part here is shorter than 19 digits
    _same(data)
    _same_as_json(data)


def test_an_integer_past_64_bits_is_still_refused() -> None:
    with pytest.raises(BadPayload, match="does not fit 64 bits"):
        codec.loads(b'{"n": 18446744073709551616}', "doc")


def test_without_a_fast_parser_every_document_takes_json_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_fast_loads", None)
    assert codec.loads(b'{"a": [1, 2.5]}', "doc") == {"a": [1, 2.5]}
    with pytest.raises(BadPayload, match="not valid JSON"):
        codec.loads(b"[1e999]", "doc")


def test_the_hub_gives_protocol_orjson_at_its_parse_edge():
    import hub.ingest  # noqa: F401 - registers it

    assert codec._fast_loads is orjson.loads and codec._fast_error is orjson.JSONDecodeError
