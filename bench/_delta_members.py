"""What a delta between two bundles is made of, member by member (``python -m bench delta``).

For each member of the target archive (the manifest envelope, then every artifact in manifest
order): its size, how many bytes differ from the base's same-named member (same size only), the
zstd patch-from of it against that member alone (level 19, as ``hub.deltas.make``), and the zstd
of its XOR with it (same size only: the int8-weight-aware diff; an unchanged tensor XORs to
zeros). The manifest envelope (with the archive's magic and length) is patched against the
base's.

``per_member_best`` is a candidate, not a wire format: every member by the smaller of the two
methods, an artifact's patch also allowed to refer to the target members before it (the ONNX
twin repeats the float tflite's weights), plus 8 bytes of framing per member. It measures how
far a per-member delta would go before anyone builds one (ADR 0014).
"""

from __future__ import annotations

from typing import Any

import zstandard

from protocol.bundle import Manifest

Loaded = tuple[Manifest, dict[str, bytes], bytes]  # manifest, artifacts by name, signed archive
FRAMING = 8  # bytes per member a container would add (kind, name index, lengths)


def _zstd(data: bytes) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(data))


def _xor(old: bytes, new: bytes) -> int | None:
    if len(old) != len(new):
        return None
    return _zstd(bytes(x ^ y for x, y in zip(old, new, strict=True)))


def _members(t: Loaded) -> list[tuple[str, bytes]]:
    head = len(t[2]) - t[0].total_size  # magic, length, signed envelope
    return [("(manifest envelope)", t[2][:head])] + [(a.name, t[1][a.name]) for a in t[0].artifacts]


def breakdown(base: Loaded, tgt: Loaded) -> list[dict[str, Any]]:
    from hub.deltas import make

    old = dict(_members(base))
    rows = []
    for name, new in _members(tgt):
        prev = old.get(name, b"")
        rows.append(
            {
                "member": name,
                "bytes": len(new),
                "unchanged": prev == new,
                "differing_bytes": sum(x != y for x, y in zip(prev, new, strict=True))
                if len(prev) == len(new)
                else None,
                "patch_own_bytes": len(make(prev, new)) if prev else _zstd(new),
                "xor_bytes": _xor(prev, new),
            }
        )
    return rows


def per_member_best(base: Loaded, tgt: Loaded) -> int:
    from hub.deltas import make

    old = dict(_members(base))
    done = b""
    total = 0
    for name, new in _members(tgt):
        prev = old.get(name, b"")
        sizes = [len(make(prev + done, new)) if prev + done else _zstd(new)]
        x = _xor(prev, new)
        if x is not None:
            sizes.append(x)
        total += min(sizes) + FRAMING
        done += new
    return total


def shipped(rows: list[dict[str, Any]], delta: bytes, parts: int) -> None:
    """Add to ``rows`` what each member costs in the delta the hub ships, when it is a
    ``zstd-members-1`` delta (one record per member, in archive order)."""
    from protocol.delta import ALGO_MEMBERS, ALGO_MEMBERS2, ENVELOPE, PATCH, SUB, XOR, algo_of, unpack_members

    if algo_of(delta) not in (ALGO_MEMBERS, ALGO_MEMBERS2):
        return
    for row, rec in zip(rows, unpack_members(delta, parts), strict=True):
        row["shipped_bytes"] = len(rec.frame) + 7  # the record header
        row["shipped_as"] = {PATCH: "patch", XOR: "xor", ENVELOPE: "envelope", SUB: "sub"}[rec.kind]


def table(rows: list[dict[str, Any]]) -> str:
    out = [f"  {'member':22} {'bytes':>8} {'differing':>9} {'patch(own)':>10} {'xor+zstd':>8} {'shipped':>14}"]
    for r in rows:
        diff = "same" if r["unchanged"] else ("-" if r["differing_bytes"] is None else str(r["differing_bytes"]))
        xor = "-" if r["xor_bytes"] is None else str(r["xor_bytes"])
        ship = f"{r['shipped_bytes']} {r['shipped_as']}" if "shipped_bytes" in r else "-"
        out.append(f"  {r['member']:22} {r['bytes']:>8} {diff:>9} {r['patch_own_bytes']:>10} {xor:>8} {ship:>14}")
    return "\n".join(out)
