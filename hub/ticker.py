"""What the hub does every ``config.tick`` seconds (or, after a tick that took longer than half
of that, twice what it took: :func:`next_wait`): pick up rotated keys, drive rollouts
(timeouts, soak, gates); every ``desired.PENDING_AFTER_S`` publish again the desired documents
online devices never acknowledged (hub.desired.republish_pending); and, every ALERT_SCAN_S, the
housekeeping (:func:`housekeep`): scan alerts, roll telemetry windows up (:mod:`hub.rollups`) and
prune old windows, rollups, reports, remote-diagnostics commands and hard-example chunks nobody
finished.

The housekeeping only reads telemetry and writes alerts, rollups and deletions, so it can run in
a process of its own (``config.housekeeping == "apart"``: ``edgefleet-hub housekeep``,
:mod:`hub.housekeeper`), where it no longer shares the serving process's interpreter with ingest
(docs/scale.md: at 10,000 devices it was a fifth of that process)."""

from __future__ import annotations

import logging
import time

from . import alerting, commands, desired, hardexamples, rollouts, rollups, rotation, telemetry
from .fleet import Fleet

log = logging.getLogger(__name__)

ALERT_SCAN_S = 30  # how often the ticker scans for offline / latency / drift alerts


def next_wait(interval: float, took: float) -> float:
    """Seconds until the next tick after one that took ``took``: ``interval``, or twice what the
    tick took when that is longer. A tick judges every running rollout's devices and their
    telemetry (hub.evidence), so its cost grows with the fleet; run back to back it would hold
    the rollout lock and the interpreter from the ingest worker, which then falls behind and
    the gates judge ever older telemetry. Paced, ticks take at most a third of the time."""
    return max(interval, 2.0 * took)


def tick(fleet: Fleet) -> None:
    try:
        rotation.reload_keys(fleet)
    except Exception as exc:  # a half-written keys dir must not stop rollouts
        log.error("could not reload keys from %s: %s", fleet.config.keys, exc)
    rollouts.tick(fleet)
    now = fleet.clock()
    if now - fleet.last_pending_scan >= desired.PENDING_AFTER_S:
        fleet.last_pending_scan = now
        desired.republish_pending(fleet)
    if fleet.config.housekeeping == "here" and now - fleet.last_scan >= ALERT_SCAN_S:
        fleet.last_scan = now
        housekeep(fleet)


def housekeep(fleet: Fleet) -> None:
    """Alerts, rollups and pruning: every ALERT_SCAN_S, by the ticker or by ``edgefleet-hub
    housekeep``. Each step's failure is logged and the next step still runs."""
    try:
        alerting.scan(fleet)
    except Exception:
        log.exception("alert scan failed")
    try:
        rollups.roll(fleet)
        rollups.prune(fleet)
    except Exception:  # e.g. a replica rolled the same minute first (unique key): next scan goes on
        log.exception("telemetry rollup or its pruning failed")
    try:
        telemetry.prune_reports(fleet, fleet.config.retention)
        commands.prune(fleet, fleet.config.retention)
        hardexamples.prune_parts(fleet, time.time())  # file times: the wall clock
    except Exception:
        log.exception("pruning reports, commands or hard-example parts failed")
