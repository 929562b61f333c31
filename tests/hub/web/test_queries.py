"""The dashboard's read-side queries over a real registry (SQLite and PostgreSQL): fleet time
series from telemetry windows, the rollout preview's compatibility split, the eval report
of a real compiler build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.models import Bundle, Device, TelemetryWindow
from hub.server import Hub
from hub.targets import Target
from hub.transport import MemoryPublisher
from hub.web import catalog, queries
from hub.web.queries import QueryError
from protocol.baseline import Baseline, Feature
from protocol.bundle import Requirements
from protocol.sketch import LatencySketch

NOW = 1_800_000_000
REF = [250, 250, 250, 250]


def sketch(ms: float, n: int = 100) -> dict[str, Any]:
    s = LatencySketch()
    for _ in range(n):
        s.add(ms / 1000)
    return s.to_dict()


def window(
    device: str, seq: int, received: int, ms: float, drift: list[int] | None = None, bundle: str = "b" * 64
) -> TelemetryWindow:
    return TelemetryWindow(
        device=device,
        seq=seq,
        window_start=received - 10,
        window_end=received,
        bundle=bundle,
        inferences=100,
        latency=sketch(ms),
        drift={"inputs": {"brightness": drift}} if drift else {},
        received=received,
    )


def refs(digest: str) -> Baseline | None:
    return Baseline(1000, {"brightness": Feature((0.25, 0.5, 0.75), tuple(REF))}) if digest == "b" * 64 else None


def test_fleet_series_buckets_latency_and_drift_by_receive_time_with_gaps(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    with hub.fleet.session() as s:
        # bucket 0 (oldest): fast, no shift; bucket 5 (newest): slow, strongly shifted; others empty
        s.add(window("d1", 1, NOW - 3590, 5.0, [250, 250, 250, 250]))
        s.add(window("d2", 1, NOW - 3580, 5.0, [240, 260, 250, 250]))
        s.add(window("d1", 2, NOW - 10, 40.0, [700, 100, 100, 100]))
        s.add(window("d2", 2, NOW - 5, 40.0, [10, 10, 10, 20]))  # 50 samples: too few alone, merged counts
        s.add(window("d1", 0, NOW - 7200, 999.0))  # outside the span: ignored
        s.commit()
        out = queries.fleet_series(s, NOW, refs, span_s=3600, buckets=6)
    assert out["windows"] == 4
    assert len(out["x"]) == 6 and out["x"][-1] == NOW
    assert out["p50_ms"][1:5] == [None] * 4 and out["drift_psi"][1:5] == [None] * 4
    assert out["p95_ms"][0] == pytest.approx(5.0, rel=0.05)
    assert out["p95_ms"][5] == pytest.approx(40.0, rel=0.05)
    assert out["drift_psi"][0] is not None and out["drift_psi"][0] < 0.01
    assert out["drift_psi"][5] is not None and out["drift_psi"][5] > 0.25
    assert out["inferences"] == [200, 0, 0, 0, 0, 200]
    with pytest.raises(QueryError, match="span must be >= 60 s"):
        queries.fleet_series(s, NOW, refs, span_s=10)


def test_fleet_series_merges_a_bucket_too_small_to_judge_with_the_buckets_before_and_says_so(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    hub, _ = memhub
    with hub.fleet.session() as s:
        for i in range(3):  # one quiet device: 40 samples in each of the last three 10-minute buckets
            s.add(window("d1", i + 1, NOW - 1500 + 600 * i, 5.0, [10, 10, 10, 10]))
        s.commit()
        out = queries.fleet_series(s, NOW, refs, span_s=3600, buckets=6)
    assert out["drift_psi"][:5] == [None] * 5 and out["drift_psi"][5] == 0.0  # 120 samples merged
    assert out["hollow"]["drift_psi"] == [False] * 5 + [True]
    note = out["notes"]["drift"]
    assert note.startswith("120 samples in the last 6 time buckets; drift needs >= 100 per point"), note
    assert "2 of them too little to judge even merged" in note
    assert out["notes"]["latency"] == "300 requests in the last 6 time buckets."


def test_device_series_merges_a_window_too_small_to_judge_with_the_one_before(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    hub, _ = memhub
    with hub.fleet.session() as s:
        s.add(window("d1", 1, NOW - 30, 5.0, [250, 250, 250, 250]))
        s.add(window("d1", 2, NOW - 20, 6.0, [20, 20, 20, 20]))  # 80 samples: merged with window 1
        s.add(window("d1", 3, NOW - 10, 7.0, [700, 100, 100, 100]))
        s.commit()
        out = queries.device_series(s, "d1", refs)
    assert out["x"] == [NOW - 30, NOW - 20, NOW - 10]
    psi = out["drift_psi"]["inputs.brightness"]
    assert psi[0] == 0.0 and psi[1] == 0.0 and psi[2] is not None and psi[2] > 0.25
    assert out["hollow"]["inputs.brightness"] == [False, True, False]
    assert out["drift_samples"]["inputs.brightness"] == [1000, 1080, 1000]
    assert "drift needs >= 100 per point" in out["notes"]["drift"] and "hollow" in out["notes"]["drift"]


def bundle_row(digest: str, edgetpu: str = "optional") -> Bundle:
    return Bundle(
        digest=digest,
        name="m",
        version="2",
        archive_sha256="a" * 64,
        requirements=Requirements(edgetpu=edgetpu).to_dict(),
    )


def test_rollout_preview_splits_matched_devices_by_compatibility_and_sizes_cohorts(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    hub, _ = memhub
    digest = "c" * 64
    with hub.fleet.session() as s:
        s.add(bundle_row(digest, edgetpu="required"))
        for i in range(12):
            s.add(
                Device(
                    id=f"d{i:02d}",
                    online=True,
                    group="lab" if i < 10 else "field",
                    inventory={"board": "rpi4", "edgetpu": i % 2 == 0},
                )
            )
        s.commit()
        pv = catalog.rollout_preview(s, digest, Target(group="lab"), ["1", "50%", "100%"])
        assert (pv["matched"], pv["compatible"], pv["incompatible_count"]) == (10, 5, 5)
        assert pv["cohort_sizes"] == [1, 3, 5]
        assert [d["device_id"] for d in pv["examples"]] == ["d00", "d02", "d04", "d06", "d08"]
        assert pv["incompatible"][0] == {
            "device_id": "d01",
            "reason": "unsupported_runtime",  # what the agent itself reports (protocol.compat)
            "detail": "bundle requires an Edge TPU; device has none",
        }
        listed = catalog.rollout_preview(s, digest, Target(devices=("d00", "ghost")), ["100%"])
        assert listed["matched"] == 1 and listed["unknown"] == ["ghost"]
        with pytest.raises(QueryError, match="is not in the registry"):
            catalog.rollout_preview(s, "d" * 64, Target(all=True), ["100%"])


@pytest.mark.parametrize(
    "kind, value, message",
    [
        ("group", "  ", "target group needs a value"),
        ("fleet", "x", "target kind must be all, group, tag or devices, got 'fleet'"),
        ("devices", "ok, bad id!", "device id"),
    ],
)
def test_preview_form_values_are_rejected_with_the_bad_value(kind: str, value: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        catalog.parse_target(kind, value)


def test_cohorts_text_must_be_counts_or_percentages() -> None:
    assert catalog.parse_cohorts(" 1, 10% ,100%") == ["1", "10%", "100%"]
    with pytest.raises(QueryError, match="cohort size '0' must be a count >= 1"):
        catalog.parse_cohorts("0, 100%")
    with pytest.raises(QueryError, match="at least one size"):
        catalog.parse_cohorts(" , ")


def test_report_summary_of_a_real_build_has_float_int8_onnx_rows_gate_and_op_mapping(digits_bundle: Path) -> None:
    report = json.loads((digits_bundle / "report.json").read_text())
    out = catalog.report_summary(report)
    kinds = {r["kind"]: r for r in out["artifacts"]}
    assert {"float", "int8", "ONNX"} <= set(kinds)
    assert all(0.5 < kinds[k]["accuracy"] <= 1.0 for k in ("float", "int8", "ONNX"))
    assert kinds["int8"]["size"] < kinds["float"]["size"]
    assert out["gate"]["passed"] is True and out["gate"]["checks"]
    assert out["ops"] and all("op" in o and "status" in o for o in out["ops"])


def test_report_summary_of_an_odd_report_is_empty_not_an_error() -> None:
    out = catalog.report_summary({"artifacts": ["not", "a", "dict"], "gate": 3, "edgetpu": None})
    assert out["artifacts"] == [] and out["gate"] == {} and out["ops"] == []


def test_device_filter_refuses_page_sizes_off_the_list() -> None:
    with pytest.raises(QueryError, match=r"page size must be one of \(25, 50, 100, 200\), got 7"):
        queries.DeviceFilter(limit=7)
    assert queries.DeviceFilter(q="x", online=False, limit=25).params(offset=50) == {
        "q": "x",
        "online": "false",
        "limit": 25,
        "offset": 50,
    }


def test_a_six_hour_fleet_chart_from_minute_rollups_is_the_chart_from_the_windows(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    from hub import rollups

    hub, _ = memhub
    span = queries.ROLLUP_SPAN_S
    with hub.fleet.session() as s:  # three devices, a window every 40 s over the span, drift shifting
        seq = 0
        for received in range(NOW - span + 5, NOW, 40):
            seq += 1
            for d, ms in (("r1", 3.0), ("r2", 6.0), ("r3", 20.0)):
                drift = [400, 100, 100, 400] if received > NOW - span / 3 else [260, 240, 250, 250]
                s.add(window(d, seq, received, ms + seq % 4, drift))
        s.commit()
    with hub.fleet.session() as s:
        from_windows = queries.fleet_series(s, NOW, refs, span_s=span, buckets=30)
    hub.fleet.clock = lambda: NOW - 300  # all but the last few minutes rolled up
    while any(rollups.roll(hub.fleet).values()):
        pass
    with hub.fleet.session() as s:
        cut = rollups.rolled_until(s)
        assert cut is not None and NOW - span < cut < NOW
        assert s.query(TelemetryWindow).filter(TelemetryWindow.received >= cut).count() > 0  # a raw tail
        from_rollups = queries.fleet_series(s, NOW, refs, span_s=span, buckets=30)
    assert from_rollups == from_windows
    assert from_rollups["windows"] == 3 * seq and from_rollups["drift_psi"][-1] is not None
