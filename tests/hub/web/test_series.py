"""The device charts at low request rates (issue 17): every window with data is plotted, a
window too small for the drift verdict is merged with the ones before it and drawn hollow,
nothing is invented from a handful of samples, and the words under the chart say which."""

from __future__ import annotations

from collections.abc import Sequence

from hub.telemetry import merge
from hub.web import series
from protocol.baseline import Baseline, Feature
from protocol.messages import COUNT_KEYS
from protocol.sketch import LatencySketch

DIGEST = "b" * 64
REF = (250, 250, 250, 250)


class Row:
    """A stored telemetry window's columns, as :func:`hub.telemetry.merge` reads them."""

    def __init__(self, n: int, drift: Sequence[int] | None, ms: float = 8.0) -> None:
        sk = LatencySketch()
        for _ in range(n):
            sk.add(ms / 1000)
        self.device = "d"
        self.latency = sk.to_dict()
        self.drift = {"inputs": {"brightness": list(drift)}} if drift is not None else None
        self.shadow = None
        for k in COUNT_KEYS:
            setattr(self, k, 0)
        self.inferences = n


def windows(rows: Sequence[Row], bundle: str | None = DIGEST) -> list[series.Window]:
    return [series.Window(1000 + 10 * i, bundle, merge([r])) for i, r in enumerate(rows)]


def base(digest: str) -> Baseline | None:
    return Baseline(1000, {"brightness": Feature((0.25, 0.5, 0.75), REF)}) if digest == DIGEST else None


def test_below_ten_requests_a_second_the_drift_chart_merges_windows_instead_of_staying_empty() -> None:
    # 8 requests per 10 s window, all in the top bin: the table (30 windows merged) says alert
    rows = [Row(8, [0, 0, 0, 8]) for _ in range(30)]
    out = series.device_chart(windows(rows), base)
    psi = out["drift_psi"]["inputs.brightness"]
    # the first 12 windows (96 samples) are too little even merged: gaps, never a guess
    assert psi[:12] == [None] * 12
    assert all(v is not None and v > 0.25 for v in psi[12:])
    assert out["hollow"]["inputs.brightness"][12:] == [True] * 18
    assert out["drift_samples"]["inputs.brightness"][12:] == [104] * 18
    assert out["drift_merged_windows"]["inputs.brightness"][12:] == [13] * 18
    note = out["notes"]["drift"]
    assert note.startswith("240 samples in the last 30 windows; drift needs >= 100 per point"), note
    assert "hollow points, up to 13 windows" in note and "12 of them too little to judge even merged" in note


def test_too_few_samples_in_all_windows_says_so_in_words() -> None:
    out = series.device_chart(windows([Row(3, [1, 1, 0, 1]) for _ in range(4)]), base)
    assert out["drift_psi"]["inputs.brightness"] == [None] * 4
    assert (
        out["notes"]["drift"]
        == "12 samples in the last 4 windows: drift needs >= 100 per point, too little to judge yet."
    )


def test_windows_with_enough_samples_are_judged_alone_and_drawn_solid() -> None:
    out = series.device_chart(windows([Row(100, [250, 250, 250, 250]), Row(100, [700, 100, 100, 100])]), base)
    assert out["drift_psi"]["inputs.brightness"][0] == 0.0
    assert out["drift_psi"]["inputs.brightness"][1] > 0.25
    assert out["hollow"]["inputs.brightness"] == [False, False]
    assert out["notes"]["drift"].endswith("every point is judged on its own window.")


def test_a_window_is_not_merged_across_a_bundle_change() -> None:
    ws = windows([Row(100, [250] * 4)], bundle="c" * 64) + windows([Row(50, [50, 0, 0, 0])])
    out = series.device_chart(ws, base)
    assert out["drift_psi"]["inputs.brightness"] == [None, None]  # the other bundle's counts never mix in


def test_latency_plots_every_window_with_requests_and_marks_the_few() -> None:
    out = series.device_chart(windows([Row(5, None), Row(0, None), Row(40, None)], bundle=None), base)
    assert out["p95_ms"][0] is not None and out["p95_ms"][1] is None and out["p95_ms"][2] is not None
    assert out["hollow"]["p95_ms"] == [True, False, False]
    assert out["samples"] == [5, 0, 40]
    assert "45 requests in the last 3 windows; 1 of them had fewer than 20" in out["notes"]["latency"]
    assert out["notes"]["drift"] == "No drift counts in the charted windows yet."
