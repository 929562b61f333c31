"""Desired documents an online device never acknowledged are published again (hub.desired.
republish_pending): a hub replica killed -9 between committing a rollout's documents and
publishing them leaves them in the database only (tests/reliability/test_replica_failover.py
runs the kill; here the lost publish is the publisher's record cleared)."""

from __future__ import annotations

from hub import desired

from .helpers import report, status
from .test_api import push


def test_an_unacknowledged_document_is_sent_again_to_online_devices_only_and_at_most_three_times(
    client, memhub, bundle_dir
):
    hub, pub = memhub
    v1 = push(client, bundle_dir(version="1.0.0"))
    for dev, up in (("d0", True), ("d1", True), ("d2", False)):
        hub.ingest.handle([(f"ef/v1/dev/{dev}/status", status(dev, online=up))])
    body = {"bundle": v1["digest"], "target": {"devices": ["d0", "d1", "d2"]}, "policy": {"cohorts": ["100%"]}}
    assert client.post("/api/v1/rollouts", json=body).status_code == 201
    docs = {m.topic: m.payload for m in pub.sent if m.kind == "desired"}
    assert len(docs) == 3
    # d1 acknowledged its document (a report naming its seq); d0 never heard of it; d2 is offline
    d1_seq = client.get("/api/v1/devices/d1").json()["desired"]["seq"]
    hub.ingest.handle([("ef/v1/dev/d1/report", report("d1", 1, d1_seq, stage="download", bundle=v1["digest"]))])

    assert desired.republish_pending(hub.fleet) == 0  # just issued: not yet
    real = hub.fleet.clock
    hub.fleet.clock = lambda: real() + desired.PENDING_AFTER_S + 1
    try:
        again = []
        for _ in range(desired.PENDING_MAX_RESENDS + 1):
            pub.sent.clear()
            again.append(desired.republish_pending(hub.fleet))
            for m in pub.sent:  # the same signed bytes, retained, for d0 alone
                assert (m.topic, m.retain) == ("ef/v1/dev/d0/desired", True) and m.payload == docs[m.topic]
        assert again == [1, 1, 1, 0]
    finally:
        hub.fleet.clock = real


def test_a_hub_behind_on_its_own_queues_holds_its_resends_until_it_has_caught_up(client, memhub, bundle_dir):
    # the acknowledgements it looks for may sit unread in its ingest queue: resending then
    # only adds to the queue (a 10,000-device run sent every document four times)
    hub, pub = memhub
    v1 = push(client, bundle_dir(version="1.0.0"))
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0", online=True))])
    body = {"bundle": v1["digest"], "target": {"devices": ["d0"]}, "policy": {"cohorts": ["100%"]}}
    assert client.post("/api/v1/rollouts", json=body).status_code == 201
    real = hub.fleet.clock
    hub.fleet.clock = lambda: real() + desired.PENDING_AFTER_S + 1
    try:
        pub.behind = desired.PENDING_HOLD_BACKLOG + 1
        assert desired.republish_pending(hub.fleet) == 0
        pub.behind = desired.PENDING_HOLD_BACKLOG
        assert desired.republish_pending(hub.fleet) == 1  # caught up: the one held is sent, counted once
        assert hub.fleet.pending_resent == {("d0", client.get("/api/v1/devices/d0").json()["desired"]["seq"]): 1}
    finally:
        hub.fleet.clock = real


def test_a_fleet_too_busy_to_acknowledge_is_sent_a_bounded_number_again_each_scan_least_resent_first(
    client, memhub, bundle_dir, monkeypatch
):
    # devices or a broker behind (which the hub cannot see) acknowledge nothing: resending every
    # document each scan would only add to what they are behind on
    hub, pub = memhub
    v1 = push(client, bundle_dir(version="1.0.0"))
    ids = ["d0", "d1", "d2"]
    for dev in ids:
        hub.ingest.handle([(f"ef/v1/dev/{dev}/status", status(dev, online=True))])
    body = {"bundle": v1["digest"], "target": {"devices": ids}, "policy": {"cohorts": ["100%"]}}
    assert client.post("/api/v1/rollouts", json=body).status_code == 201
    docs = {m.topic: m.payload for m in pub.sent if m.kind == "desired"}
    monkeypatch.setattr(desired, "PENDING_MAX_PER_SCAN", 2)
    real = hub.fleet.clock
    hub.fleet.clock = lambda: real() + desired.PENDING_AFTER_S + 1
    try:
        rounds = []
        for _ in range(6):  # 3 devices x 3 resends, 2 a scan: 5 scans, then nothing
            pub.sent.clear()
            assert desired.republish_pending(hub.fleet) <= 2
            rounds.append(sorted(m.topic.split("/")[3] for m in pub.sent))
            assert all(m.payload == docs[m.topic] for m in pub.sent)  # the same signed bytes
        # every device is sent its document again before any is sent it a second time, and
        # each at most PENDING_MAX_RESENDS times in all
        assert len(rounds[0]) == 2 and set(rounds[0]) | set(rounds[1]) == set(ids)
        sent = [dev for r in rounds for dev in r]
        assert {dev: sent.count(dev) for dev in ids} == {dev: desired.PENDING_MAX_RESENDS for dev in ids}
        assert rounds[-1] == []
    finally:
        hub.fleet.clock = real


def test_a_connect_that_lost_the_session_republishes_in_pages_paced_by_the_hubs_backlog(
    client, memhub, bundle_dir, monkeypatch
):
    # a 10,000-device run: a reconnect without its session sent 10,000 documents at once into
    # a hub queue already behind, on a broker that was the bottleneck (docs/scale.md)
    hub, pub = memhub
    v1 = push(client, bundle_dir(version="1.0.0"))
    ids = [f"d{i}" for i in range(5)]
    for dev in ids:
        hub.ingest.handle([(f"ef/v1/dev/{dev}/status", status(dev, online=True))])
    body = {"bundle": v1["digest"], "target": {"devices": ids}, "policy": {"cohorts": ["100%"]}}
    assert client.post("/api/v1/rollouts", json=body).status_code == 201
    docs = {m.topic: m.payload for m in pub.sent if m.kind == "desired"}
    assert len(docs) == 5
    monkeypatch.setattr(desired, "REPUBLISH_PAGE", 2)

    # caught up: every document in one go, pages of 2, each once, the same signed bytes retained
    pub.sent.clear()
    assert desired.republish(hub.fleet) == 5
    assert sorted(m.topic for m in pub.sent) == sorted(docs) and all(
        m.retain and m.payload == docs[m.topic] for m in pub.sent
    )

    # behind: the first page goes out, the next waits until the hub has caught up
    pub.sent.clear()
    pub.behind = desired.PENDING_HOLD_BACKLOG + 1
    asked: list[int] = []

    def go_on() -> bool:
        asked.append(len(pub.sent))
        if len(asked) == 3:
            pub.behind = 0  # the queue drained while it waited
        return True

    assert desired.republish(hub.fleet, go_on, pause_s=0) == 5
    assert asked[:3] == [0, 2, 2]  # waited with 2 sent, then went on
    assert sorted(m.topic for m in pub.sent) == sorted(docs)

    # a newer connect (or the hub stopping) ends it where it stands: no page after that
    pub.sent.clear()
    pub.behind = desired.PENDING_HOLD_BACKLOG + 1
    calls = iter([True, False])
    assert desired.republish(hub.fleet, lambda: next(calls), pause_s=0) == 2
    assert len(pub.sent) == 2
    pub.behind = 0
