"""The hub's shared context: what every room of the hub needs, and no noun of its own.

:class:`Fleet` carries the config, the database engine and :meth:`~Fleet.session`, the keys,
the bundle store, the publisher (:meth:`~Fleet.publish` counts what goes out), the metrics,
the clock, the rollout lock, :meth:`~Fleet.audit` and the broker outages the gates must know
about. It owns no thread; the API's request threads, the ingest worker and the ticker pass it
to the rooms, one module per noun, each a set of functions taking the context:

======================  ==============================================================
:mod:`hub.bundles`      store, register, list, publish in chunks; models (revisions)
:mod:`hub.devices`      list, show, group/tags
:mod:`hub.enrollment`   one-time tokens, broker identities, passwd/ACL files
:mod:`hub.desired`      the next signed document for a device, republished on connect
:mod:`hub.telemetry`    merged windows, drift verdicts, summaries, pruning
:mod:`hub.alerting`     offline / latency / drift alerts (rules in :mod:`hub.alerts`)
:mod:`hub.audit`        the audit log
:mod:`hub.commands`     remote diagnostics: signed commands to one device, their answers
:mod:`hub.targets`      which devices a rollout names
:mod:`hub.rollouts`     rollouts (the pure machine is :mod:`hub.rollout`)
:mod:`hub.rotation`     keys reloaded, everything signed again after a rotation
:mod:`hub.gauges`       Prometheus gauges from the registry
:mod:`hub.ticker`       what runs every tick
======================  ==============================================================

Rooms import this module; this module imports no room.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from .config import HubConfig
from .db import session
from .keys import HubKeys
from .metrics import HubMetrics
from .models import AuditEntry
from .store import BundleStore
from .transport import Outgoing, Publisher

log = logging.getLogger(__name__)
RECOVERY_GRACE_S = 60  # after the broker connection is back, agents reconnect and resend


def now_s() -> int:
    return int(time.time())


def new_id() -> str:
    return secrets.token_hex(6)


class Fleet:
    def __init__(
        self,
        config: HubConfig,
        engine: Engine,
        keys: HubKeys,
        store: BundleStore,
        publisher: Publisher,
        metrics: HubMetrics,
        clock: Callable[[], int] = now_s,
    ) -> None:
        self.config = config
        self.engine = engine
        self.keys = keys
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.last_scan = 0  # when the ticker last scanned alerts (hub.ticker)
        self.alert_after = ""  # the last device id the alert scan judged: a page a scan (hub.alerting)
        self.last_pending_scan = 0  # ... and desired documents no device acknowledged (hub.desired)
        self.pending_resent: dict[tuple[str, int], int] = {}  # (device, seq): times published again
        self.rollout_lock = threading.RLock()  # seq allocation and rollout state are read-modify-write
        self._recovery: deque[tuple[int, int]] = deque(maxlen=32)
        # the telemetry windows each rollout's gates read, kept between runs (hub.evidence
        # .WindowCache, made by the first run: this module imports no room)
        self.gate_windows: Any = None
        # each recently run rollout's rows as this process last read or wrote them, by rollout id
        # (hub.rollout_rows.Kept)
        self.kept_rows: dict[str, Any] = {}
        # a pushed bundle's deltas, made ahead by the hub's hub-deltas thread (hub.deltas.Preparer);
        # nothing where no hub process runs one (the housekeeper, a bare Fleet in tests)
        self.prepare_deltas: Callable[[str], None] = lambda digest: None
        self.preparing_deltas: Callable[[str], bool] = lambda digest: False

    def session(self) -> Session:
        return session(self.engine)

    def audit(self, s: Session, actor: str, action: str, target: str, **detail: Any) -> None:
        s.add(AuditEntry(ts=self.clock(), actor=actor, action=action, target=target, detail=detail))

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if messages:
            self.publisher.publish(messages)
            for m in messages:
                self.metrics.published.labels(m.kind or "other").inc()

    def note_recovery(self, down: int, up: int) -> None:
        """The hub's broker connection was down from ``down`` to ``up``: telemetry windows
        overlapping it (and the grace after) say more about the recovery than about a model,
        and rollout gates leave them out (hub.rollout, rule 6)."""
        self._recovery.append((down, up + RECOVERY_GRACE_S))
        log.info(
            "broker connection was down %ds; rollout gates leave out windows from %d to %d",
            up - down,
            down,
            up + RECOVERY_GRACE_S,
        )

    def recovery_periods(self) -> list[tuple[int, int]]:
        return list(self._recovery)
