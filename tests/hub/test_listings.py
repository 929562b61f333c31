"""The CLI's tables (hub.listings): query strings as the API reads them, columns that line up,
a footer that says how to get the next page."""

from __future__ import annotations

from urllib.parse import parse_qs

from hub.listings import command_text, footer, query, render, table, target


def test_query_leaves_out_unset_filters_and_encodes_the_rest():
    assert query() == ""
    assert query(limit=5, offset=0, q=None, online=False) == "?limit=5&offset=0&online=false"
    q = query(q="cam 1&group=x", online=True)
    assert parse_qs(q[1:]) == {"q": ["cam 1&group=x"], "online": ["true"]}


def test_columns_line_up_and_numbers_align_right():
    out = table(("device", "inferences"), [("a", "7"), ("longer-name", "1234")]).splitlines()
    assert out == ["device       inferences", "a                     7", "longer-name        1234"]


def test_footer_points_at_the_next_page_only_when_there_is_one():
    assert footer({"items": [1, 2], "total": 2, "offset": 0}) == "(2 of 2)"
    assert footer({"items": [1, 2], "total": 5, "offset": 2}) == "(2 of 5; --offset 4 for the next page)"
    assert footer({"items": [], "total": 5, "offset": 9}) == "(0 of 5)"


def test_a_rollout_target_is_summarised_in_one_cell():
    assert target({"all": True}) == "all"
    assert target({"group": "lab"}) == "group:lab"
    assert target({"tag": "cam"}) == "tag:cam"
    assert target({"devices": ["a", "b"]}) == "devices:a,b"
    assert target({"devices": [f"device-{i}" for i in range(9)]}) == "devices:device-0,device-1,device-2,..."


def test_an_empty_page_is_a_header_and_a_footer():
    page = {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert render("rollouts", page).splitlines() == [
        "rollout  phase  installed  bundle  target  created  reason",
        "(0 of 0)",
    ]


def command(name: str, status: str = "ok", body: dict | None = None, **kw: str) -> dict:
    return {
        "id": "cmd-1",
        "device_id": "pi-7",
        "name": name,
        "status": status,
        "reason": "ok",
        "detail": "",
        "body": body,
        **kw,
    }


def test_a_device_answer_prints_as_text_and_cannot_drive_the_terminal():
    logs = command_text(command("logs", body={"lines": ["one", "\x1b[2J\x1b[Hall clear\x07"], "truncated": 3}))
    assert logs.splitlines() == [
        "logs cmd-1 on pi-7: ok",
        "one",
        "\\x1b[2J\\x1b[Hall clear\\x07",
        "(3 older lines left out to fit one result)",
    ]
    assert "\x1b" not in logs
    checks = [{"name": "disk", "ok": False, "detail": "1 byte free"}, {"name": "broker", "ok": True, "detail": "up"}]
    diag = command_text(command("diagnostics", body={"checks": checks[::-1], "agent_version": "0.1.0", "pid": 7}))
    rows = diag.splitlines()
    assert rows[1].split() == ["check", "ok", "detail"] and rows[2].split()[:2] == ["disk", "NO"]  # failing first
    refused = command_text(command("format", "refused", reason="unknown_command", detail="unknown command 'format'"))
    assert refused == "format cmd-1 on pi-7: refused (unknown_command): unknown command 'format'"
