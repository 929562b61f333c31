"""hub.deltas.prepare / Preparer: the deltas a rollout will need are made when the bundle is
pushed, from every base the fleet runs of that model, so the rollout's POST finds them made; a
build already under way is waited for, not repeated."""

from __future__ import annotations

import os
import threading
import time

from hub import deltas, desired
from hub.models import Bundle, Device
from protocol.delta import ALGO_MEMBERS2
from protocol.messages import parse_desired_payload
from protocol.signing import Envelope

from .conftest import wait_for
from .test_api import push


def _versions(client, bundle_dir, n: int, name: str = "digits") -> list[dict]:
    model = os.urandom(30_000)
    out = []
    for i in range(n):
        edited = model[: 1000 * (i + 1)] + os.urandom(200) + model[1000 * (i + 1) + 200 :]
        out.append(push(client, bundle_dir(name=name, version=f"{i + 1}.0.0", model_bytes=edited)))
    return out


def _devices(hub, *rows: Device) -> None:
    with hub.fleet.session() as s:
        for d in rows:
            s.add(d)
        s.commit()


def _made(hub) -> set[str]:
    folder = hub.fleet.store.root / "deltas"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


class CountBuilds:
    """Counts the deltas actually made (hub.deltas.smallest), optionally slowly."""

    def __init__(self, monkeypatch, pause: float = 0.0) -> None:
        self.calls = 0
        self.pause = pause
        real = deltas.smallest

        def counting(*a, **kw):
            self.calls += 1
            time.sleep(self.pause)
            return real(*a, **kw)

        monkeypatch.setattr(deltas, "smallest", counting)


def test_a_pushed_bundle_gets_a_delta_from_each_base_its_model_runs_on_and_none_from_other_models(
    memhub, client, bundle_dir
):
    hub, _ = memhub
    v1, v2, v3 = _versions(client, bundle_dir, 3)
    (other,) = _versions(client, bundle_dir, 1, name="faces")
    _devices(
        hub,
        Device(id="a", active_digest=v1["digest"]),
        Device(id="b", active_digest=v1["digest"]),  # same base: one delta
        Device(id="c", active_digest=v2["digest"]),
        Device(id="d", active_digest=v3["digest"]),  # already runs the target
        Device(id="e", active_digest=other["digest"]),  # another model: no delta from it
        Device(id="f", active_digest=None),
    )
    assert deltas.prepare(hub.fleet, v3["digest"]) == (2, 0)
    t = v3["archive_sha256"]
    assert _made(hub) == {f"{t}-{v1['digest']}.zst", f"{t}-{v2['digest']}.zst"}
    assert deltas.prepare(hub.fleet, v3["digest"]) == (0, 2)  # made once


def test_an_agent_that_announced_members_2_gets_its_own_variant_prepared(memhub, client, bundle_dir):
    hub, _ = memhub
    v1, v2 = _versions(client, bundle_dir, 2)
    _devices(
        hub,
        Device(id="old", active_digest=v1["digest"]),
        Device(id="new", active_digest=v1["digest"], inventory={"features": [ALGO_MEMBERS2]}),
    )
    assert deltas.prepare(hub.fleet, v2["digest"]) == (2, 0)
    t = v2["archive_sha256"]
    assert _made(hub) == {f"{t}-{v1['digest']}.zst", f"{t}-{v1['digest']}.m2.zst"}


def test_a_rollout_issued_after_the_deltas_were_prepared_builds_none(memhub, client, bundle_dir, monkeypatch):
    hub, pub = memhub
    v1, v2 = _versions(client, bundle_dir, 2)
    _devices(hub, Device(id="dev1", active_digest=v1["digest"]))
    deltas.prepare(hub.fleet, v2["digest"])
    builds = CountBuilds(monkeypatch)
    with hub.fleet.session() as s:
        out = desired.issue(hub.fleet, s, s.get(Device, "dev1"), s.get(Bundle, v2["digest"]), "install", "r1")
        s.commit()
    assert builds.calls == 0
    doc = parse_desired_payload(Envelope.parse(out.payload).payload)
    assert doc.delta is not None and doc.delta.base == v1["digest"]  # the document still names it


def test_a_post_that_needs_a_delta_being_prepared_waits_for_it_instead_of_making_it_again(
    memhub, client, bundle_dir, monkeypatch
):
    hub, _ = memhub
    v1, v2 = _versions(client, bundle_dir, 2)
    _devices(hub, Device(id="dev1", active_digest=v1["digest"]))
    builds = CountBuilds(monkeypatch, pause=0.3)
    with hub.fleet.session() as s:
        d, b = s.get(Device, "dev1"), s.get(Bundle, v2["digest"])
        s.expunge_all()
    results: list[object] = []
    workers = [threading.Thread(target=lambda: results.append(deltas.for_device(hub.fleet, d, b)[0])) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert builds.calls == 1
    assert len(results) == 3 and results[0] is not None and results.count(results[0]) == 3


def test_the_hubs_preparer_makes_them_after_a_push_and_the_bundle_says_when_it_is_done(memhub, client, bundle_dir):
    hub, _ = memhub
    (v1,) = _versions(client, bundle_dir, 1)
    _devices(hub, Device(id="dev1", active_digest=v1["digest"]))
    assert hub.preparer is not None
    hub.preparer.start()
    try:
        model = os.urandom(30_000)
        v2 = push(client, bundle_dir(version="2.0.0", model_bytes=model))
        v3 = push(client, bundle_dir(version="3.0.0", model_bytes=model[:29_000] + os.urandom(1000)))
        for v in (v2, v3):
            wait_for(lambda v=v: not client.get(f"/api/v1/bundles/{v['digest']}").json()["deltas_preparing"])
        made = _made(hub)
        assert f"{v3['archive_sha256']}-{v1['digest']}.zst" in made
        assert f"{v2['archive_sha256']}-{v1['digest']}.zst" in made
    finally:
        hub.preparer.stop()


def test_the_preparer_outlives_a_bundle_it_cannot_prepare_and_goes_on_with_the_next(memhub, client, bundle_dir):
    hub, _ = memhub
    v1, v2 = _versions(client, bundle_dir, 2)
    _devices(hub, Device(id="dev1", active_digest=v1["digest"]))
    p = deltas.Preparer(hub.fleet)
    p.start()
    try:
        p.submit("0" * 64)  # no such bundle: NotFound, logged
        p.submit(v2["digest"])
        wait_for(lambda: not p.preparing("0" * 64) and not p.preparing(v2["digest"]))
        assert f"{v2['archive_sha256']}-{v1['digest']}.zst" in _made(hub)
    finally:
        p.stop()


def test_a_hub_never_started_prepares_nothing_and_says_so(memhub, client, bundle_dir):
    hub, _ = memhub
    v1, v2 = _versions(client, bundle_dir, 2)
    assert client.get(f"/api/v1/bundles/{v2['digest']}").json()["deltas_preparing"] is False
    assert _made(hub) == set()
