"""Messages: parsed once, unknown fields kept, malformed input gives one clear error."""

from __future__ import annotations

import pytest

from protocol.bundle import ChunkPlan, Requirements
from protocol.device import Inventory
from protocol.errors import BadPayload, Reason, VerificationError
from protocol.messages import (
    Ack,
    BundleRef,
    Desired,
    FetchRequest,
    Report,
    Status,
    Telemetry,
    parse_ack,
    parse_fetch,
    parse_report,
    parse_status,
    parse_telemetry,
    verify_desired,
)
from protocol.signing import SigningKey

NOW = 1_800_000_000
SHA = "ab" * 32


def ref() -> BundleRef:
    return BundleRef(SHA, "digits", "1.0.0", ChunkPlan.of(b"x" * 3000, 1024), Requirements())


def desired(seq=5, device="dev1", expires=NOW + 60, action="install") -> Desired:
    return Desired(device, seq, NOW, expires, action, ref(), rollout="r1")


def test_status_round_trips_and_keeps_unknown_fields():
    s = Status("dev1", True, NOW, "0.1", Inventory(board="rpi4"), extra={"from_the_future": [1, 2]})
    again = parse_status(s.to_bytes())
    assert again == s and again.extra == {"from_the_future": [1, 2]}
    assert b"from_the_future" in again.to_bytes()


def test_report_telemetry_ack_fetch_round_trip():
    r = Report("dev1", 3, NOW, "download", "progress", progress=0.5, bundle=SHA)
    assert parse_report(r.to_bytes()) == r
    t = Telemetry(
        "dev1", 9, NOW - 10, NOW, SHA, {"inferences": 4}, {"b": {"3": 4}, "n": 4}, {"inputs": {"brightness": [1, 2, 1]}}
    )
    assert parse_telemetry(t.to_bytes()) == t
    assert parse_ack(Ack("telemetry", (1, 2)).to_bytes()).seqs == (1, 2)
    assert parse_fetch(FetchRequest("dev1", SHA, (0, 4)).to_bytes()).missing == (0, 4)


@pytest.mark.parametrize(
    "parse,data,needle",
    [
        (parse_status, b"{", "bad status: not valid JSON"),
        (parse_status, b'{"v": 1, "device": "a/b", "online": true, "ts": 1}', "bad device id"),
        (parse_status, b'{"v": 1, "device": "d", "online": "yes", "ts": 1}', "field 'online' must be bool"),
        (
            parse_report,
            b'{"v": 1, "device": "d", "seq": 1, "ts": 1, "stage": "dance", "status": "ok"}',
            "stage must be one of",
        ),
        (
            parse_report,
            b'{"v": 1, "device": "d", "seq": -1, "ts": 1, "stage": "verify", "status": "ok"}',
            "'seq' must be >= 0",
        ),
        (
            parse_report,
            b'{"v": 1, "device": "d", "seq": 1, "ts": 1, "stage": "verify", "status": "ok", "reason": "vibes"}',
            "unknown reason code",
        ),
        (
            parse_telemetry,
            b'{"v": 1, "device": "d", "seq": 1, "window_start": 5, "window_end": 1}',
            "before window_start",
        ),
        (
            parse_telemetry,
            b'{"v": 1, "device": "d", "seq": 1, "window_start": 1, "window_end": 2, "counts": {"errors": -3}}',
            "count 'errors'",
        ),
        (
            parse_telemetry,
            b'{"v": 1, "device": "d", "seq": 1, "window_start": 1, "window_end": 2, "counts": {"x": NaN}}',
            "not valid JSON",
        ),
        (parse_ack, b'{"seqs": [1]}', "missing field 'v'"),
        (parse_fetch, b'{"v": 1, "device": "d", "archive": "zz", "missing": []}', "not 64 lowercase hex"),
    ],
)
def test_malformed_message_gives_one_clear_error(parse, data, needle):
    with pytest.raises(BadPayload) as err:
        parse(data)
    assert needle in str(err.value)


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(BadPayload, match="exceeds the limit"):
        parse_status(b'{"pad": "' + b"x" * 300_000 + b'"}')


def test_desired_signed_by_targets_key_verifies(trust):
    got = verify_desired(desired().seal([trust.targets_key]), trust.root, "dev1", 4, NOW)
    assert got.seq == 5 and got.bundle.archive.chunk_size == 1024


@pytest.mark.parametrize(
    "doc,device,trusted,reason",
    [
        (desired(seq=5), "dev1", 5, Reason.REPLAYED),
        (desired(seq=3), "dev1", 5, Reason.DOWNGRADE),
        (desired(expires=NOW - 1), "dev1", 0, Reason.EXPIRED),
        (desired(device="dev2"), "dev1", 0, Reason.WRONG_DEVICE),
    ],
)
def test_desired_freshness_rules(trust, doc, device, trusted, reason):
    with pytest.raises(VerificationError) as err:
        verify_desired(doc.seal([trust.targets_key]), trust.root, device, trusted, NOW)
    assert err.value.reason is reason


def test_desired_signed_by_unknown_key_is_rejected(trust):
    with pytest.raises(VerificationError) as err:
        verify_desired(desired().seal([SigningKey.generate()]), trust.root, "dev1", 0, NOW)
    assert err.value.reason is Reason.UNKNOWN_KEY


def test_desired_with_inconsistent_chunk_table_is_malformed(trust):
    d = desired()
    bad = BundleRef(SHA, "digits", "1", ChunkPlan(5000, SHA, 1024, (SHA,)), Requirements())
    doc = Desired(d.device, d.seq, d.issued, d.expires, "install", bad)
    with pytest.raises(BadPayload, match="1 chunk hashes for 5000 bytes"):
        verify_desired(doc.seal([trust.targets_key]), trust.root, "dev1", 0, NOW)
