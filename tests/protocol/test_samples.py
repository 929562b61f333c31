"""protocol.samples: a hard example cut in chunks and put together again; what is refused."""

from __future__ import annotations

import json

import pytest

from protocol.errors import BadPayload
from protocol.samples import CHUNK_BYTES, Receipt, parse_receipt, parse_sample, split

B = "b" * 64


def test_an_input_splits_into_chunks_that_parse_back_to_the_same_bytes():
    data = bytes(range(256)) * (CHUNK_BYTES * 2 // 256 + 3)
    chunks = split("dev-1", "s" * 32, B, 100, "image/png", data, {"confidence": 0.2})
    assert [c.index for c in chunks] == [0, 1, 2] and {c.count for c in chunks} == {3}
    back = [parse_sample(c.to_bytes()) for c in chunks]
    assert back == chunks and b"".join(c.data for c in back) == data
    assert split("dev-1", "s" * 32, B, 100, "image/png", b"", {})[0].count == 1  # an empty input: one chunk


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"count": 5}, "count"),
        ({"index": 1}, "index"),
        ({"content_type": "text/html"}, "content type"),
        ({"data": "!!"}, "base64"),
        ({"sha256": "XYZ"}, "sha256"),
        ({"size": 10}, "holds"),
        ({"id": "a/b"}, "sample id"),
        ({"device": "../x"}, "device id"),
    ],
)
def test_a_chunk_that_does_not_add_up_is_refused_naming_the_field(change, named):
    chunk = split("dev-1", "s" * 32, B, 100, "image/jpeg", b"x" * 100, {})[0]
    doc = {**json.loads(chunk.to_bytes()), **change}
    with pytest.raises(BadPayload, match=named):
        parse_sample(json.dumps(doc).encode())


def test_a_receipt_round_trips_and_carries_a_refusal():
    r = Receipt("dev-1", "s" * 32, (2, 0), False)
    assert parse_receipt(r.to_bytes()) == Receipt("dev-1", "s" * 32, (0, 2), False)
    no = Receipt("dev-1", "s" * 32, refused="bundle b... is not known")
    assert parse_receipt(no.to_bytes()).refused.startswith("bundle")


def test_fields_a_newer_peer_adds_to_a_chunk_or_a_receipt_are_kept_when_written_back():
    (chunk,) = split("dev-1", "abcdef0123", "a" * 64, 1000, "image/png", b"\x89PNG" + b"x" * 50, {})
    newer = {**json.loads(chunk.to_bytes()), "region": "eu-1"}
    parsed = parse_sample(json.dumps(newer).encode())
    assert json.loads(parsed.to_bytes())["region"] == "eu-1" and parsed == chunk
    r = {**json.loads(Receipt("dev-1", "abcdef0123", (0,), False).to_bytes()), "retry_after_s": 30}
    back = parse_receipt(json.dumps(r).encode())
    assert json.loads(back.to_bytes()) == r and back == Receipt("dev-1", "abcdef0123", (0,), False)
