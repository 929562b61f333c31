"""hub.hardexamples: chunks of hard examples from devices become one file and one row per
(device, id), whatever the order, the duplicates or a lost hub state; listed, read (operator
only), browsed on the dashboard and exported as a dataset folder."""

from __future__ import annotations

import csv
import io
import json
import os
import time

from fastapi.testclient import TestClient

from hub import hardexamples
from hub.models import Bundle, HardExample
from hub.server import Hub
from hub.transport import MemoryPublisher
from protocol.samples import CHUNK_BYTES, parse_receipt, split

from .conftest import OPERATOR, VIEWER

DIGEST = "a" * 64
JPEG = b"\xff\xd8\xff" + bytes(range(256)) * ((CHUNK_BYTES * 2) // 256 + 5)


def add_bundle(hub: Hub, digest: str = DIGEST, name: str = "digits", version: str = "3") -> None:
    with hub.fleet.session() as s:
        s.add(Bundle(digest=digest, name=name, version=version, archive_sha256="0" * 64))
        s.commit()


def chunks(sid: str = "sample-0001", data: bytes = JPEG, device: str = "dev-1", bundle: str = DIGEST):
    meta = {"confidence": 0.21, "measure": "max_score", "answer": {"task": "classification", "top": [{"label": "7"}]}}
    return split(device, sid, bundle, 1_800_000_000, "image/jpeg", data, meta)


def receipts(pub: MemoryPublisher):
    return [parse_receipt(m.payload) for m in pub.sent if m.topic.endswith("/sampled")]


def send(hub: Hub, cs) -> None:
    hub.ingest.handle([(f"ef/v1/dev/{c.device}/sample", c.to_bytes()) for c in cs])


def rows(hub: Hub) -> list[HardExample]:
    with hub.fleet.session() as s:
        from sqlmodel import select

        return list(s.exec(select(HardExample)).all())


def test_chunks_out_of_order_and_twice_store_the_example_once(memhub):
    hub, pub = memhub
    add_bundle(hub)
    c = chunks()
    assert len(c) == 3
    send(hub, [c[2]])
    send(hub, [c[0], c[2]])  # a resend in the same batch as a new chunk
    assert receipts(pub)[-1].have == (0, 2) and not receipts(pub)[-1].done
    send(hub, [c[1]])
    assert receipts(pub)[-1].done
    send(hub, c)  # the device missed the receipt and sends it all again
    assert all(r.done for r in receipts(pub)[-3:])
    (row,) = rows(hub)
    assert (row.model, row.version, row.device, row.confidence) == ("digits", "3", "dev-1", 0.21)
    assert (hardexamples.root(hub.fleet) / row.path).read_bytes() == JPEG
    assert row.path == "digits/3/dev-1@sample-0001.jpg"
    assert not any((hardexamples.root(hub.fleet) / ".parts").rglob("*.jpg"))


def test_two_devices_whose_ids_run_together_never_overwrite_each_others_example(memhub):
    hub, _ = memhub
    add_bundle(hub)
    other = b"\xff\xd8\xff other device"
    send(hub, chunks(sid="cdefghij", device="a-b"))  # "a-b" + "-" + "cdefghij" ...
    send(hub, chunks(sid="b-cdefghij", device="a", data=other))  # ... = "a" + "-" + "b-cdefghij"
    got = {r.device: (hardexamples.root(hub.fleet) / r.path).read_bytes() for r in rows(hub)}
    assert got == {"a-b": JPEG, "a": other}


def test_a_new_input_under_an_old_id_never_mixes_with_the_old_chunks(memhub):
    hub, pub = memhub
    add_bundle(hub)
    old = chunks(data=JPEG)
    new = chunks(data=JPEG[:-7] + b"1234567")
    send(hub, [old[0], old[1]])
    send(hub, [new[2]])  # other sha256: the parts start over
    assert receipts(pub)[-1].have == (2,)
    send(hub, [new[0], new[1]])
    (row,) = rows(hub)
    assert (hardexamples.root(hub.fleet) / row.path).read_bytes() == JPEG[:-7] + b"1234567"


def test_chunks_nobody_finishes_are_removed_a_week_after_the_last_one(memhub):
    hub, _ = memhub
    add_bundle(hub)
    send(hub, chunks("sample-0001")[:1])
    send(hub, chunks("sample-0002")[:1])
    parts = hardexamples.root(hub.fleet) / ".parts" / "dev-1"
    old = time.time() - hardexamples.PARTS_MAX_AGE_S - 60
    for p in (parts / "sample-0001").iterdir():
        os.utime(p, (old, old))
    assert hardexamples.prune_parts(hub.fleet, time.time()) == 1
    assert not (parts / "sample-0001").exists() and (parts / "sample-0002").exists()


def test_an_example_of_a_bundle_the_hub_does_not_know_is_refused_by_name(memhub):
    hub, pub = memhub
    send(hub, chunks(bundle="f" * 64)[:1])
    (r,) = receipts(pub)
    assert "f" * 64 in r.refused and rows(hub) == []


def test_the_api_lists_by_model_version_and_only_an_operator_reads_the_bytes(memhub, client: TestClient):
    hub, _ = memhub
    add_bundle(hub)
    add_bundle(hub, "b" * 64, "digits", "4")
    send(hub, chunks("sample-0001"))
    send(hub, chunks("sample-0002", data=b"\xff\xd8\xff small"))
    send(hub, chunks("sample-0003", bundle="b" * 64))
    page = client.get("/api/v1/hard-examples", params={"model": "digits", "version": "3"}).json()
    assert page["total"] == 2 and [i["sample_id"] for i in page["items"]] == ["sample-0002", "sample-0001"]
    assert client.get("/api/v1/hard-examples", params={"limit": 1, "offset": 1}).json()["items"][0]["version"] == "3"
    versions = client.get("/api/v1/hard-examples/versions").json()["items"]
    assert [(v["model"], v["version"], v["count"]) for v in versions] == [("digits", "3", 2), ("digits", "4", 1)]
    ident = page["items"][1]["id"]
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    assert client.get(f"/api/v1/hard-examples/{ident}", headers=viewer).json()["sha256"] == chunks()[0].sha256
    assert client.get(f"/api/v1/hard-examples/{ident}/content", headers=viewer).status_code == 403
    got = client.get(f"/api/v1/hard-examples/{ident}/content", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert got.status_code == 200 and got.content == JPEG and got.headers["content-type"] == "image/jpeg"
    assert client.get("/api/v1/hard-examples/999999").status_code == 404


def test_the_dashboard_shows_thumbnails_to_an_operator_and_only_metadata_to_a_viewer(memhub, client: TestClient):
    hub, _ = memhub
    add_bundle(hub)
    send(hub, chunks())
    (row,) = rows(hub)
    operator, viewer = ({"Authorization": f"Bearer {t}"} for t in (OPERATOR, VIEWER))
    page = client.get("/ui/hard-examples", params={"model": "digits", "version": "3"}, headers=operator)
    assert page.status_code == 200, page.text
    assert f'<img src="/ui/hard-examples/{row.id}/content"' in page.text and "hard-examples export" in page.text
    assert client.get(f"/ui/hard-examples/{row.id}/content", headers=operator).content == JPEG
    page = client.get("/ui/hard-examples", headers=viewer)
    assert page.status_code == 200 and "<img src" not in page.text and "operator role only" in page.text
    assert client.get(f"/ui/hard-examples/{row.id}/content", headers=viewer).status_code == 403


def test_an_operator_deletes_a_model_versions_examples_rows_and_files_and_it_is_audited(memhub, client: TestClient):
    hub, _ = memhub
    add_bundle(hub)
    add_bundle(hub, "b" * 64, "digits", "4")
    send(hub, chunks("sample-0001"))
    send(hub, chunks("sample-0002", bundle="b" * 64))
    files = {r.version: hardexamples.root(hub.fleet) / r.path for r in rows(hub)}
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    assert client.delete("/api/v1/hard-examples", params={"model": "digits"}, headers=viewer).status_code == 403
    gone = client.delete("/api/v1/hard-examples", params={"model": "digits", "version": "3"})
    assert gone.status_code == 200 and gone.json() == {"deleted": 1}
    assert not files["3"].exists() and files["4"].exists() and [r.version for r in rows(hub)] == ["4"]
    audit = client.get("/api/v1/audit").json()["items"]
    assert any(a["action"] == "hard_examples.delete" and a["target"] == "digits 3" for a in audit)


def test_export_rows_name_each_file_and_leave_the_label_to_fill():
    item = {
        "id": 1,
        "device": "dev-1",
        "sample_id": "sample-0001",
        "bundle": DIGEST,
        "model": "digits",
        "version": "3",
        "ts": 5,
        "received": 6,
        "content_type": "image/png",
        "size": 3,
        "sha256": "0" * 64,
        "confidence": 0.25,
        "measure": "max_score",
        "answer": {"task": "classification", "top": [{"index": 7, "label": "seven", "score": 0.25}]},
    }
    labels, meta = hardexamples.export_rows([item])
    (row,) = list(csv.DictReader(io.StringIO(labels.decode())))
    assert row["file"] == "images/dev-1@sample-0001.png" and row["label"] == "" and row["predicted"] == "seven"
    assert json.loads(meta)["file"] == row["file"]
