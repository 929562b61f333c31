"""Stage 9: the eval report (``report.json``) and the model card (``model_card.md``).

The report is the build's evidence: lineage (hashes of model, calibration and validation data,
tool versions), the model's I/O and ops, every artifact's metrics, size and latency measured on
this machine, the gate's checks, the ONNX twin's verdict (``twin``, :mod:`protocol.twin`) and the
Edge TPU pre-check / compiler results. The model card is a Markdown rendering of the same facts
for people. ``inspect`` prints the report.
"""

from __future__ import annotations

import hashlib
import platform
from typing import Any

SCHEMA = 1


def sha256_file_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def machine() -> dict[str, Any]:
    import os

    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or None,
    }


def source_line(report: dict[str, Any]) -> str | None:
    """For a build from ONNX / PyTorch: what went in and the device's int8 model against it."""
    src = report.get("source")
    if not src:
        return None
    line = f"Built from {src['kind']} `{src['file']}` (input {src['onnx_input']['layout']})"
    par = src.get("int8_vs_original")
    if par and par.get("top1_agreement") is not None:
        line += (
            f"; the int8 model against it on {par['samples']} validation inputs: top-1 agreement "
            f"{100 * par['top1_agreement']:.2f}%, largest score difference {par['max_abs_score_diff']:.4g}"
        )
    return line


def model_card(report: dict[str, Any]) -> str:
    r = report
    lines = [f"# Model card: {r['name']} {r['version']}", ""]
    lines += [
        f"- Task: {r['task']}" + (f" ({r['num_classes']} classes)" if r.get("num_classes") else ""),
        f"- Input: `{r['model']['input']}`",
        f"- Output: `{r['model']['output']}`",
        f"- Target: {r['target']}; int8 I/O type: {r['io_type']}",
        "",
    ]
    if r.get("description"):
        lines += [r["description"], ""]
    lines += ["## Quality (validation set, measured at build time)", ""]
    lines += [
        "| artifact | size (bytes) | top-1 | macro-F1 | AUC (OvR) | agreement vs float | latency 1 thread (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in r["artifacts"].items():
        m = a.get("metrics") or {}
        lat = (a.get("latency_ms") or {}).get("1")
        lines.append(
            f"| {name} | {a['size']} | {_pct(m.get('accuracy'))} | {_num(m.get('macro_f1'))} | "
            f"{_num(m.get('auc_ovr'))} | {_pct(m.get('agreement'))} | {_num(lat, 3)} |"
        )
    lines += [
        "",
        "Latency is the median of single-sample invokes on the build machine "
        f"({r['machine'].get('machine')}, {r['machine'].get('cpus')} CPUs), not on a device.",
        "",
    ]
    gate = r.get("gate")
    if gate:
        lines += ["## Accuracy gate: " + ("passed" if gate["passed"] else "FAILED"), ""]
        for c in gate["checks"]:
            lines.append(
                f"- {'ok' if c['passed'] else 'FAIL'} `{c['name']}` = {c['value']} (limit {c['limit']}): {c['detail']}"
            )
        lines.append("")
    twin = r.get("twin")
    if twin:
        lines += ["## Cloud twin (ONNX)", "", f"- {twin['status']}: {twin['reason']}"]
        if twin.get("inputs"):
            lines.append(f"- Parity measured on {twin.get('n')} {twin['inputs']} inputs ({twin.get('metric')})")
        for title, key in (("Measured", "figures"), ("Limits", "limits")):
            if twin.get(key):
                lines.append(f"- {title}: " + ", ".join(f"`{k}` = {v}" for k, v in twin[key].items()))
        line = source_line(r)
        if line:
            lines.append(f"- {line}")
        lines.append("")
    et = r.get("edgetpu") or {}
    lines += [
        "## Edge TPU",
        "",
        f"- Compiled: {'yes' if et.get('compiled') else 'no'}" + (f" ({et.get('note')})" if et.get("note") else ""),
    ]
    pre = et.get("precheck")
    if pre:
        lines.append(
            f"- Pre-check (no compiler): {pre.get('predicted_tpu_ops')} of {pre.get('total_ops')} "
            f"ops predicted on the Edge TPU; {pre.get('summary', '')}"
        )
    lines += ["", "## Lineage", ""]
    for k, v in r["lineage"].items():
        lines.append(f"- {k}: `{v}`")
    lines += [
        "",
        "## Limitations",
        "",
        "- Metrics come from the validation set given at build time; drift telemetry "
        "compares live traffic against `baseline.json` built from the same set.",
        "- int8 is smaller but usually not faster than float on x86 CPUs (XNNPACK); "
        "the speed-up of int8 shows on the Edge TPU and on ARM.",
        "",
    ]
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
