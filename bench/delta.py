"""`python -m bench delta`: delta update size against the full bundle, and time to apply it.

Cases: the digits model with its head retrained, and fine-tuned (bench/_delta_models.py: real
TensorFlow training and real compiler builds, cached), each against the base build as the
device's active bundle. Per case:

- full: the signed archive the agent would otherwise fetch (the baseline);
- ours: the delta the hub ships (hub.deltas.smallest: ``zstd-members-1`` or ``zstd-patch-1``,
  whichever is smaller; protocol.delta), and ``zstd-patch-1`` alone (the previous method);
- zstd CLI ``--patch-from`` at ``--ultra -22`` (the limit: the best off-the-shelf byte delta), if
  ``zstd`` is installed; bsdiff4; an int8-weight-aware variant (same-size artifacts XORed with the
  base's, then zstd; others patched); and the archive zstd-compressed alone (no base);
- apply: agent.delta.patch_into (read and hash the base slot, patch, check every chunk against the
  signed hashes) into a real download file, median of 5, on this machine;
- a per-tensor int8/int32 coding's floor (bench/_delta_tensors.py): the view delta with its
  int8 member replaced by the order-0 entropy of the per-tensor weight differences;
- what the bytes are made of (bench/_delta_members.py): per member of the archive, its size, the
  bytes that differ from the base's, its patch against that member alone and its XOR + zstd; and
  a per-member candidate (each member's smaller method, 8 bytes framing each).

Device views (protocol.view, ADR 0016): a device that serves the int8 model never uses the float
reference, the ONNX twin, the report or the model card, and an agent that announces device views
fetches the **device view** (the same signed envelope, only the artifacts it uses) instead of the
full archive, and deltas between views. Per case the bench prints both baselines, the full
archive and the device view, and ours against each: the delta a full-archive agent gets (full to
full) and the one a device-view agent gets (view to view; SUB records of ``zstd-members-2``
allowed, as agents announce it; the size without them beside it), with its apply time.

Cases: ``head`` (last layer retrained), ``finetune`` (every layer, 2 epochs at a tenth of the
learning rate: 27-31 % of the int8 model's bytes differ) and ``small`` (at a hundredth: ~10 % of
the int8 bytes differ; the issue set its goals beside a "small fine-tune" whose bytes differed in
7.8 %). Per case the bench prints what share of the int8 model's bytes differ from the base's.

Goals (issue 18): a delta of at most 1 % of full for a retrained head, 10 % for a fine-tune,
judged as the issue words them: the delta a current (device-view) agent is sent, against the
full bundle (ADR 0019). The stricter reading, against the device view such an agent would
otherwise fetch, is printed beside each (met for ``small`` on both models and for ``head`` on the
wide one; the digits model's ~600 B of envelope and records alone are 1 % of its 59 kB view; a
fine-tune that moves 27-31 % of the weights carries more than 10 % of the view in those
differences' entropy alone, bench/_delta_tensors.py). The exit code
is 0 when every case meets the issue's goal.

``--model wide`` runs the same cases on the digits CNN made wider (2.18M parameters, the size of
the model the issue measured its byte diffs on): what of a delta is fixed cost and what grows
with the weights.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from protocol.bundle import MANIFEST_FILE, ChunkPlan, Manifest, pack_archive, parse_manifest
from protocol.delta import ALGOS, DeltaRef, algo_of, base_parts, reference, unsigned, view_manifest
from protocol.signing import Envelope, SigningKey

from . import report
from ._delta_members import breakdown, per_member_best, shipped, table
from ._delta_models import ALL, MODELS, bundles
from ._delta_tensors import tensor_floor

GOALS = {"head": 0.01, "finetune": 0.10, "small": 0.10}


def _load(path: Path, key: SigningKey) -> tuple[Manifest, dict[str, bytes], bytes]:
    env = Envelope.parse((path / MANIFEST_FILE).read_bytes())
    signed = Envelope(env.payload_type, env.payload, ()).add_signature(key)
    m = parse_manifest(env.payload)
    arts = {a.name: (path / a.name).read_bytes() for a in m.artifacts}
    return m, arts, pack_archive(signed, arts)


def _view(t: tuple[Manifest, dict[str, bytes], bytes]) -> tuple[Manifest, dict[str, bytes], bytes]:
    """The device view of a loaded bundle: its manifest's view, those artifacts, and the view
    archive (the full archive's head, the same signed envelope, then those artifacts in order:
    what protocol.bundle.pack_archive(..., only=...) writes)."""
    vm = view_manifest(t[0])
    arts = {a.name: t[1][a.name] for a in vm.artifacts}
    head = t[2][: len(t[2]) - t[0].total_size]
    return vm, arts, head + b"".join(arts[a.name] for a in vm.artifacts)


def _apply_ms(
    base: tuple[Manifest, dict[str, bytes], bytes], envelope: bytes, delta: bytes, target: bytes, repeat: int
) -> float:
    """agent.delta.patch_into from a slot holding ``base``'s artifacts into a real download of
    ``target``, median of ``repeat`` (every chunk checked against the signed hashes)."""
    from agent.delta import patch_into
    from agent.download import Download

    dref = DeltaRef("0" * 64, algo_of(delta), ChunkPlan.of(delta))
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        slot = Path(tmp) / "slot"
        slot.mkdir()
        for name, data in base[1].items():
            (slot / name).write_bytes(data)
        (slot / MANIFEST_FILE).write_bytes(envelope)
        for i in range(repeat):
            dl = Download(Path(tmp) / f"dl{i}", ChunkPlan.of(target))
            t0 = time.perf_counter()
            done = patch_into(dref, delta, slot, base[0], dl)
            times.append(time.perf_counter() - t0)
            assert dl.complete and done.rejected == 0, "the delta did not reproduce the archive"
            dl.remove()
    return 1000 * statistics.median(times)


def _zstd(data: bytes, level: int = 19) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=level).compress(data))


def _cli_patch_from(ref: bytes, target: bytes) -> int | None:
    exe = shutil.which("zstd")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        r, t, o = Path(tmp) / "ref", Path(tmp) / "target", Path(tmp) / "out.zst"
        r.write_bytes(ref)
        t.write_bytes(target)
        subprocess.run([exe, "-q", "-f", "--ultra", "-22", f"--patch-from={r}", str(t), "-o", str(o)], check=True)
        return o.stat().st_size


def _int8_aware(base: tuple[Manifest, dict[str, bytes], bytes], tgt: tuple[Manifest, dict[str, bytes], bytes]) -> int:
    """Same-size artifacts (the tflite/onnx files of a retrain keep their layout) XORed byte for
    byte with the base's and zstd-compressed; the rest patched from the whole base; plus the
    manifest envelope compressed."""
    from hub.deltas import make

    ref = b"".join(base[1][a.name] for a in base[0].artifacts)
    total = _zstd(tgt[2][: len(tgt[2]) - tgt[0].total_size])
    for a in tgt[0].artifacts:
        new = tgt[1][a.name]
        old = base[1].get(a.name)
        if old is not None and len(old) == len(new):
            total += _zstd(bytes(x ^ y for x, y in zip(old, new, strict=True)))
        else:
            total += len(make(ref, new))
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench delta")
    ap.add_argument("--repeat", type=int, default=5, help="apply timings per case (median; default 5)")
    ap.add_argument(
        "--model",
        choices=MODELS,
        default="digits",
        help="digits: the 38k-parameter CNN (default); wide: the same layers, 2.18M parameters "
        "(the first run trains and builds it: minutes)",
    )
    args = ap.parse_args(argv)

    try:
        import bsdiff4
    except ImportError:  # not a dependency of any extra: the column reads n/a without it
        bsdiff4 = None

    from hub.deltas import MAX_FRACTION, make, smallest

    key = SigningKey.generate()
    paths = bundles(model=args.model, variants=ALL)
    base = _load(paths["base"], key)
    ref = reference(base[0], lambda a: base[1][a.name])
    envelope = base[2][8 : len(base[2]) - base[0].total_size]
    parts = base_parts(base[0], unsigned(envelope), lambda a: base[1][a.name])
    names = {a.name: i + 1 for i, a in enumerate(base[0].artifacts)}
    vbase = _view(base)
    vparts = base_parts(vbase[0], unsigned(envelope), lambda a: base[1][a.name])
    vnames = {a.name: i + 1 for i, a in enumerate(vbase[0].artifacts)}
    cases: list[dict[str, Any]] = []
    ok = True
    print(
        f"base: {args.model} {base[0].version}, full archive {len(base[2])} bytes, device view {len(vbase[2])} bytes "
        f"({', '.join(vbase[1])})"
    )
    for case in ("head", "finetune", "small"):
        tgt = _load(paths[case], key)
        full = len(tgt[2])
        delta = smallest(parts, names, tgt[2])
        patch1 = make(ref, tgt[2])
        apply_ms = _apply_ms(base, envelope, delta, tgt[2], args.repeat)
        vtgt = _view(tgt)
        vdelta = smallest(vparts, vnames, vtgt[2], subs=True)  # view agents announce zstd-members-2
        vdelta1 = smallest(vparts, vnames, vtgt[2])  # the same without SUB records (zstd-members-1)
        vapply_ms = _apply_ms(vbase, envelope, vdelta, vtgt[2], args.repeat)
        vmembers = breakdown(vbase, vtgt)
        shipped(vmembers, vdelta, len(vparts))
        cli = _cli_patch_from(ref, tgt[2])
        members = breakdown(base, tgt)
        shipped(members, delta, len(parts))
        row: dict[str, Any] = {
            "case": case,
            "version": tgt[0].version,
            "full_bytes": full,
            "view_bytes": len(vtgt[2]),
            "view_artifacts": list(vtgt[1]),
            # ours for a device-view agent: view to view, judged against the view it would fetch
            "view_delta_bytes": len(vdelta),
            "view_delta_algo": algo_of(vdelta),
            "view_delta_fraction": len(vdelta) / len(vtgt[2]),
            "view_delta_fraction_of_full": len(vdelta) / full,
            "view_delta_without_sub_bytes": len(vdelta1),
            "view_delta_without_sub_algo": algo_of(vdelta1),
            "view_members": vmembers,
            "view_apply_ms_median": vapply_ms,
            "view_zstd_cli_patch_from_bytes": _cli_patch_from(b"".join(vparts[1:]), vtgt[2]),
            # ours for a full-archive agent (from before views): full to full
            "delta_bytes": len(delta),
            "algo": algo_of(delta),
            "zstd_patch_1_bytes": len(patch1),
            "delta_fraction": len(delta) / full,
            "goal_fraction": GOALS[case],
            "zstd_cli_patch_from_bytes": cli,
            "bsdiff4_bytes": len(bsdiff4.diff(ref, tgt[2])) if bsdiff4 is not None else None,
            "int8_aware_bytes": _int8_aware(base, tgt),
            "zstd_alone_bytes": _zstd(tgt[2]),
            "per_member_best_bytes": per_member_best(base, tgt),
            "members": members,
            "apply_ms_median": apply_ms,
            "changed_artifacts": {a.name: a.size for a in tgt[0].artifacts if base[1].get(a.name) != tgt[1][a.name]},
        }
        # a per-tensor int8/int32 coder's floor: the view delta with its int8 member's record
        # replaced by the order-0 entropy of the weight differences (bench/_delta_tensors.py)
        int8 = next((a.name for a in vtgt[0].artifacts if a.name in vbase[1] and a.name.endswith("int8.tflite")), None)
        rec = next((m for m in vmembers if m["member"] == int8), {})
        # what share of the int8 model the case changes (breakdown's count; None: no same-size int8 model in both)
        differing = rec.get("differing_bytes")
        row["int8_differing_fraction"] = differing / rec["bytes"] if differing is not None else None
        if int8 is not None:
            floor = tensor_floor(vbase[1][int8], vtgt[1][int8])
            floor["view_delta_bytes"] = len(vdelta) - int(rec.get("shipped_bytes", 0)) + floor["entropy_bytes"]
            floor["view_fraction"] = floor["view_delta_bytes"] / len(vtgt[2])
            row["per_tensor_floor"] = floor
        # issue 18's goal as worded ("of full"): what a current agent is sent, against the full bundle
        row["meets_goal"] = row["view_delta_fraction_of_full"] <= GOALS[case]
        row["meets_goal_of_view"] = row["view_delta_fraction"] <= GOALS[case]  # the stricter reading
        row["full_meets_goal"] = row["delta_fraction"] <= GOALS[case]
        row["offered_by_hub"] = row["delta_fraction"] <= MAX_FRACTION
        row["view_offered_by_hub"] = row["view_delta_fraction"] <= MAX_FRACTION
        ok &= row["meets_goal"]
        cases.append(row)
        if row["int8_differing_fraction"] is not None:
            print(
                f"{case:9} int8 model: {100 * row['int8_differing_fraction']:5.2f} % of its bytes "
                "differ from the base's"
            )
        print(
            f"{case:9} device-view agent: full archive {full:>8} B, device view {len(vtgt[2]):>7} B (baselines) | "
            f"ours ({row['view_delta_algo']}, view to view) {len(vdelta):>7} B = "
            f"{100 * row['view_delta_fraction_of_full']:5.2f} % of the full archive "
            f"(goal <= {100 * GOALS[case]:.0f} % of full: {'met' if row['meets_goal'] else 'NOT met'}), "
            f"{100 * row['view_delta_fraction']:5.2f} % of the view "
            f"(stricter, of the view: {'met' if row['meets_goal_of_view'] else 'not met'}) | "
            f"without SUB records ({row['view_delta_without_sub_algo']}) {len(vdelta1)} B | "
            f"zstd CLI --patch-from -22 between views {row['view_zstd_cli_patch_from_bytes'] or 'n/a'} B | "
            f"apply {vapply_ms:.1f} ms | "
            f"{'offered' if row['view_offered_by_hub'] else 'not offered (above half)'} by the hub"
        )
        print(table(vmembers))
        if "per_tensor_floor" in row:
            f = row["per_tensor_floor"]
            print(
                f"{case:9} per-tensor int8 coding, floor: {f['changed']} weights changed, order-0 entropy of the "
                f"differences {f['entropy_bytes']} B -> a view delta of >= {f['view_delta_bytes']} B = "
                f"{100 * f['view_fraction']:5.2f} % of the view (goal <= {100 * GOALS[case]:.0f} %: "
                f"{'reachable' if f['view_fraction'] <= GOALS[case] else 'out of reach of such a coder'})"
            )
        print(
            f"{case:9} full-archive agent: full {full:>7} B (baseline) | ours ({row['algo']}) {len(delta):>7} B = "
            f"{100 * row['delta_fraction']:5.2f} % "
            f"(goal <= {100 * GOALS[case]:.0f} %: {'met' if row['full_meets_goal'] else 'NOT met'}) | "
            f"zstd-patch-1 alone {len(patch1)} B | "
            f"zstd CLI --patch-from -22 {cli if cli is not None else 'n/a'} B | "
            f"bsdiff4 {row['bsdiff4_bytes'] or 'n/a'} B | "
            f"int8-aware XOR {row['int8_aware_bytes']} B | per-member best {row['per_member_best_bytes']} B | "
            f"zstd alone {row['zstd_alone_bytes']} B | "
            f"apply {row['apply_ms_median']:.1f} ms | "
            f"{'offered' if row['offered_by_hub'] else 'not offered (above half: full chunks)'} by the hub"
        )
        print(table(members))
    head = cases[0]
    out = report.write(  # ours and baseline: a device-view agent's delta and the view it would fetch
        "delta" if args.model == "digits" else f"delta-{args.model}",
        "bytes",
        False,
        float(head["view_delta_bytes"]),
        float(head["view_bytes"]),
        float(head["view_zstd_cli_patch_from_bytes"]) if head["view_zstd_cli_patch_from_bytes"] else None,
        {
            "repeat": args.repeat,
            "model": args.model,
            "algos": list(ALGOS),
            "goals": GOALS,
            "goals_against": "full bundle (issue 18's words, ADR 0019); meets_goal_of_view: against the device view",
        },
        cases,
    )
    print(f"wrote {out}")
    return 0 if ok else 1
