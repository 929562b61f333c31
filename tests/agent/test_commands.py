"""Remote diagnostics on the agent: which commands run, which are answered "refused", which are
ignored; and that nothing secret leaves the device in a log line or a diagnostics bundle."""

from __future__ import annotations

import json
import logging

import pytest

from agent.commands import (
    LOG_MAX_BYTES,
    LOG_MAX_LINES,
    MAX_SEEN,
    REDACTED,
    Answer,
    Ignore,
    Run,
    decide,
    fit,
    redact,
    redact_config,
    remember,
    tail,
)
from agent.diagnostics import LogRing
from protocol.commands import Command, Result
from protocol.signing import SigningKey

NOW = 1_800_000_000


def cmd(name="logs", device="dev1", cid="c0ffee0001", expires=NOW + 120) -> Command:
    return Command(cid, device, name, NOW, expires, {})


def test_a_verified_fresh_command_runs(trust):
    got = decide(cmd().seal([trust.targets_key]), trust.root, "dev1", {}, NOW)
    assert isinstance(got, Run) and got.command.name == "logs"


@pytest.mark.parametrize(
    "doc,reason,needle",
    [
        (cmd(name="format_disk"), "unknown_command", "unknown command 'format_disk'; this agent knows logs"),
        (cmd(expires=NOW - 1), "expired", "expired at"),
        (cmd(device="dev2"), "wrong_device", "is for 'dev2'"),
    ],
)
def test_signed_but_unacceptable_commands_are_answered_refused_under_their_id(trust, doc, reason, needle):
    got = decide(doc.seal([trust.targets_key]), trust.root, "dev1", {}, NOW)
    assert isinstance(got, Answer)
    r = got.result
    assert (r.id, r.device, r.status, r.reason) == ("c0ffee0001", "dev1", "refused", reason)
    assert needle in r.detail


def test_a_replayed_command_is_ignored_not_run_again(trust):
    got = decide(cmd(name="restart").seal([trust.targets_key]), trust.root, "dev1", {"c0ffee0001": NOW + 60}, NOW)
    assert isinstance(got, Ignore) and "already accepted" in got.why


@pytest.mark.parametrize("payload", [cmd().seal([SigningKey.generate()]), b"{not json", b""])
def test_an_unverifiable_command_is_ignored_because_its_id_cannot_be_trusted(trust, payload):
    got = decide(payload, trust.root, "dev1", {}, NOW)
    assert isinstance(got, Ignore) and "no trustworthy id" in got.why


def test_seen_ids_are_kept_until_they_expire_and_bounded():
    seen = remember({"old": NOW - 1, "live": NOW + 5}, "new", NOW + 60, NOW)
    assert seen == {"live": NOW + 5, "new": NOW + 60}
    many = {f"id{i}": NOW + 10 + i for i in range(MAX_SEEN)}
    kept = remember(many, "newest", NOW + 10_000, NOW)
    assert len(kept) == MAX_SEEN and "newest" in kept and "id0" not in kept


@pytest.mark.parametrize(
    "line,secret",
    [
        ("connecting to mqtt://dev1:hunter2hunter2@broker:1883", "hunter2hunter2"),
        ("GET /x Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("headers={'authorization': 'Basic ZGV2MTpwYXNz'}", "ZGV2MTpwYXNz"),
        ("cloud call failed, api_key=sk-live-0123456789", "sk-live-0123456789"),
        ('config {"password": "s3cr3t pass", "device_id": "dev1"}', "s3cr3t pass"),
        ("enroll token: 3fQx-9_token_value", "3fQx-9_token_value"),
        ("https://hub.example.com/enroll?token=abcdef123456&x=1", "abcdef123456"),
        ("CLOUD_API_KEY='k-9876543210'", "k-9876543210"),
        (
            "loaded -----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY----- ok",
            "MC4CAQAwBQYDK2VwBCIEIA",
        ),
        ("truncated -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB", "MHcCAQEEIB"),
        ("the device password is plainly correcthorsebattery", "correcthorsebattery"),
    ],
)
def test_secrets_are_redacted_from_log_lines(line, secret):
    out = redact(line, secrets=("correcthorsebattery",))
    assert secret not in out and "REDACTED" in out, out


def test_redaction_keeps_what_is_not_secret():
    line = "report download ok ok bundle 3fa2 at mqtt://broker:1883 tokens_per_s=40 device_id=dev1"
    assert redact(line) == line


def test_config_secrets_are_redacted_by_name_and_by_value():
    doc = {
        "device_id": "dev1",
        "password": "pw-123456",
        "cloud_api_key": "ck-abcdef",
        "username": "dev1",
        "key_file": "/etc/edgefleet/dev.key",
        "cloud_url": "https://u:pw-123456@cloud.example.com",
        "extra": {"hub_token": "t-1", "note": "uses pw-123456"},
        "cert_file": None,
    }
    out = redact_config(doc, ("pw-123456", "ck-abcdef"))
    text = json.dumps(out)
    assert "pw-123456" not in text and "ck-abcdef" not in text and "t-1" not in text
    assert out["password"] == out["cloud_api_key"] == out["extra"]["hub_token"] == REDACTED
    assert out["key_file"] == "/etc/edgefleet/dev.key" and out["device_id"] == "dev1" and out["cert_file"] is None


def test_tail_takes_the_newest_lines_that_fit():
    lines = [f"line {i:03d}" for i in range(100)]  # 8 bytes + newline each
    assert tail(lines, 5, 1000) == (lines[-5:], 0)
    assert tail(lines, 50, 100) == (lines[-11:], 39)  # 11 * 9 = 99 bytes
    assert tail(lines, 0, 1000) == ([], 0)


def test_the_log_ring_is_bounded_and_holds_no_secret():
    ring = LogRing(("hunter2hunter2",))
    log = logging.getLogger("test.ring")
    log.addHandler(ring)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("password is hunter2hunter2 and token=abc12345")
        for i in range(LOG_MAX_LINES + 50):
            log.info("line %d %s", i, "x" * 50)
        lines = ring.lines()
        assert len(lines) == LOG_MAX_LINES and lines[-1].endswith("line 549 " + "x" * 50)
        assert not any("hunter2" in x or "abc12345" in x for x in lines)
        for _ in range(300):
            log.warning("%s", "y" * 1000)
        assert sum(len(x) + 1 for x in ring.lines()) <= LOG_MAX_BYTES
    finally:
        log.removeHandler(ring)


def test_an_answer_too_big_for_one_message_is_trimmed_or_refused_by_size_never_sent_oversized():
    escapes = ["\x01" * 2000] * 32  # 64 KB of text, ~384 KB as JSON escapes
    logs = Result("c0ffee0001", "dev1", "logs", NOW, "ok", body={"lines": escapes + ["newest"], "truncated": 0})
    got = fit(logs, 100_000)
    assert len(got.to_bytes()) <= 100_000 and got.status == "ok"
    assert got.body["lines"][-1] == "newest" and got.body["truncated"] == 33 - len(got.body["lines"])
    big = Result("c0ffee0002", "dev1", "diagnostics", NOW, "ok", body={"config": {"x": "y" * 200_000}})
    refused = fit(big, 100_000)
    assert (refused.status, refused.reason, refused.body) == ("failed", "internal", {})
    assert "answer of 200" in refused.detail and "exceeds the 100000-byte result limit" in refused.detail
    small = Result("c0ffee0003", "dev1", "selftest", NOW, "ok", body={"cases": 1})
    assert fit(small, 100_000) is small
