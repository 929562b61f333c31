"""Pulling from the hub's registry: a tiny real HTTP server plays the hub's contract."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from cloud.hub import Listed, plan_pulls
from protocol.bundle import sha256_hex
from protocol.signing import SigningKey

from .conftest import Setup, client_for, make_archive, portal_of, service_of, tiny_model

TOKEN = "hub-viewer-token"


def listed(name: str, version: str, created: int, onnx: bool = True, sha: str = "") -> Listed:
    sha = sha or sha256_hex(f"{name}{version}".encode())
    return Listed(sha256_hex(sha.encode()), name, version, sha, 100, created, onnx)


def test_plan_pulls_keeps_the_newest_onnx_bundles_per_name_that_are_missing() -> None:
    a1, a2, a3 = listed("a", "1", 1), listed("a", "2", 2), listed("a", "3", 3)
    edge_only = listed("b", "1", 5, onnx=False)
    c1 = listed("c", "1", 1)
    assert plan_pulls([a1, a2, a3, edge_only, c1], set()) == [a3, a2, c1]
    assert plan_pulls([a1, a2, a3, c1], {a3.archive_sha256, c1.archive_sha256}) == [a2]
    assert plan_pulls([a1, a2, a3], set(), keep=1) == [a3]
    assert plan_pulls([], set()) == []


class FakeHub:
    """Serves ``GET /api/v1/bundles`` and ``/api/v1/bundles/{digest}/archive`` like the hub."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.archives: dict[str, bytes] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hub.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, b'{"detail": "missing or unknown bearer token"}')
                    return
                if self.path.startswith("/api/v1/bundles?"):
                    body = json.dumps({"items": hub.items, "total": len(hub.items), "limit": 100, "offset": 0})
                    self._send(200, body.encode())
                    return
                parts = self.path.split("/")
                if len(parts) == 6 and parts[5] == "archive" and parts[4] in hub.archives:
                    self._send(200, hub.archives[parts[4]], "application/octet-stream")
                    return
                self._send(404, b'{"detail": "not found"}')

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, archive: bytes, name: str, version: str, created: int, lie_about_sha: bool = False) -> str:
        digest = sha256_hex(archive + b"digest")  # any 64-hex id works for the contract
        sha = sha256_hex(b"not it") if lie_about_sha else sha256_hex(archive)
        self.items.append(
            {
                "digest": digest,
                "name": name,
                "version": version,
                "archive_sha256": sha,
                "size": len(archive),
                "created": created,
                "revision": 1,
                "artifacts": [{"name": "model.onnx", "role": "onnx"}],
            }
        )
        self.archives[digest] = archive
        return sha

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub()
    yield h
    h.close()


def test_bundles_pulled_from_the_hub_are_verified_then_served(setup: Setup, trust: Any, hub: FakeHub) -> None:
    good = tiny_model(seed=3)
    good_sha = hub.publish(make_archive(trust.targets_key, "tiny", "1", good.onnx), "tiny", "1", 10)
    hub.publish(make_archive(SigningKey.generate(), "evil", "1", good.onnx), "evil", "1", 10)
    bad_sha = hub.publish(make_archive(trust.targets_key, "liar", "1", good.onnx), "liar", "1", 10, lie_about_sha=True)
    with client_for(setup, trust, hub=hub.url, token=TOKEN, hub_poll_s=3600) as client:
        # startup pulls once before it reports ready
        assert (setup.bundles / f"{good_sha}.efb").exists()
        assert not (setup.bundles / f"{bad_sha}.efb").exists()
        assert len(list(setup.bundles.glob("*.efb"))) == 2
        listing = client.get("/v1/models").json()
        assert [m["name"] for m in listing["models"]] == ["tiny"]
        assert [r["reason"] for r in listing["refused"]] == ["unknown_key"]
        x = np.zeros((1, 8, 8, 1), np.float32)
        r = client.post("/v1/models/tiny/predict", json={"inputs": x.tolist()})
        assert np.allclose(r.json()["outputs"]["scores"], good.expected(x), atol=1e-5)
    assert all(p.startswith("/api/v1/bundles") for p in hub.requests)


def test_wrong_token_or_dead_hub_is_logged_and_the_folder_still_serves(
    setup: Setup, trust: Any, hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    from cloud.hub import HubError, HubPuller
    from tests.cloud.conftest import drop

    drop(setup.bundles, make_archive(trust.targets_key, "local", "1", tiny_model().onnx))
    with client_for(setup, trust, hub=hub.url, token="wrong-token", hub_poll_s=3600) as client:
        service = service_of(client)
        with pytest.raises(HubError, match="HTTP 401"):
            HubPuller(service.config.hub, setup.bundles, service.folder).pull_once()
        assert client.get("/readyz").status_code == 200
    hub.close()
    with client_for(setup, trust, hub=hub.url, token=TOKEN, hub_poll_s=3600) as client:
        service = service_of(client)
        with pytest.raises(HubError):
            HubPuller(service.config.hub, setup.bundles, service.folder).pull_once()
        assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["local"]


def test_a_version_published_later_is_pulled_on_the_next_poll_and_served_beside_the_first(
    setup: Setup, trust: Any, hub: FakeHub
) -> None:
    from cloud.hub import HubPuller

    hub.publish(make_archive(trust.targets_key, "tiny", "1", tiny_model(seed=1).onnx, created=100), "tiny", "1", 100)
    with client_for(setup, trust, hub=hub.url, token=TOKEN, hub_poll_s=3600) as client:
        service = service_of(client)
        assert [m["version"] for m in client.get("/v1/models").json()["models"]] == ["1"]
        v2 = tiny_model(seed=2)
        hub.publish(make_archive(trust.targets_key, "tiny", "2", v2.onnx, created=200), "tiny", "2", 200)
        portal_of(client).call(HubPuller(service.config.hub, setup.bundles, service.folder).poll)
        listing = {m["version"]: m["default"] for m in client.get("/v1/models").json()["models"]}
        assert listing == {"1": False, "2": True}
        x = np.ones((1, 8, 8, 1), np.float32)
        r = client.post("/v1/models/tiny/predict", json={"inputs": x.tolist()})
        assert np.allclose(r.json()["outputs"]["scores"], v2.expected(x), atol=1e-5)
