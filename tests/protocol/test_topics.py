from __future__ import annotations

import pytest

from protocol.errors import BadPayload
from protocol.topics import Kind, Topic, chunk_filter, device_filter


def test_device_topics_round_trip():
    for kind in (Kind.STATUS, Kind.DESIRED, Kind.REPORT, Kind.TELEMETRY, Kind.ACK, Kind.FETCH):
        t = Topic.for_device(kind, "pi-7")
        assert Topic.parse(str(t)) == t


def test_chunk_and_root_topics_round_trip():
    t = Topic.chunk("0" * 64, 12)
    assert str(t).endswith("/chunk/12") and Topic.parse(str(t)) == t
    assert Topic.parse("ef/v1/root") == Topic.root()
    assert device_filter(Kind.STATUS) == "ef/v1/dev/+/status"
    assert chunk_filter("0" * 64).endswith("/chunk/+")


@pytest.mark.parametrize(
    "topic,needle",
    [
        ("ef/v2/dev/a/status", "does not start with ef/v1/"),
        ("ef/v1/dev/a/dance", "unknown kind 'dance'"),
        ("ef/v1/dev/a+b/status", "bad device id"),
        ("ef/v1/bundle/xyz/chunk/1", "not 64 lowercase hex"),
        ("ef/v1/bundle/" + "0" * 64 + "/chunk/-1", "is not a number"),
        ("ef/v1/other", "matches no protocol v1 topic"),
    ],
)
def test_bad_topics_name_the_problem(topic, needle):
    with pytest.raises(BadPayload) as err:
        Topic.parse(topic)
    assert needle in str(err.value)


def test_manifest_topic_round_trips_and_needs_a_digest():
    t = Topic.manifest("a" * 64)
    assert str(t) == f"ef/v1/bundle/{'a' * 64}/manifest" and Topic.parse(str(t)) == t
    with pytest.raises(BadPayload):
        Topic.parse("ef/v1/bundle/short/manifest")
