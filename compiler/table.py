"""The final table of a build (and of ``inspect``): artifacts with size, quality and latency,
the gate's checks, the ONNX twin's status, the Edge TPU status and the digest. Printed with
rich on stdout."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protocol.bundle import Manifest
from protocol.errors import BadPayload
from protocol.twin import Twin

from .report import source_line


def print_summary(
    report: dict[str, Any],
    out: Path | None,
    digest: str | None,
    manifest: Manifest | None = None,
    problems: Sequence[str] = (),
) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 120)
    t = Table(
        title=f"{report.get('name')} {report.get('version')} ({report.get('task')}, "
        + (f"{report['num_classes']} classes, " if report.get("num_classes") else "")
        + f"target {report.get('target')})"
    )
    for col in ("artifact", "size", "top-1", "macro-F1", "AUC", "agree vs float", "ms (1 thr)"):
        t.add_column(col, justify="left" if col == "artifact" else "right")
    for name, a in (report.get("artifacts") or {}).items():
        m = a.get("metrics") or {}
        lat = (a.get("latency_ms") or {}).get("1")
        t.add_row(
            name,
            f"{a['size']:,}",
            _pct(m.get("accuracy")),
            _num(m.get("macro_f1")),
            _num(m.get("auc_ovr")),
            _pct(m.get("agreement")),
            _num(lat, 3),
        )
    con.print(t)
    gate = report.get("gate")
    if gate:
        for c in gate["checks"]:
            mark = "[green]ok[/]" if c["passed"] else "[red]FAIL[/]"
            con.print(f"  gate {mark} {c['name']} = {c['value']} (limit {c['limit']}): {c['detail']}")
    else:
        con.print(f"  gate: {report.get('gate_note') or 'skipped (no validation labels)'}")
    con.print(f"  twin: {twin_line(report, manifest)}", markup=False)
    src = source_line(report)
    if src:
        con.print(f"  source: {src}", markup=False)
    et = report.get("edgetpu") or {}
    line = "compiled" if et.get("compiled") else "not compiled"
    if et.get("ops_on_tpu") is not None:
        line += f", {et.get('ops_on_tpu')} ops on TPU / {et.get('ops_on_cpu')} on CPU"
    pre = et.get("precheck")
    if pre:
        line += f"; pre-check predicts {pre.get('predicted_tpu_ops')}/{pre.get('total_ops')} on TPU"
    con.print(f"  edge tpu: {line}" + (f" ({et['note']})" if et.get("note") else ""))
    if manifest is not None:
        con.print(
            f"  requirements: edgetpu={manifest.requirements.edgetpu}, "
            f"min_edgetpu_runtime={manifest.requirements.min_edgetpu_runtime}; "
            f"{len(manifest.artifacts)} artifacts, {manifest.total_size:,} bytes"
        )
    for p in problems:
        con.print(f"  [red]problem[/]: {p}")
    if digest:
        con.print(f"  bundle {out}  digest {digest}")


def twin_line(report: dict[str, Any], manifest: Manifest | None = None) -> str:
    """The ONNX twin's status in one line: the signed manifest's word first, else the report's."""
    for doc in ((manifest.model if manifest is not None else {}).get("twin"), report.get("twin")):
        if doc is None:
            continue
        try:
            return Twin.from_dict(doc).line()
        except BadPayload as exc:
            return f"unreadable status ({exc.problem})"
    shipped = (
        manifest.artifact("onnx") is not None
        if manifest is not None
        else "model.onnx" in (report.get("artifacts") or {})
    )
    return ("shipped" if shipped else "none") + ", no parity verdict recorded (bundle made before twin verification)"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
