"""Hot-loading from the bundle folder: new versions appear, old ones drain, nothing is dropped."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from cloud.folder import Seen, Stamp, plan

from .conftest import Setup, Tiny, client_for, drop, make_archive, png, portal_of, service_of, tiny_model

A, B, C = Stamp(10, 1), Stamp(10, 2), Stamp(20, 3)


def test_plan_reads_new_and_changed_files_and_reports_gone_ones() -> None:
    cases = [
        ({}, {}, (), ()),
        ({}, {"a.efb": A}, ("a.efb",), ()),
        ({"a.efb": Seen(A, "d1")}, {"a.efb": A}, (), ()),
        ({"a.efb": Seen(A, "d1")}, {"a.efb": B}, ("a.efb",), ()),  # rewritten in place
        ({"a.efb": Seen(A, None)}, {"a.efb": A}, (), ()),  # refused: not retried
        ({"a.efb": Seen(A, None)}, {"a.efb": C}, ("a.efb",), ()),  # ...until it changes
        ({"a.efb": Seen(A, "d1")}, {}, (), ("a.efb",)),
        ({"a.efb": Seen(A, "d1")}, {"b.efb": A}, ("b.efb",), ("a.efb",)),
    ]
    for seen, present, read, gone in cases:
        p = plan(seen, present)
        assert (p.read, p.gone) == (read, gone), (seen, present)


def sync(client: Any) -> None:
    portal_of(client).call(service_of(client).folder.sync)


def versions(client: Any) -> dict[str, bool]:
    return {m["version"]: m["default"] for m in client.get("/v1/models").json()["models"]}


def test_new_version_dropped_in_the_folder_serves_beside_the_old_one(setup: Setup, trust: Any) -> None:
    v1, v2 = tiny_model(seed=1), tiny_model(seed=2)
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", v1.onnx, created=1000))
    x = np.random.default_rng(0).random((1, 8, 8, 1)).astype(np.float32)
    with client_for(setup, trust) as client:
        assert versions(client) == {"1": True}
        drop(setup.bundles, make_archive(trust.targets_key, "tiny", "2", v2.onnx, created=2000))
        sync(client)
        assert versions(client) == {"1": False, "2": True}
        r = client.post("/v1/models/tiny/predict", json={"inputs": x.tolist()})
        assert r.json()["model"]["version"] == "2"
        assert np.allclose(r.json()["outputs"]["scores"], v2.expected(x), atol=1e-5)
        r = client.post("/v1/models/tiny/versions/1/predict", json={"inputs": x.tolist()})
        assert np.allclose(r.json()["outputs"]["scores"], v1.expected(x), atol=1e-5)
        img = {"file": ("a.png", png(np.zeros((8, 8), np.uint8)), "image/png")}
        r = client.post("/v1/models/tiny/versions/1/predict/image", files=img)
        assert r.status_code == 200 and r.json()["model"]["version"] == "1"


def test_default_version_follows_created_time_not_arrival(setup: Setup, trust: Any) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "2", tiny_model(seed=2).onnx, created=2000))
    with client_for(setup, trust) as client:
        drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model(seed=1).onnx, created=1000))
        sync(client)
        assert versions(client) == {"1": False, "2": True}


def test_same_version_with_different_content_is_refused(setup: Setup, trust: Any) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model(seed=1).onnx, created=1000))
    with client_for(setup, trust) as client:
        drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model(seed=9).onnx, created=1000))
        sync(client)
        listing = client.get("/v1/models").json()
        assert len(listing["models"]) == 1
        assert listing["refused"][0]["reason"] == "replayed"
        assert "needs a new version" in listing["refused"][0]["detail"]


def test_same_bundle_twice_is_served_once(setup: Setup, trust: Any, tiny: Tiny) -> None:
    archive = make_archive(trust.targets_key, "tiny", "1", tiny.onnx)
    first = setup.bundles / "a-first.efb"  # names fix the scan order
    second = setup.bundles / "b-second.efb"
    first.write_bytes(archive)
    second.write_bytes(archive)
    with client_for(setup, trust) as client:
        assert len(client.get("/v1/models").json()["models"]) == 1
        first.unlink()
        sync(client)  # the file it was loaded from went away; the copy keeps it served
        assert len(client.get("/v1/models").json()["models"]) == 1
        second.unlink()
        sync(client)
        assert client.get("/v1/models").json()["models"] == []


def test_half_written_archive_is_retried_once_complete(setup: Setup, trust: Any, tiny: Tiny) -> None:
    archive = make_archive(trust.targets_key, "tiny", "1", tiny.onnx)
    path = setup.bundles / "incoming.efb"
    path.write_bytes(archive[: len(archive) // 2])
    with client_for(setup, trust) as client:
        assert client.get("/v1/models").json()["refused"][0]["reason"] == "length_mismatch"
        path.write_bytes(archive)
        sync(client)
        listing = client.get("/v1/models").json()
        assert [m["name"] for m in listing["models"]] == ["tiny"] and listing["refused"] == []


def test_swapping_versions_under_load_drops_no_request(setup: Setup, trust: Any) -> None:
    v1, v2 = tiny_model(seed=1), tiny_model(seed=2)
    old = drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", v1.onnx, created=1000))
    results: list[tuple[int, str]] = []
    stop = threading.Event()
    body = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}

    with client_for(setup, trust, max_wait_ms=5.0) as client:

        def hammer() -> None:
            while not stop.is_set():
                r = client.post("/v1/models/tiny/predict", json=body)
                results.append((r.status_code, r.json().get("model", {}).get("version", r.text)))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        while len(results) < 20:
            threading.Event().wait(0.01)
        drop(setup.bundles, make_archive(trust.targets_key, "tiny", "2", v2.onnx, created=2000))
        sync(client)
        old.unlink()
        sync(client)  # version 1 leaves the catalog and drains its queue
        seen_after = len(results)
        while len(results) < seen_after + 20:
            threading.Event().wait(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert versions(client) == {"2": True}
    assert {code for code, _ in results} == {200}, [r for r in results if r[0] != 200][:3]
    served = [v for _, v in results]
    assert served[0] == "1" and served[-1] == "2" and set(served) == {"1", "2"}


def test_removed_file_unloads_its_version(setup: Setup, trust: Any, tiny: Tiny) -> None:
    path: Path = drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    with client_for(setup, trust) as client:
        path.unlink()
        sync(client)
        assert client.get("/v1/models").json()["models"] == []
        assert client.get("/readyz").status_code == 503
        assert "edgefleet_cloud_models_loaded 0.0" in client.get("/metrics").text
