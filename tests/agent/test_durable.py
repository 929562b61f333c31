"""State files survive torn writes: the previous content is used, never none (agent/durable.py)."""

from __future__ import annotations

import json

import pytest

from agent.durable import previous, read_checked, read_json, write_json


def test_a_torn_state_file_reads_as_its_previous_content(tmp_path):
    p = tmp_path / "slots.json"
    write_json(p, {"active": "a"})
    write_json(p, {"active": "b"})
    assert read_json(p) == {"active": "b"} and json.loads(previous(p).read_bytes()) == {"active": "a"}
    data = p.read_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        assert read_json(p, "default") == {"active": "a"}, cut


def test_a_missing_state_file_is_missing_not_its_previous_content(tmp_path):
    p = tmp_path / "job.json"
    write_json(p, {"seq": 1})
    write_json(p, {"seq": 2})
    p.unlink()
    assert read_json(p, "none") == "none"


def test_a_torn_file_without_a_good_previous_raises_the_first_error(tmp_path):
    p = tmp_path / "trust.json"
    p.write_bytes(b'{"desired_seq": ')
    with pytest.raises(ValueError):
        read_checked(p, json.loads)
    assert read_json(p, {}) == {}


def test_the_first_write_keeps_no_previous_and_a_rewrite_leaves_no_temp_files(tmp_path):
    p = tmp_path / "commands.json"
    write_json(p, {})
    assert not previous(p).exists()
    write_json(p, {"x": 1})
    assert sorted(q.name for q in tmp_path.iterdir()) == ["commands.json", "commands.json.prev"]
