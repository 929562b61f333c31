"""agent.hardexamples: kept inputs on disk within the caps, uploaded in chunks, resumed after a
restart with only what the hub lacks, deleted once the hub has them."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from agent.hardexamples import HardExamples, content_of
from agent.request import Request
from agent.sampling import Policy
from protocol.samples import CHUNK_BYTES, Receipt, parse_sample

DIGEST = "d" * 64
UNSURE = {"task": "classification", "top": [{"index": 3, "label": "cat", "score": 0.3}], "predictions": [[0.3] * 3]}
SCORES = np.array([0.3, 0.35, 0.35])


def jpeg(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def policy(**kw: object) -> Policy:
    return Policy.from_dict({"enabled": True, "threshold": 0.5, "per_minute": 100, "per_hour": 100, **kw})


def offer(h: HardExamples, data: bytes, doc: dict = UNSURE) -> str | None:
    return h.offer(Request(image=data), lambda: doc, SCORES, "mnv1", DIGEST, None)


def test_off_unless_a_policy_turns_it_on_and_the_bundle_can(tmp_path):
    off = HardExamples(tmp_path / "a", "dev-1", None)
    assert offer(off, jpeg(1)) is None and off.pending() == []
    signed = {"hard_examples": {"enabled": True, "threshold": 0.9}}
    assert off.offer(Request(image=jpeg(1)), lambda: UNSURE, SCORES, "mnv1", "e" * 64, signed) == "sample"
    other = HardExamples(tmp_path / "b", "dev-1", policy(models=["digits"]))
    assert offer(other, jpeg(1)) is None  # the config names another model


def test_a_day_cap_holds_and_a_kept_input_is_on_disk_with_its_answer(tmp_path):
    h = HardExamples(tmp_path, "dev-1", policy(per_day=2))
    got = [offer(h, jpeg(i)) for i in range(4)]
    assert got == ["sample", "sample", "day_cap", "day_cap"]
    assert offer(h, jpeg(9), {**UNSURE, "top": [{"index": 1, "label": "dog", "score": 0.9}]}) is not None
    pending = h.pending()
    assert len(pending) == 2 and {p.head["content_type"] for p in pending} == {"image/jpeg"}
    head = pending[0].head
    assert head["meta"]["answer"]["top"][0]["label"] == "cat" and "predictions" not in head["meta"]["answer"]
    assert (tmp_path / f"{pending[0].id}.bin").read_bytes() == jpeg(0)
    again = HardExamples(tmp_path, "dev-1", policy(per_day=2))  # a restart does not reset the caps
    assert offer(again, jpeg(5)) == "day_cap"


def test_the_disk_cap_bounds_what_waits_for_upload(tmp_path):
    one = len(jpeg(0))
    h = HardExamples(tmp_path, "dev-1", policy(disk_bytes=one * 2 + 10))
    assert [offer(h, jpeg(0)) for _ in range(3)] == ["sample", "sample", "disk_cap"]
    assert h.disk_used == 2 * one


def test_tensors_and_json_inputs_are_kept_with_their_own_types_an_unknown_image_is_not():
    t = content_of(Request(tensor=np.zeros((1, 4), np.float32)))
    assert t is not None and t[0] == "application/x-npy" and np.load(io.BytesIO(t[1])).shape == (1, 4)
    j = content_of(Request(inputs=[[1.0, 2.0]]))
    assert j is not None and json.loads(j[1]) == {"inputs": [[1.0, 2.0]]}
    assert content_of(Request(image=b"not an image format we know")) is None


def test_upload_resumes_with_only_the_missing_chunks_after_a_restart_and_ends_when_the_hub_has_it(tmp_path):
    big = np.random.default_rng(0).integers(0, 255, (CHUNK_BYTES * 2 + 100,), dtype=np.uint8).tobytes()
    big = b"\xff\xd8\xff" + big  # a JPEG by its magic: the shell does not decode it
    h = HardExamples(tmp_path, "dev-1", policy(max_input_bytes=len(big)))
    assert offer(h, big) == "sample"
    sent: list[bytes] = []
    spent: list[int] = []
    n = h.pump(lambda p: sent.append(p) or True, lambda n: True, spent.append, now=0.0)
    chunks = [parse_sample(p) for p in sent]
    assert [c.index for c in chunks] == [0, 1, 2] and n == sum(spent) == sum(len(p) for p in sent)
    assert h.pump(lambda p: sent.append(p) or True, lambda n: True, spent.append, now=1.0) == 0  # not due again yet
    h.on_receipt(Receipt("dev-1", chunks[0].id, (0, 2)))  # the hub has 0 and 2

    restarted = HardExamples(tmp_path, "dev-1", policy(max_input_bytes=len(big)))
    resent: list[bytes] = []
    restarted.pump(lambda p: resent.append(p) or True, lambda n: True, lambda n: None, now=0.0)
    assert [parse_sample(p).index for p in resent] == [1]
    restarted.on_receipt(Receipt("dev-1", chunks[0].id, (0, 1, 2), True))
    assert restarted.pending() == [] and restarted.disk_used == 0
    assert restarted.status()["counts"]["uploaded"] == 1


def test_the_byte_budget_and_a_failed_publish_stop_the_upload_and_keep_the_example(tmp_path):
    h = HardExamples(tmp_path, "dev-1", policy())
    offer(h, jpeg(0))
    assert h.pump(lambda p: True, lambda n: False, lambda n: None, now=0.0) == 0
    assert h.pump(lambda p: False, lambda n: True, lambda n: None, now=2.0) == 0
    assert len(h.pending()) == 1
    assert h.pump(lambda p: True, lambda n: True, lambda n: None, now=2.5) == 0  # under a second since the last
    assert h.pump(lambda p: True, lambda n: True, lambda n: None, now=4.0) > 0


def test_a_refusal_from_the_hub_drops_the_example(tmp_path):
    h = HardExamples(tmp_path, "dev-1", policy())
    offer(h, jpeg(0))
    (p,) = h.pending()
    h.on_receipt(Receipt("dev-1", p.id, refused="bundle not known"))
    assert h.pending() == [] and h.status()["counts"]["refused"] == 1


def test_a_kept_input_damaged_on_disk_is_dropped_not_uploaded_with_a_hash_that_matches_the_damage(tmp_path):
    h = HardExamples(tmp_path, "dev-1", policy())
    offer(h, jpeg(0))
    (p,) = h.pending()
    path = tmp_path / f"{p.id}.bin"
    path.write_bytes(path.read_bytes()[:-7])  # a torn write after the head was kept
    sent: list[bytes] = []
    assert h.pump(lambda payload: sent.append(payload) or True, lambda n: True, lambda n: None, now=0.0) == 0
    assert sent == [] and h.pending() == []
