"""`python -m bench delta` on the digits builds: every case's figures come from the deltas it made
(not constants), the goal line reads the issue's measure (the current agent's delta against the
full bundle) with the device view's beside it, and the fine-tunes are as large as they say."""

from __future__ import annotations

import json

import pytest

from bench import delta, report

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_delta_judges_each_case_against_the_full_bundle_and_prints_the_view_beside(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rc = delta.main(["--repeat", "1"])  # TensorFlow training and four builds the first time (cached)
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "delta.json").read_text())
    cases = {c["case"]: c for c in doc["cases"]}
    assert sorted(cases) == ["finetune", "head", "small"]
    for name, c in cases.items():
        assert c["view_delta_fraction_of_full"] == c["view_delta_bytes"] / c["full_bytes"]
        assert c["view_delta_fraction"] == c["view_delta_bytes"] / c["view_bytes"]
        assert c["meets_goal"] == (c["view_delta_fraction_of_full"] <= delta.GOALS[name])
        assert c["meets_goal_of_view"] == (c["view_delta_fraction"] <= delta.GOALS[name])
        assert c["view_delta_bytes"] < c["view_bytes"] < c["full_bytes"]
        verdict = "met" if c["meets_goal"] else "NOT met"
        assert f"(goal <= {100 * delta.GOALS[name]:.0f} % of full: {verdict})" in out
    assert rc == (0 if all(c["meets_goal"] for c in cases.values()) else 1)
    # what each case is: the head moves under 2 % of the int8 bytes, the small fine-tune about
    # as many as the "small fine-tune" (7.8 %), the fine-tune several times more
    head, small, fine = (cases[n]["int8_differing_fraction"] for n in ("head", "small", "finetune"))
    assert head < 0.02 < 0.05 < small < 0.15 < 0.2 < fine
    assert (
        cases["head"]["view_delta_bytes"] < cases["small"]["view_delta_bytes"] < cases["finetune"]["view_delta_bytes"]
    )
