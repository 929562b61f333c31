"""Model channels on the wire: absent means ``default``, single-model documents keep their bytes,
per-channel desired entries round-trip with their unknown fields, bad names are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.bundle import ChunkPlan, Requirements
from protocol.channels import ChannelStatus, check_channel
from protocol.codec import canonical
from protocol.errors import BadPayload
from protocol.messages import (
    BundleRef,
    ChannelDesired,
    Desired,
    Report,
    Status,
    Telemetry,
    parse_desired_payload,
    parse_report,
    parse_status,
    parse_telemetry,
)

NOW = 1_800_000_000
A, B = "ab" * 32, "cd" * 32
VECTORS = Path(__file__).parent / "vectors"


def ref(digest: str = A, name: str = "digits") -> BundleRef:
    return BundleRef(digest, name, "1.0.0", ChunkPlan.of(b"x" * 3000, 1024), Requirements())


def two_channels(seq: int = 9) -> Desired:
    det = ChannelDesired(7, "install", ref(B, "ssd"), "r-det", extra={"from_the_future": 1})
    return Desired("dev1", seq, NOW, NOW + 60, "install", ref(), "r-cls", since=4, channels={"detector": det})


def payload(d: Desired) -> bytes:
    return canonical(d.signed_dict())


def test_a_desired_document_of_the_single_model_era_is_the_default_channel_byte_for_byte():
    raw = (VECTORS / "desired.payload.json").read_bytes()
    d = parse_desired_payload(raw)
    assert d.channels == {} and d.since is None
    assert d.channel("default") == d and d.channel("detector") is None
    assert canonical(d.signed_dict()) == canonical(json.loads(raw))


def test_per_channel_entries_round_trip_and_keep_unknown_fields():
    d = two_channels()
    again = parse_desired_payload(payload(d))
    assert again == d and again.channels["detector"].extra == {"from_the_future": 1}
    assert payload(again) == payload(d)


def test_each_channel_reads_as_a_single_channel_document_with_the_seq_that_last_changed_it():
    d = two_channels()
    default, det = d.channel("default"), d.channel("detector")
    assert default is not None and det is not None
    assert (default.seq, default.bundle, default.rollout, default.channels) == (4, ref(), "r-cls", {})
    assert (det.seq, det.bundle, det.rollout, det.extra) == (7, ref(B, "ssd"), "r-det", {"from_the_future": 1})
    assert (det.device, det.issued, det.expires) == (d.device, d.issued, d.expires)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda o: o["channels"]["detector"].update(seq=10), "seq 10 is above the document's 9"),
        (lambda o: o.update(since=10), "since 10 must be within 0..9"),
        (lambda o: o["channels"].update({"Bad/Name": o["channels"]["detector"]}), "'Bad/Name' must be 1-32 chars"),
        (lambda o: o["channels"].update(default=o["channels"]["detector"]), "the default channel is the document's"),
        (lambda o: o["channels"]["detector"].update(bundle=None), "action 'install' needs a bundle"),
        (lambda o: o["channels"].update(detector=[]), "must be an object"),
        (lambda o: o.update(channels={f"c{i}": o["channels"]["detector"] for i in range(9)}), "9 channels exceeds 8"),
    ],
)
def test_a_bad_channel_entry_is_refused_naming_it(mutate, needle):
    obj = json.loads(payload(two_channels()))
    mutate(obj)
    with pytest.raises(BadPayload) as e:
        parse_desired_payload(canonical(obj))
    assert needle in str(e.value)


def test_a_document_for_a_device_whose_default_channel_never_had_a_rollout_has_no_default_entry():
    d = Desired("dev1", 9, NOW, NOW + 60, "idle", None, since=0, channels=two_channels().channels)
    again = parse_desired_payload(payload(d))
    assert again.since == 0 and again.channel("default") is None and again.channel("detector") is not None


def test_reports_and_telemetry_without_a_channel_are_default_and_keep_their_bytes():
    r = Report("dev1", 3, NOW, "commit", "ok", bundle=A)
    assert b"channel" not in r.to_bytes() and parse_report(r.to_bytes()).channel == "default"
    t = Telemetry("dev1", 9, NOW - 10, NOW, A, {"inferences": 1})
    assert b"channel" not in t.to_bytes() and parse_telemetry(t.to_bytes()).channel == "default"


def test_reports_and_telemetry_name_their_channel():
    r = Report("dev1", 3, NOW, "commit", "ok", bundle=A, channel="detector")
    assert parse_report(r.to_bytes()) == r and parse_report(r.to_bytes()).channel == "detector"
    t = Telemetry("dev1", 9, NOW - 10, NOW, A, {"inferences": 1}, channel="detector")
    assert parse_telemetry(t.to_bytes()).channel == "detector"
    bad = json.loads(r.to_bytes())
    bad["channel"] = "../etc"
    with pytest.raises(BadPayload, match="must be 1-32 chars"):
        parse_report(canonical(bad))


def test_status_carries_the_other_channels():
    st = Status("dev1", True, NOW, channels={"detector": ChannelStatus({"digest": B, "name": "ssd"}, None, "serving")})
    again = parse_status(st.to_bytes())
    assert again.channels == st.channels
    assert b"channels" not in Status("dev1", True, NOW).to_bytes()


@pytest.mark.parametrize("name", ["default", "detector", "c1", "pose_2", "a" * 32])
def test_valid_channel_names(name):
    assert check_channel(name) == name


@pytest.mark.parametrize("name", ["", "Detector", "1abc", "a" * 33, "a b", "a/b", None, 3])
def test_invalid_channel_names_are_refused(name):
    with pytest.raises(BadPayload, match="channel"):
        check_channel(name)
