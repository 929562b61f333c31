"""Inventory, Health and Shadow: typed on the way in, unknown fields kept on the way out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from protocol.device import Health, Inventory, Shadow
from protocol.errors import BadPayload
from protocol.messages import Accelerator, Status, Telemetry, parse_status, parse_telemetry

NOW = 1_700_000_000
AGENT_INVENTORY = {  # as agent/inventory.py describes a Raspberry Pi without an Edge TPU
    "board": "rpi4",
    "arch": "aarch64",
    "python": "3.11.7",
    "edgetpu": False,
    "edgetpu_detail": "no device",
    "litert": "ai-edge-litert 1.0.1",
    "onnxruntime": False,
    "agent_version": "0.1.0",
    "free_disk": 5_000_000_000,
    "mem_available_mb": 900,
    "mem_total_mb": 3800,
    "cloud_fallback": True,
    "http_port": 8080,
    "mqtt": "v5",
    "served_by": "cpu",
}


@pytest.mark.parametrize(
    "kind,obj",
    [
        (Inventory, AGENT_INVENTORY),
        (Inventory, {"board": "coral-devboard", "edgetpu": {"present": True, "count": 1}, "edgetpu_runtime": 14}),
        (
            Health,
            {
                "load1": 0.5,
                "cpu_temp_c": 51.0,
                "mem_available_mb": 900,
                "mem_total_mb": 3800,
                "rss_mb": 80.5,
                "disk_free_mb": 4000,
            },
        ),
        (Shadow, {"samples": 200, "errors": 1, "agreement": 0.975, "latency_delta_ms": 2.5}),
        (Shadow, {"samples": 0, "errors": 3, "agreement": None, "latency_delta_ms": None}),
    ],
)
def test_what_an_agent_sends_round_trips_unchanged(kind, obj):
    assert kind.from_dict(obj).to_dict() == obj


@pytest.mark.parametrize(
    "kind,obj",
    [
        (Inventory, {"board": "rpi5", "npu": {"vendor": "hailo"}}),
        (Health, {"load1": 0.1, "gpu_temp_c": 60.0}),
        (Shadow, {"samples": 10, "agreement": 1.0, "top5_agreement": 1.0}),
    ],
)
def test_fields_from_a_newer_agent_are_kept_and_written_back(kind, obj):
    parsed = kind.from_dict(obj)
    newer = set(obj) - {"board", "load1", "samples", "agreement"}
    assert set(parsed.extra) == newer and all(parsed.to_dict()[k] == obj[k] for k in obj)


def test_memory_has_one_name_and_an_old_agents_bytes_are_read_as_mib():
    old = Inventory.from_dict({"board": "rpi4", "mem_available": 900 * 2**20, "mem_total": 3800 * 2**20})
    assert (old.mem_available_mb, old.mem_total_mb) == (900, 3800)
    assert old.to_dict() == {"board": "rpi4", "mem_available_mb": 900, "mem_total_mb": 3800}
    both = Inventory.from_dict({"mem_available": 1, "mem_available_mb": 900})
    assert both.mem_available_mb == 900  # the named field wins


def test_the_edge_tpu_arrives_as_a_bool_or_as_an_object():
    assert Inventory.from_dict({"edgetpu": True}).edgetpu is True
    obj = Inventory.from_dict({"edgetpu": {"present": False, "count": 0}})
    assert obj.edgetpu is False and obj.edgetpu_info == {"count": 0}


@pytest.mark.parametrize(
    "kind,obj,needle",
    [
        (Inventory, {"board": 4}, "field 'board' must be str, got 4"),
        (Inventory, {"edgetpu": "yes"}, "field 'edgetpu' must be bool or an object with 'present', got 'yes'"),
        (Inventory, {"edgetpu": {"present": "yes"}}, "field 'present' must be bool, got 'yes'"),
        (Inventory, {"free_disk": -1}, "field 'free_disk' must be >= 0, got -1"),
        (Inventory, {"mem_available": True}, "field 'mem_available' must be int, got True"),
        (Health, {"load1": "high"}, "field 'load1' must be float, got 'high'"),
        (Shadow, {"samples": -5, "agreement": 0.5}, "field 'samples' must be >= 0, got -5"),
        (Shadow, {"samples": 10, "agreement": 1.5}, "agreement must be within 0..1, got 1.5"),
        (Shadow, {"samples": 10}, "agreement is missing for 10 samples"),
        (Shadow, [1, 2], "expected an object, got [1, 2]"),
    ],
)
def test_a_bad_value_is_one_bad_payload_naming_it(kind, obj, needle):
    with pytest.raises(BadPayload) as err:
        kind.from_dict(obj)
    assert needle in str(err.value)


def test_agreed_is_the_count_the_agent_divided():
    assert Shadow(samples=200, agreement=193 / 200).agreed == 193
    assert Shadow(samples=0, errors=4).agreed == 0


def test_status_and_telemetry_carry_the_typed_parts_on_the_same_keys():
    st = parse_status(Status("dev1", True, NOW, "0.1.0", Inventory.from_dict(AGENT_INVENTORY)).to_bytes())
    assert st.inventory.board == "rpi4" and st.inventory.to_dict() == AGENT_INVENTORY
    t = Telemetry(
        "dev1", 1, NOW - 10, NOW, counts={"inferences": 200}, shadow=Shadow(200, 0, 0.5, 1.0), health=Health(load1=0.2)
    )
    wire = t.to_bytes()
    assert b'"shadow":{"agreement":0.5,"errors":0,"latency_delta_ms":1.0,"samples":200}' in wire
    assert b'"health":{"load1":0.2}' in wire
    again = parse_telemetry(wire)
    assert again.shadow == t.shadow and again.health == t.health


def test_a_bad_inventory_or_shadow_refuses_the_message_naming_the_part():
    with pytest.raises(BadPayload, match="bad status inventory: field 'board'"):
        parse_status(b'{"v": 1, "device": "d", "online": true, "ts": 1, "inventory": {"board": 4}}')
    with pytest.raises(BadPayload, match="bad telemetry shadow: agreement must be within 0..1"):
        parse_telemetry(
            b'{"v": 1, "device": "d", "seq": 1, "window_start": 1, "window_end": 2,'
            b' "counts": {"inferences": 5}, "shadow": {"samples": 5, "agreement": 2}}'
        )


def test_the_shapes_in_docs_protocol_md_are_what_the_parsers_read_and_write():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = doc.split("## Inventory, health and shadow", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    assert len(blocks) == 5, "docs/protocol.md lost an example of Inventory, Health, Shadow, accelerator or usage"
    for kind, obj in zip((Inventory, Health, Shadow), blocks[:3], strict=True):
        parsed = kind.from_dict(obj)
        assert parsed.extra == {} and parsed.to_dict() == obj
    accelerator, usage = blocks[3:]
    assert Accelerator.from_dict(accelerator).to_dict() == accelerator
    wire = Telemetry("dev1", 1, NOW - 10, NOW, counts={"inferences": 1}, usage=usage).to_bytes()
    assert parse_telemetry(wire).usage == usage
