"""What ingest tells the rollouts after a batch commits, gathered while the hub is behind.

After each batch, ingest hands its install reports and the devices whose status changed to the
rollouts (:func:`hub.rollouts.follow_up`). A rollout run judges every row of the rollout
(:mod:`hub.rollout` is a pure function of the whole state), so its cost grows with the rollout,
not with the batch (since 2026-12-05 the rows are kept between runs, :mod:`hub.rollout_rows`,
which took most of that cost away, but not all): at 1,000 devices the runs after each batch were a third
of the hub's CPU during a rollout (py-spy, ``bench rollout``), and at 10,000 each was ten times
dearer while the batches kept coming.

So when more messages wait in the ingest queue (``behind``), the reports and devices of several
batches are gathered and told in one run: at most ``hold_s`` after the first of them, where
``hold_s`` is twice what the last run took (between :data:`MIN_HOLD_S` and :data:`MAX_HOLD_S`),
so the runs never take more than about a third of the worker's time. When nothing waits, every
batch is followed up at once, as before (and always where there is no queue: tests, a direct
``Ingest.handle``). Each batch is committed before it is gathered, and its reports stay in the
registry; a replica killed -9 while holding some loses them for the rollouts, as a kill between
commit and run always could, but now for up to ``hold_s`` instead of milliseconds: the device's
next status (``converge``, on whichever replica gets it) or the install timeout settles it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from protocol.messages import Report

from . import rollouts
from .fleet import Fleet

log = logging.getLogger(__name__)

MIN_HOLD_S = 0.2
MAX_HOLD_S = 5.0


class FollowUps:
    def __init__(self, fleet: Fleet, behind: Callable[[], bool] = lambda: False) -> None:
        self.fleet = fleet
        self.behind = behind  # more messages wait in the ingest queue (set by the hub's broker bridge)
        self.hold_s = MIN_HOLD_S
        self._reports: list[Report] = []
        self._touched: set[str] = set()
        self._since = 0.0  # when the oldest held item arrived (monotonic)

    @property
    def held(self) -> int:
        return len(self._reports) + len(self._touched)

    def add(self, reports: Sequence[Report], touched: set[str] | Sequence[str]) -> None:
        """One committed batch's reports and changed devices; told now unless the hub is behind."""
        if (reports or touched) and not self.held:
            self._since = time.monotonic()
        self._reports.extend(reports)
        self._touched.update(touched)
        self.run_if_due()

    def run_if_due(self) -> None:
        if not self.held:
            return
        if self.behind() and time.monotonic() - self._since < self.hold_s:
            return
        self.run()

    def run(self) -> None:
        reports, touched = self._reports, sorted(self._touched)
        self._reports, self._touched = [], set()
        t0 = time.monotonic()
        rollouts.follow_up(self.fleet, reports, touched)
        took = time.monotonic() - t0
        self.hold_s = min(MAX_HOLD_S, max(MIN_HOLD_S, 2 * took))
        if took > 1.0:
            log.info("rollouts told %d reports and %d devices in %.2f s", len(reports), len(touched), took)
