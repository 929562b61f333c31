"""The kernel's TCP counters around a bench case: did loopback TCP run short of memory?

10,000 MQTT sessions each holding two 64 KiB chunks unread is ~1.3 GB of socket buffers, at the
edge of ``net.ipv4.tcp_mem``'s pressure threshold on this machine (383,878 pages, 1.5 GiB). Under
pressure the kernel prunes receive queues and drops segments; on loopback a dropped segment
waits for the retransmission timer (200 ms, doubling), so a device's next chunk can come
seconds late with both ends idle (docs/scale.md, 2026-12-06). The counters are system-wide
(``/proc/net/netstat``, ``/proc/net/snmp``): anything else running counts too.
"""

from __future__ import annotations

from pathlib import Path

WATCHED = {
    "TcpExt": (
        "TCPMemoryPressures",  # times TCP entered memory pressure
        "TCPMemoryPressuresChrono",  # ms spent under it
        "TCPRcvQDrop",  # segments dropped: the receive queue had no memory
        "PruneCalled",  # receive queues pruned for memory
        "TCPTimeouts",  # retransmission timer expiries
    ),
    "Tcp": ("RetransSegs",),
}


def _read(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, keys = names.partition(":")
        if proto not in WATCHED:
            continue
        for k, v in zip(keys.split(), values.partition(":")[2].split(), strict=False):
            if k in WATCHED[proto]:
                out[k] = int(v)
    return out


def tcp_counters() -> dict[str, int]:
    """The watched counters now (empty where /proc does not say: not Linux)."""
    return {**_read(Path("/proc/net/netstat")), **_read(Path("/proc/net/snmp"))}


def since(before: dict[str, int]) -> dict[str, int]:
    now = tcp_counters()
    return {k: now[k] - before.get(k, 0) for k in now}


def pressure_limit_bytes() -> int | None:
    """``net.ipv4.tcp_mem``'s pressure threshold in bytes (its middle value, in pages)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1]) * 4096
    except (OSError, IndexError, ValueError):
        return None


def describe(case: str, d: dict[str, int]) -> str:
    if not d:
        return f"  {case:<58} (no /proc/net counters here)"
    under = d.get("TCPMemoryPressuresChrono", 0) / 1000
    return (
        f"  {case:<58} memory pressure {d.get('TCPMemoryPressures', 0)}x for {under:.1f} s, "
        f"{d.get('TCPRcvQDrop', 0)} segments dropped, {d.get('TCPTimeouts', 0)} retransmission timeouts"
    )
