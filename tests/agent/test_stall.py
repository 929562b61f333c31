"""A quiet download: the broker is asked before the hub (agent.stall)."""

from __future__ import annotations

from agent.stall import GIVE_UP, PACE_FACTOR, Probe, Step, next_step, repair_wait


def test_a_download_quiet_for_less_than_the_wait_does_nothing():
    assert next_step(now=104.9, quiet_since=100.0, wait=5.0, probe=None) is Step.WAIT


def test_a_download_quiet_for_the_wait_probes_the_broker_before_asking_the_hub():
    assert next_step(now=105.0, quiet_since=100.0, wait=5.0, probe=None) is Step.PROBE


def test_a_probe_sent_before_the_last_chunk_says_nothing_so_a_new_quiet_spell_probes_again():
    old = Probe(sent_at=90.0, answered_at=91.0, quiet=True)  # answered quiet, then chunks came after all
    assert next_step(now=105.0, quiet_since=100.0, wait=5.0, probe=old) is Step.PROBE


def test_a_quiet_answer_means_nothing_was_queued_for_us_so_the_hub_is_asked():
    answered = Probe(sent_at=105.0, answered_at=105.2, quiet=True)
    assert next_step(now=105.3, quiet_since=100.0, wait=5.0, probe=answered) is Step.REPAIR


def test_messages_ahead_of_the_answer_mean_a_slow_broker_so_the_device_waits_and_probes_later():
    slow = Probe(sent_at=105.0, answered_at=111.0, quiet=False)
    assert next_step(now=111.1, quiet_since=100.0, wait=5.0, probe=slow) is Step.WAIT
    assert next_step(now=116.0, quiet_since=100.0, wait=5.0, probe=slow) is Step.PROBE


def test_an_unanswered_probe_is_waited_for_then_the_hub_is_asked_anyway():
    pending = Probe(sent_at=105.0)
    assert next_step(now=105.0 + GIVE_UP * 5.0 - 0.1, quiet_since=100.0, wait=5.0, probe=pending) is Step.WAIT
    assert next_step(now=105.0 + GIVE_UP * 5.0, quiet_since=100.0, wait=5.0, probe=pending) is Step.REPAIR


def test_the_wait_grows_with_the_slowest_round_trip_a_probe_measured():
    # 10,000 devices on one Mosquitto: a chunk every ~11 s per device (docs/scale.md)
    assert repair_wait(5.0, 0, 0.0) == 5.0
    assert repair_wait(5.0, 0, 11.0) == PACE_FACTOR * 11.0
    assert next_step(now=115.0, quiet_since=100.0, wait=repair_wait(5.0, 0, 11.0), probe=None) is Step.WAIT


def test_repair_requests_that_brought_nothing_back_off_up_to_eight_times_the_wait():
    assert [repair_wait(3.0, r, 0.0) for r in range(6)] == [3.0, 6.0, 12.0, 24.0, 24.0, 24.0]


def test_probe_round_trip_is_known_only_once_answered():
    assert Probe(sent_at=1.0).round_trip is None
    assert Probe(sent_at=1.0, answered_at=3.5).round_trip == 2.5
