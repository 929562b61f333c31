"""Remote-diagnostics commands: signed by the targets key, for one device, fresh, once, known;
results parsed once with their unknown fields kept."""

from __future__ import annotations

import base64
import json

import pytest

from protocol.commands import (
    MAX_LOG_LINES,
    MAX_TTL_S,
    Command,
    Refused,
    Result,
    parse_command_payload,
    parse_result,
    verify_command,
)
from protocol.errors import BadPayload, Reason, VerificationError
from protocol.signing import Envelope, SigningKey, seal
from protocol.topics import Kind, Topic

NOW = 1_800_000_000


def cmd(name="logs", device="dev1", cid="c0ffee0001", issued=NOW, expires=NOW + 120, **args) -> Command:
    return Command(cid, device, name, issued, expires, dict(args))


def test_command_and_result_topics_are_per_device():
    for kind in (Kind.COMMAND, Kind.RESULT):
        t = Topic.for_device(kind, "pi-7")
        assert str(t) == f"ef/v1/dev/pi-7/{kind.value}" and Topic.parse(str(t)) == t


def test_a_command_signed_by_the_targets_key_verifies(trust):
    got = verify_command(cmd(lines=50).seal([trust.targets_key]), trust.root, "dev1", set(), NOW)
    assert (got.id, got.name, got.log_lines) == ("c0ffee0001", "logs", 50)


@pytest.mark.parametrize(
    "doc,device,seen,reason,needle",
    [
        (cmd(expires=NOW), "dev1", (), Reason.EXPIRED, "expired at"),
        (cmd(issued=NOW - 10, expires=NOW + MAX_TTL_S), "dev1", (), Reason.EXPIRED, "at most 3600 s"),
        (cmd(device="dev2"), "dev1", (), Reason.WRONG_DEVICE, "is for 'dev2', this is 'dev1'"),
        (cmd(), "dev1", ("c0ffee0001",), Reason.REPLAYED, "already accepted"),
        (cmd(name="reboot_os"), "dev1", (), Reason.UNKNOWN_COMMAND, "unknown command 'reboot_os'; this agent knows"),
    ],
)
def test_signed_but_unacceptable_commands_are_refused_under_their_id(trust, doc, device, seen, reason, needle):
    with pytest.raises(Refused) as err:
        verify_command(doc.seal([trust.targets_key]), trust.root, device, set(seen), NOW)
    assert err.value.reason is reason and needle in str(err.value)
    assert err.value.command.id == "c0ffee0001"  # signed: safe to answer under


def test_a_command_signed_by_another_key_is_refused_before_it_is_read(trust):
    with pytest.raises(VerificationError) as err:
        verify_command(cmd().seal([SigningKey.generate()]), trust.root, "dev1", set(), NOW)
    assert err.value.reason is Reason.UNKNOWN_KEY and not isinstance(err.value, Refused)


def test_a_tampered_command_fails_its_signature(trust):
    env = Envelope.parse(cmd().seal([trust.targets_key]))
    doc = json.loads(env.payload)
    doc["name"] = "restart"
    forged = Envelope(env.payload_type, json.dumps(doc).encode(), env.signatures).to_bytes()
    with pytest.raises(VerificationError) as err:
        verify_command(forged, trust.root, "dev1", set(), NOW)
    assert err.value.reason is Reason.BAD_SIGNATURE


def test_a_desired_document_signature_cannot_be_replayed_as_a_command(trust):
    env = seal("desired", cmd().signed_dict(), [trust.targets_key])
    with pytest.raises(VerificationError) as err:
        verify_command(env.to_bytes(), trust.root, "dev1", set(), NOW)
    assert err.value.reason is Reason.MALFORMED and "expected payload type" in str(err.value)


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({"_type": "desired"}, "_type must be 'command'"),
        ({"name": "Rm -rf"}, "must be 1-32 chars"),
        ({"id": "x"}, "command id: 'x' must be 8-64"),
        ({"args": {"lines": MAX_LOG_LINES + 1}}, "lines must be 1..500"),
        ({"args": {"lines": "all"}}, "field 'lines' must be int"),
        ({"device": "a/b"}, "bad device id"),
    ],
)
def test_malformed_commands_name_the_field(doc, needle):
    body = {**cmd().signed_dict(), **doc}
    with pytest.raises(BadPayload) as err:
        parse_command_payload(json.dumps(body).encode())
    assert needle in str(err.value)


def test_an_oversized_command_is_refused_before_its_signature_is_checked(trust):
    pad = base64.b64encode(b"x" * 20_000).decode()
    with pytest.raises(BadPayload, match="exceeds the limit"):
        verify_command(json.dumps({"payload": pad}).encode(), trust.root, "dev1", set(), NOW)


def test_command_keeps_unknown_fields_through_a_round_trip():
    c = Command("c0ffee0001", "dev1", "logs", NOW, NOW + 5, {}, extra={"priority": "high"})
    again = parse_command_payload(seal("command", c.signed_dict(), []).payload)
    assert again == c and again.extra == {"priority": "high"}


def test_result_round_trips_and_keeps_unknown_fields():
    r = Result("c0ffee0001", "dev1", "logs", NOW, "ok", body={"lines": ["a"]}, extra={"took_ms": 3})
    again = parse_result(r.to_bytes())
    assert again == r and again.extra == {"took_ms": 3}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"status": "maybe"}, "status must be one of"),
        ({"reason": "because"}, "unknown reason code"),
        ({"id": "no spaces allowed"}, "command id"),
        ({"body": []}, "field 'body' must be dict"),
    ],
)
def test_malformed_results_name_the_field(change, needle):
    doc = {**Result("c0ffee0001", "dev1", "logs", NOW, "ok").to_dict(), **change}
    with pytest.raises(BadPayload) as err:
        parse_result(json.dumps(doc).encode())
    assert needle in str(err.value)


def test_an_oversized_result_is_refused():
    with pytest.raises(BadPayload, match="exceeds the limit"):
        parse_result(b'{"pad": "' + b"x" * 200_000 + b'"}')
