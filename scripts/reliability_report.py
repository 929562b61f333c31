#!/usr/bin/env python3
"""`make reliability`: run the reliability suite and every test the checklist names, then print
the table and write docs/reliability.md.

The checklist is ../shared/reference/update-security-mqtt-drift.md §5 (S1-S14 security, M1-M13
MQTT, D1-D3 drift, R1-R5 reliability). Each item names the tests that prove it; the suite in
tests/reliability also records a figure per check (tests/reliability/conftest.py). An item with
no test says so: nothing is counted as covered that is not run here.

Exit status: 0 when every run test passed and every recorded figure met its goal.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "test-artifacts" / "reliability"
FIGURES = OUT_DIR / "figures.jsonl"
JUNIT = OUT_DIR / "junit.xml"
DOC = REPO / "docs" / "reliability.md"

# item -> (what is injected, [test names]) ; an empty list means not covered here
CHECKLIST: dict[str, tuple[str, list[str]]] = {
    "S1": (
        "bad signature: flipped byte, unknown key",
        [
            "test_tampered_payload_is_rejected_as_bad_signature",
            "test_archive_signed_by_unknown_key_is_rejected_before_any_artifact",
            "test_bundle_signed_by_unknown_key_is_rejected_and_agent_keeps_serving",
            "test_openssl_rejects_the_signature_with_one_flipped_byte",
        ],
    ),
    "S2": (
        "unsigned / stripped-signature bundle",
        ["test_unsigned_archive_is_refused", "test_signed_with_a_key_verifies_against_the_root_and_unsigned_does_not"],
    ),
    "S3": ("threshold abuse: one key listed twice", ["test_same_key_listed_twice_counts_once_toward_threshold"]),
    "S4": (
        "tampered chunk in transit",
        ["test_tampered_chunk_is_rejected_and_refetched", "test_tampered_chunk_is_refused_and_not_marked"],
    ),
    "S5": (
        "truncated or mismatched whole file",
        [
            "test_truncated_artifact_is_rejected_with_length_mismatch",
            "test_truncated_archive_is_a_length_mismatch",
            "test_whole_archive_mismatch_clears_the_bitmap",
        ],
    ),
    "S6": ("replayed older desired document", ["test_replayed_older_desired_is_refused_as_downgrade"]),
    "S7": (
        "equal seq, other content",
        ["test_forged_desired_claiming_the_next_seq_names_no_seq_so_it_cannot_fail_the_real_install"],
    ),
    "S8": (
        "expired metadata, clock behind, expired root",
        [
            "test_expired_desired_is_refused",
            "test_clock_behind_the_newest_accepted_document_cannot_revive_an_expired_one",
            "test_agent_refuses_a_trust_root_that_expired_yesterday",
        ],
    ),
    "S9": (
        "bundle for other hardware, document of another kind",
        [
            "test_bundle_for_another_board_is_refused_before_download",
            "test_signature_cannot_be_replayed_as_another_document_kind",
        ],
    ),
    "S10": (
        "endless data: oversize bodies and packets",
        [
            "test_a_huge_unauthenticated_enroll_body_is_refused_before_it_is_read",
            "test_chunk_plan_checks_length_and_hash_of_each_chunk",
        ],
    ),
    "S11": (
        "fast-forward: huge version by a compromised online key",
        [
            "test_s11_a_seq_fast_forwarded_with_a_stolen_online_key_is_undone_by_one_key_rotation",
            "test_only_a_rotation_that_changes_the_targets_role_resets_what_its_documents_taught",
        ],
    ),
    "S12": (
        "root rotation N -> N+1",
        [
            "test_root_rotation_signed_by_old_and_new_thresholds_is_accepted",
            "test_root_rotation_rejections",
            "test_rotated_root_from_the_hub_is_adopted_and_trusts_the_new_targets_key",
        ],
    ),
    "S13": (
        "targets key revoked by a root rotation",
        [
            "test_rotated_root_from_the_hub_is_adopted_and_trusts_the_new_targets_key",
            "test_after_the_online_key_rotates_every_manifest_and_live_document_is_signed_again_once",
            "test_manifest_of_another_bundle_or_by_an_untrusted_key_is_refused_for_the_slot",
        ],
    ),
    "S14": (
        "replayed report / telemetry",
        [
            "test_m5_s14_one_device_floods_poison_and_replays_and_the_others_are_all_stored",
            "test_replayed_telemetry_is_stored_once",
        ],
    ),
    "M1": ("publish on another device's topics", ["test_m1_m2_m3_m4_a_device_credential_reaches_no_other_device"]),
    "M2": ("subscribe to another device's topics", ["test_m1_m2_m3_m4_a_device_credential_reaches_no_other_device"]),
    "M3": ("client-id spoof", ["test_m1_m2_m3_m4_a_device_credential_reaches_no_other_device"]),
    "M4": ("oversize payload", ["test_m1_m2_m3_m4_a_device_credential_reaches_no_other_device"]),
    "M5": (
        "malformed / implausible telemetry flood",
        ["test_m5_s14_one_device_floods_poison_and_replays_and_the_others_are_all_stored"],
    ),
    "M6": (
        "broker restart mid-transfer and under traffic",
        [
            "test_broker_restart_mid_transfer_resumes_from_the_bitmap",
            "test_broker_and_hub_kill_9_under_traffic_lose_no_window_and_no_request",
        ],
    ),
    "M7": (
        "device offline during a rollout and a broker crash",
        ["test_m7_devices_offline_through_a_broker_kill_9_all_converge"],
    ),
    "M8": (
        "network loss, delay and flapping (netns + netem)",
        ["test_m8_a_download_over_a_lossy_flapping_link_completes"],
    ),
    "M9": ("duplicate / out-of-order chunks", ["test_chunks_in_any_order_with_duplicates_assemble_the_signed_archive"]),
    "M10": (
        "online/offline status (last will)",
        ["test_m10_an_agent_killed_9_is_offline_within_one_and_a_half_keepalives"],
    ),
    "M11": (
        "shared-subscription consumer crash",
        [
            "test_m11_a_shared_subscription_consumer_killed_under_load_loses_and_duplicates_nothing",
            "test_two_replicas_share_the_traffic_and_the_survivor_gets_all_of_it_once_the_other_is_gone",
            "test_two_hubs_issuing_desired_documents_to_one_device_never_issue_one_seq_twice",
        ],
    ),
    "M12": (
        "slow consumer / backpressure",
        ["test_m12_a_stalled_database_costs_the_hub_no_broker_connection_and_no_message"],
    ),
    "M13": (
        "TLS / mTLS negatives",
        ["test_m13_the_tls_listener_refuses_every_bad_handshake_and_an_agent_connects_with_its_certificate"],
    ),
    "D1": ("drift detector on shifted vs identical data", ["test_drift_math_on_identical_and_shifted_histograms"]),
    "D2": (
        "summary fidelity: merged summaries equal the union",
        [
            "test_merging_device_sketches_equals_sketching_the_union",
            "test_merging_device_summaries_equals_summarising_the_union",
        ],
    ),
    "D3": ("small / empty windows", ["test_alert_rules"]),
    "R1": (
        "kill -9 at each install stage (power-loss stand-in)",
        ["test_kill_at_install_stage_then_restart_leaves_a_working_model"],
    ),
    "R2": (
        "validly signed bad model",
        [
            "test_validly_signed_bundle_failing_its_selftest_is_rolled_back",
            "test_model_on_probation_that_keeps_crashing_the_agent_is_rolled_back",
        ],
    ),
    "R3": ("disk full during download", ["test_disk_filling_up_during_download_fails_cleanly_with_disk_full"]),
    "R4": ("device can't serve: cloud fallback", ["test_device_without_a_usable_model_routes_to_the_cloud_fallback"]),
    "R5": (
        "agent restart mid-download; 20 agent kill -9s during a rollout's download and install, and a hub kill -9",
        [
            "test_an_agent_killed_mid_download_resumes_from_its_bitmap_and_receives_at_most_5_percent_again",
            "test_a_rollout_survives_a_hub_kill_9_and_20_agent_kill_9s_mid_install_and_no_device_is_left_without_a_model",
        ],
    ),
    "switch": ("model switches under load", ["test_zero_failed_requests_during_100_model_switches_under_load"]),
    "hub-restart": (
        "hub away while devices send",
        ["test_telemetry_sent_while_the_hub_is_away_arrives_through_its_persistent_session"],
    ),
}
EXTRA_TESTS = ["tests/reliability"]


def node_ids() -> tuple[list[str], dict[str, str]]:
    """Every named test's `file::name`, found by its definition under tests/."""
    where: dict[str, str] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for line in path.read_text().splitlines():
            if line.startswith("def test_") or line.startswith("async def test_"):
                name = line.split("def ", 1)[1].split("(", 1)[0]
                where.setdefault(name, f"{path.relative_to(REPO)}::{name}")
    names = {n for _, tests in CHECKLIST.values() for n in tests}
    ids = sorted({where[n] for n in names if n in where and not where[n].startswith("tests/reliability/")})
    return ids, where


def run() -> int:
    ids, _ = node_ids()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    FIGURES.unlink(missing_ok=True)
    env = {**os.environ, "EDGEFLEET_RELIABILITY_FULL": "1", "EDGEFLEET_RELIABILITY_OUT": str(FIGURES)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--junitxml={JUNIT}", *EXTRA_TESTS, *ids]
    print("$", " ".join(cmd[:8]), f"... ({len(ids)} tests named by the checklist)", flush=True)
    return subprocess.call(cmd, cwd=REPO, env=env)


def results() -> dict[str, str]:
    """test name -> passed | failed | skipped (worst over its parameters)."""
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    out: dict[str, str] = {}
    if not JUNIT.exists():
        return out
    for case in ET.parse(JUNIT).getroot().iter("testcase"):
        name = case.get("name", "").split("[", 1)[0]
        state = (
            "failed"
            if case.find("failure") is not None or case.find("error") is not None
            else "skipped"
            if case.find("skipped") is not None
            else "passed"
        )
        if rank[state] >= rank.get(out.get(name, "passed"), 0):
            out[name] = state
    return out


def render(pytest_rc: int) -> tuple[str, bool]:
    figures = [json.loads(line) for line in FIGURES.read_text().splitlines()] if FIGURES.exists() else []
    res = results()
    ok = pytest_rc == 0 and all(f["ok"] for f in figures)
    machine = f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()})"
    lines = [
        "# Reliability: checks and figures",
        "",
        f"Written by `make reliability` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine}.",
        "Each figure is measured by a test in `tests/reliability/` against real Mosquitto (with the hub's",
        "generated passwd/ACL/listener), the real hub and real agent code; the checklist is",
        "`../shared/reference/update-security-mqtt-drift.md` §5. The quick checks also run in `make test`.",
        "",
        "## Figures",
        "",
        "| check | injected | figure | value | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f['check']} | {f['injected']} | {f['figure']} | {f['value']} | {f['goal']} | "
            f"{'yes' if f['ok'] else '**NO**'} |"
        )
    if not figures:
        lines.append("| - | no figures were recorded | | | | **NO** |")
    lines += ["", "## Checklist coverage", "", "| item | injected | tests | result |", "|---|---|---|---|"]
    for item, (what, tests) in CHECKLIST.items():
        if not tests:
            lines.append(f"| {item} | {what} | not covered here | - |")
            continue
        states = [res.get(t, "not run") for t in tests]
        worst = (
            "failed"
            if "failed" in states
            else "not run"
            if "not run" in states
            else "skipped"
            if "skipped" in states
            else "passed"
        )
        names = "<br>".join(f"`{t}`" for t in tests)
        lines.append(f"| {item} | {what} | {names} | {worst} |")
    lines += [
        "",
        "Not covered here: M11 proves ingest replicas only (two hubs in one `--shared-group` on one",
        "PostgreSQL database, one killed under load); a rollout carried across a replica failover",
        "within a bound is issue 15. M8 runs over a loopback fault relay: this machine's veth pairs",
        "pass no ARP and its kernel has no netem. M13 covers the agent's mutual TLS and the hub's own",
        "TLS connection to the broker.",
        "",
    ]
    return "\n".join(lines), ok


def main() -> int:
    rc = run() if "--render-only" not in sys.argv else 0
    text, ok = render(rc)
    DOC.write_text(text)
    table = [line for line in text.splitlines() if line.startswith("|")]
    print("\n".join(table))
    print(f"\nwrote {DOC.relative_to(REPO)}; {'all checks met their goals' if ok else 'SOME CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
