"""bench._kernel: the kernel's TCP counters the rollout bench prints beside each case."""

from __future__ import annotations

from pathlib import Path

from bench import _kernel


def test_the_watched_tcp_counters_are_read_from_proc_nets_paired_header_and_value_lines(tmp_path: Path) -> None:
    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: PruneCalled TCPTimeouts TCPMemoryPressures TCPMemoryPressuresChrono TCPRcvQDrop Other\n"
        "TcpExt: 7 42 3 1500 9 1\n"
        "IpExt: InNoRoutes TCPTimeouts\n"
        "IpExt: 5 999\n"
    )
    got = _kernel._read(netstat)
    assert got == {
        "PruneCalled": 7,
        "TCPTimeouts": 42,  # TcpExt's, not the IpExt line's field of the same name
        "TCPMemoryPressures": 3,
        "TCPMemoryPressuresChrono": 1500,
        "TCPRcvQDrop": 9,
    }
    line = _kernel.describe("ours", got)
    assert "memory pressure 3x for 1.5 s, 9 segments dropped, 42 retransmission timeouts" in line
    assert _kernel._read(tmp_path / "absent") == {}


def test_this_machines_counters_only_grow_so_a_case_never_reports_a_negative_drop() -> None:
    before = _kernel.tcp_counters()
    assert "RetransSegs" in before and "TCPTimeouts" in before  # Linux /proc/net/{snmp,netstat}
    assert all(v >= 0 for v in _kernel.since(before).values())
