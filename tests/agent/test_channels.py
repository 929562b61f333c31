"""Which channels a desired document starts a job on, and where each channel's state lives: a
device installed before channels is its default channel without moving a file."""

from __future__ import annotations

from pathlib import Path

from agent.channels import accepted, channel_config, due, installed
from agent.config import from_dict
from protocol.bundle import ChunkPlan, Requirements
from protocol.messages import BundleRef, ChannelDesired, Desired

NOW = 1_800_000_000


def ref(c: str) -> BundleRef:
    return BundleRef(c * 64, c, "1", ChunkPlan.of(b"x" * 2000, 1024), Requirements())


def doc(seq: int, since: int | None = None, **chans: int) -> Desired:
    entries = {n: ChannelDesired(s, "install", ref("b")) for n, s in chans.items()}
    return Desired("dev1", seq, NOW, NOW + 60, "install", ref("a"), since=since, channels=entries)


def test_a_device_from_before_channels_has_accepted_its_default_channel_at_its_last_seq():
    assert accepted({"desired_seq": 5, "issued_max": NOW}) == {"default": 5}
    assert accepted({}) == {"default": 0}
    assert accepted({"desired_seq": 9, "channels": {"default": 4, "detector": 9}}) == {"default": 4, "detector": 9}


def test_a_document_from_a_hub_without_channels_starts_the_default_job_every_time():
    assert [(n, d.seq) for n, d in due(doc(6), {"default": 5})] == [("default", 6)]


def test_a_document_for_another_channel_leaves_an_installed_default_alone():
    jobs = due(doc(6, since=5, detector=6), accepted({"desired_seq": 5}))
    assert [(n, d.seq, d.bundle.name) for n, d in jobs] == [("detector", 6, "b")]


def test_each_channel_starts_only_when_its_own_entry_changed():
    seen = {"default": 4, "detector": 6, "pose": 3}
    assert [n for n, _ in due(doc(7, since=4, detector=6, pose=7), seen)] == ["pose"]
    assert [n for n, _ in due(doc(8, since=8, detector=6, pose=7), seen)] == ["default", "pose"]
    assert due(doc(8, since=0, detector=6), {"detector": 6}) == []  # since 0: no default entry at all


def test_the_default_channel_keeps_the_single_model_layout_and_others_live_below(tmp_path: Path):
    (tmp_path / "root.json").write_text("{}")
    conf = {"device_id": "dev1", "broker": "mqtt://127.0.0.1:1883", "state_dir": "s", "root": "root.json"}
    cfg = from_dict(conf, base=tmp_path, env={})
    assert channel_config(cfg, "default") is cfg
    assert channel_config(cfg, "detector").state_dir == tmp_path / "s" / "channels" / "detector"
    assert installed(cfg) == []
    for name in ("pose", "detector", "Not-A-Name"):
        (tmp_path / "s" / "channels" / name).mkdir(parents=True)
    assert installed(cfg) == ["detector", "pose"]
