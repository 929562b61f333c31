"""A download gone quiet: is the broker slow, or were chunks lost? Ask the broker before the hub.

A chunk reaches a device one broker round trip after the device acknowledged the one before it.
Under load that round trip grows: at 10,000 devices fetching from one Mosquitto it was ~11 s. A
device that took a 5 s silence for a loss asked the hub for chunks the broker still held queued
for it; the hub re-published them, each repair's new per-index subscriptions cost the broker a
walk over 10,000 subscribers, and the fan-out stalled (docs/scale.md, "a repair storm found").
A fixed longer wait would only move the limit to the next fleet size.

So when a download has been quiet for ``wait`` the device first sends the broker a *probe*: an
UNSUBSCRIBE of a filter it never holds (:func:`protocol.topics.probe_filter`). The broker answers
it in order with everything it sends this client (Mosquitto queues the UNSUBACK behind any
PUBLISH already queued for the session), so:

* the answer came and no message arrived between the probe and its answer: nothing was queued
  for us, the missing chunks are lost: ask the hub now (:attr:`Step.REPAIR`);
* messages arrived before the answer: the broker was slow, not lossy: wait again, and never
  less than twice the round trip the probe measured (:func:`repair_wait`), so a slow broker is
  probed about once per download, not once per chunk;
* no answer after ``GIVE_UP`` waits: the broker answers nothing; ask the hub as before probes.

A delta download (:mod:`agent.delta`) is judged the same way, with ``DELTA_PATIENCE`` x the
configured wait and no hub to ask: its :attr:`Step.REPAIR` means "give up on the delta and fetch
the missing full chunks", which a slow broker must not trigger either.

A broker that does not keep that order (the answer overtaking queued messages) makes a probe
look quiet too early; the result is the repair request a device sent before probes existed, not
a loss. Pure functions; the transport sends the probe and records its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

GIVE_UP = 4  # waits an unanswered probe is given before the hub is asked anyway
PACE_FACTOR = 2.0  # a download is quiet only after this many of the slowest probe round trips
MAX_DOUBLINGS = 3  # repair requests that brought nothing double the wait, up to x8
DELTA_PATIENCE = 3  # a delta is given up only after this many configured waits (its bytes are few, its remedy dear)


class Step(Enum):
    WAIT = "wait"
    PROBE = "probe"
    REPAIR = "repair"


@dataclass(frozen=True)
class Probe:
    """One probe of a download: when it left, and (once answered) when the answer came and
    whether any message arrived between the two."""

    sent_at: float
    answered_at: float | None = None
    quiet: bool = False  # answered with no message in between: nothing was queued for us

    @property
    def round_trip(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at

    def answered(self, at: float, quiet: bool) -> Probe:
        return Probe(self.sent_at, at, quiet)


def repair_wait(base_s: float, rounds: int, slowest_round_trip: float) -> float:
    """How long a download must be quiet before it counts as stalled: the configured wait,
    doubled per repair request that brought nothing (up to x8), and never under
    ``PACE_FACTOR`` x the slowest broker round trip a probe of this download measured."""
    backoff = 1 << min(max(rounds, 0), MAX_DOUBLINGS)
    return max(base_s * backoff, PACE_FACTOR * slowest_round_trip)


def next_step(now: float, quiet_since: float, wait: float, probe: Probe | None) -> Step:
    """What a download quiet since ``quiet_since`` (its last chunk or repair request) does now."""
    if now - quiet_since < wait:
        return Step.WAIT
    if probe is None or probe.sent_at < quiet_since:  # a probe from before the last progress says nothing
        return Step.PROBE
    if probe.answered_at is None:
        return Step.REPAIR if now - probe.sent_at >= GIVE_UP * wait else Step.WAIT
    if probe.quiet:
        return Step.REPAIR
    return Step.PROBE if now - probe.answered_at >= wait else Step.WAIT
