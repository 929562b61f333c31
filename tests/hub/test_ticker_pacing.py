"""hub.ticker.next_wait: a tick whose rollouts and telemetry take longer than half the interval
is followed by a pause twice as long as it took, so ticks never hold more than a third of the
hub's time from the ingest worker; quick ticks keep the configured interval."""

from __future__ import annotations

from hub.ticker import next_wait


def test_a_quick_tick_keeps_the_configured_interval():
    assert next_wait(2.0, 0.01) == 2.0 and next_wait(2.0, 1.0) == 2.0


def test_a_slow_tick_waits_twice_what_it_took_so_it_holds_at_most_a_third_of_the_time():
    took = 3.0
    wait = next_wait(2.0, took)
    assert wait == 6.0 and took / (took + wait) <= 1 / 3
