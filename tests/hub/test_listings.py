"""The CLI's tables (hub.listings): query strings as the API reads them, columns that line up,
a footer that says how to get the next page."""

from __future__ import annotations

from urllib.parse import parse_qs

from hub.listings import footer, query, render, table, target


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
