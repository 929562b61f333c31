"""Read-only queries behind the dashboard's models, rollouts and audit pages (the fleet and
device pages are in :mod:`hub.web.queries`). Nothing here writes: every operator action goes
through the REST API (role-checked and audited there)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from protocol.bundle import Requirements
from protocol.errors import BadPayload
from protocol.signature import LEGACY_TASK, of_model
from protocol.taskstats import signal
from protocol.twin import Twin

from ..bundles import bundle_public
from ..compat import check as compat_check, stored_inventory
from ..drift import STATUSES
from ..models import AuditEntry, Build, Bundle, Device, Rollout
from ..rollout import PolicyError, cohort_sizes
from ..targets import Target
from .queries import QueryError, rollout_brief


# ---- models -----------------------------------------------------------------------------------
def running_counts(s: Session) -> dict[str, int]:
    return {
        str(dg): int(n)
        for dg, n in s.exec(
            select(Device.active_digest, func.count())
            .where(col(Device.active_digest).is_not(None))
            .group_by(Device.active_digest)
        ).all()
    }


def report_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The compiler's report.json, flattened for a table: one row per artifact (float / int8 /
    ONNX / Edge TPU) with accuracy, F1, size and latency; the accuracy gate; the Edge TPU
    op mapping. Unknown shapes give empty sections, never an error."""
    arts = _dict(report.get("artifacts"))
    rows = []
    for name, a in (arts or {}).items():
        if not isinstance(a, dict):
            continue
        m, lat = _dict(a.get("metrics")), _dict(a.get("latency_ms"))
        kind = (
            "ONNX"
            if name.endswith(".onnx")
            else "Edge TPU"
            if "edgetpu" in name
            else "int8"
            if "int8" in name or "quant" in name
            else "float"
            if "float" in name
            else name
        )
        rows.append(
            {
                "artifact": name,
                "kind": kind,
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
                "agreement": m.get("agreement"),
                "max_abs_diff": m.get("max_abs_diff"),
                "samples": m.get("samples"),
                "size": a.get("size"),
                "latency_ms": {str(k): v for k, v in lat.items()},
            }
        )
    gate = _dict(report.get("gate"))
    et = _dict(report.get("edgetpu"))
    pre = _dict(et.get("precheck"))
    ops = et.get("ops") or et.get("table") or pre.get("table") or []
    return {
        "artifacts": rows,
        "gate": gate or {},
        "edgetpu": et or {},
        "precheck": pre or {},
        "ops": [o for o in ops if isinstance(o, dict)],
        "description": report.get("description", ""),
        "lineage": report.get("lineage") if isinstance(report.get("lineage"), dict) else {},
    }


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def twin_summary(model: Mapping[str, Any], report: Mapping[str, Any], has_onnx: bool) -> dict[str, Any]:
    """The cloud twin's status for the model page: the signed manifest's ``model.twin`` first,
    else the report's; a bundle made before twin verification says so. Never an error."""
    for doc in (model.get("twin"), report.get("twin")):
        if doc is None:
            continue
        try:
            t = Twin.from_dict(doc)
        except BadPayload as exc:
            return {"status": "unknown", "reason": f"unreadable twin status ({exc.problem})"}
        return {**t.to_dict(), "figures": dict(t.figures), "limits": dict(t.limits)}
    return {
        "status": "unknown",
        "reason": ("an ONNX twin ships" if has_onnx else "no ONNX twin")
        + ", with no parity verdict: the bundle was made before twin verification",
    }


def signature_summary(model: Mapping[str, Any]) -> dict[str, Any]:
    """The task and every input and output (name, dtype, shape, quantization, role) from the
    signed manifest's ``model.signature``; a bundle made before signatures is a classifier
    (``protocol.signature.task_of``) and says so. Never an error: an unreadable signature is
    reported with the field it names."""
    try:
        sig = of_model(model)
    except BadPayload as exc:
        return {"task": None, "tensors": [], "note": f"unreadable signature ({exc.problem})"}
    if sig is None:
        return {"task": LEGACY_TASK, "tensors": [], "note": "no signature: made before signatures, a classifier"}
    rows = []
    for direction, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for t in specs:
            q = t.quantization
            rows.append(
                {
                    "direction": direction,
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "quantization": "none" if q is None else f"scale {q.scale:.6g}, zero point {q.zero_point}",
                    "role": t.role,
                }
            )
    return {"task": sig.task, "stateful": sig.stateful, "tensors": rows, "note": ""}


METRIC_NAMES = {"map50": "mAP@0.5", "miou": "mIoU", "pck": "PCK@0.2", "accuracy": "accuracy"}


def task_evaluation(report: Mapping[str, Any]) -> dict[str, Any]:
    """The build report's per-task evaluation: an import scored against ground truth
    (``accuracy``: mAP@0.5, mIoU or PCK, ``gate_note`` saying whether it was gated), else a
    build's classification accuracy of its int8 artifact under the accuracy gate. ``metric``
    is None when the report has neither (``note`` says why)."""
    gate = _dict(report.get("gate"))
    passed = gate.get("passed") if isinstance(gate.get("passed"), bool) else None
    note = str(report.get("gate_note") or "")
    acc = report.get("accuracy")
    if isinstance(acc, dict) and isinstance(acc.get("value"), (int, float)):
        metric = str(acc.get("metric", ""))
        return {
            "task": acc.get("task") or report.get("task"),
            "metric": METRIC_NAMES.get(metric, metric),
            "value": float(acc["value"]),
            "images": acc.get("images"),
            "gated": passed is not None,
            "passed": passed,
            "note": note,
        }
    for name, a in _dict(report.get("artifacts")).items():
        m = _dict(_dict(a).get("metrics"))
        if ("int8" in name or "quant" in name) and isinstance(m.get("accuracy"), (int, float)):
            return {
                "task": report.get("task") or LEGACY_TASK,
                "metric": "accuracy",
                "value": float(m["accuracy"]),
                "images": m.get("samples"),
                "gated": passed is not None,
                "passed": passed,
                "note": note or (f"{name} on the validation set" if passed is not None else ""),
            }
    return {
        "task": report.get("task"),
        "metric": None,
        "value": None,
        "images": None,
        "gated": False,
        "passed": None,
        "note": note or "the build report holds no evaluation",
    }


def drift_by_signal(features: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A device's per-feature drift verdicts (``recent.drift``) grouped by the signal they
    measure (``protocol.taskstats.signal``: input features, detections per frame, class pixel
    fractions, pose score...), each group with its worst status, the same grouping as
    :meth:`hub.drift.DriftReport.signals`. Input features first, then the task's signals."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, v in features.items():
        if isinstance(v, Mapping):
            groups.setdefault(signal(key), []).append({"feature": key.partition(".")[2] or key, **v})
    out = []
    for name in sorted(groups, key=lambda n: (n != "input features", n)):
        ranked = [
            f["status"] for f in groups[name] if f.get("status") in STATUSES and f["status"] != "insufficient_data"
        ]
        worst = max(ranked, key=STATUSES.index) if ranked else "insufficient_data"
        out.append({"signal": name, "status": worst, "features": groups[name]})
    return out


def model_list(s: Session, limit: int = 100) -> list[dict[str, Any]]:
    running = running_counts(s)
    out = []
    for b in s.exec(select(Bundle).order_by(col(Bundle.name), col(Bundle.revision).desc()).limit(limit)).all():
        build = s.get(Build, b.digest)
        summ = report_summary(build.report if build else {})
        best = next((r for r in summ["artifacts"] if r["kind"] in ("int8", "Edge TPU")), None)
        out.append(
            {
                **bundle_public(b),
                "running": running.get(b.digest, 0),
                "accuracy": best["accuracy"] if best else None,
                "gate_passed": summ["gate"].get("passed"),
                "edgetpu_compiled": summ["edgetpu"].get("compiled"),
            }
        )
    return out


def bundle_detail(s: Session, digest: str) -> dict[str, Any] | None:
    b = s.get(Bundle, digest)
    if b is None:
        return None
    build = s.get(Build, digest)
    report = build.report if build else {}
    running = s.exec(
        select(Device.id, Device.online).where(Device.active_digest == digest).order_by(col(Device.id)).limit(100)
    ).all()
    n_running = running_counts(s).get(digest, 0)
    by_group = [
        {"group": g or "(none)", "devices": int(n)}
        for g, n in s.exec(
            select(Device.group, func.count()).where(Device.active_digest == digest).group_by(Device.group)
        ).all()
    ]
    rollouts = [
        rollout_brief(s, r)
        for r in s.exec(
            select(Rollout).where(Rollout.bundle == digest).order_by(col(Rollout.serial).desc()).limit(20)
        ).all()
    ]
    has_onnx = any(isinstance(a, dict) and a.get("role") == "onnx" for a in (b.artifacts or []))
    return {
        **bundle_public(b),
        "report": report,
        "summary": report_summary(report),
        "twin": twin_summary(_dict(b.model), _dict(report), has_onnx),
        "signature": signature_summary(_dict(b.model)),
        "evaluation": task_evaluation(_dict(report)),
        "model_card": build.model_card if build else "",
        "running": n_running,
        "running_devices": [{"device_id": d, "online": o} for d, o in running],
        "by_group": by_group,
        "rollouts": rollouts,
    }


# ---- rollouts ---------------------------------------------------------------------------------
def parse_target(kind: str, value: str) -> Target:
    """The create form's target (kind + text) as the API's ``Target``."""
    value = value.strip()
    if kind == "all":
        return Target(all=True)
    if not value:
        raise QueryError(f"target {kind} needs a value")
    if kind == "group":
        return Target(group=value)
    if kind == "tag":
        return Target(tag=value)
    if kind == "devices":
        ids = [x.strip() for x in value.replace("\n", ",").split(",") if x.strip()]
        return Target.parse({"devices": ids})
    raise QueryError(f"target kind must be all, group, tag or devices, got {kind!r}")


def parse_cohorts(text: str) -> list[str]:
    items = [c.strip() for c in text.split(",") if c.strip()]
    if not items:
        raise QueryError("cohorts must list at least one size, e.g. 1, 10%, 100%")
    try:
        cohort_sizes(items, 100)
    except PolicyError as exc:
        raise QueryError(str(exc)) from None
    return items


def rollout_preview(
    s: Session, digest: str, target: Target, cohorts: Sequence[str], sample: int = 12
) -> dict[str, Any]:
    """Which devices a rollout would touch: matched by the target, split by compatibility
    (the same check the rollout applies), and how the cohorts would size."""
    b = s.get(Bundle, digest)
    if b is None:
        raise QueryError(f"bundle {digest[:16]!r} is not in the registry")
    req = Requirements.from_dict(b.requirements)
    q = select(Device)
    if target.group is not None:
        q = q.where(Device.group == target.group)
    elif target.devices:
        q = q.where(col(Device.id).in_(list(target.devices)))
    matched, compatible, already = 0, 0, 0
    examples: list[dict[str, Any]] = []
    incompatible: list[dict[str, Any]] = []
    for d in s.exec(q.order_by(col(Device.id))).all():
        if not target.matches(d):
            continue
        matched += 1
        v = compat_check(req, stored_inventory(d.id, d.inventory), d.agent_version)
        if v.ok:
            compatible += 1
            already += d.active_digest == digest
            if len(examples) < sample:
                examples.append(
                    {
                        "device_id": d.id,
                        "online": d.online,
                        "group": d.group,
                        "active": f"{d.active_name}@{d.active_version}" if d.active_digest else "-",
                    }
                )
        elif len(incompatible) < sample:
            incompatible.append({"device_id": d.id, "reason": v.reason.value, "detail": v.detail})
    missing = [x for x in target.devices if s.get(Device, x) is None][:sample] if target.devices else []
    try:
        sizes = cohort_sizes(list(cohorts), compatible) if compatible else []
    except PolicyError as exc:
        raise QueryError(str(exc)) from None
    return {
        "bundle": f"{b.name}@{b.version}",
        "matched": matched,
        "compatible": compatible,
        "incompatible_count": matched - compatible,
        "already_running": already,
        "cohort_sizes": sizes,
        "cohorts": list(cohorts),
        "examples": examples,
        "incompatible": incompatible,
        "unknown": missing,
    }


def audit_page(s: Session, limit: int = 50, offset: int = 0, action: str = "") -> dict[str, Any]:
    q = select(AuditEntry)
    if action:
        q = q.where(col(AuditEntry.action).like(f"{action}%"))
    total = int(s.exec(select(func.count()).select_from(q.subquery())).one())
    rows = s.exec(q.order_by(col(AuditEntry.id).desc()).offset(offset).limit(limit)).all()
    return {
        "items": [
            {"id": a.id, "ts": a.ts, "actor": a.actor, "action": a.action, "target": a.target, "detail": a.detail}
            for a in rows
        ],
        "total": total,
        "limit": limit,
        "offset": offset,
    }
